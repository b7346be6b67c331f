"""The dashboards against a real Prometheus scraping a real `s3feed serve`.

`test_every_dashboard_query_has_data` starts the daemon (its own IAM keys,
every endpoint on the local AWS), starts Prometheus scraping it every second,
has the daemon do real work — a cache fetch, a stream from S3, a stream from
the cache, a missing key, a bucket the role may not read, a job STS refuses —
waits for Prometheus to scrape after that, and then asks Prometheus every
panel query and every variable query of every dashboard. Each must return
data: a misspelled metric or label returns none. The daemon's exposition must
also pass `promtool check metrics`.

`test_every_dashboard_query_has_data_from_the_metrics_module` asks the same
of daemon/metrics.py driven through its observers (no panel excused), and
`test_dashboard_evaluation_sees_a_misspelled_metric` checks the machinery
itself on Prometheus scraping its own metrics. Prometheus is stopped, and its
port closed, at the end of each test.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from daemonproc import Daemon, running_daemon
from prometheus_client import CollectorRegistry, start_http_server
from promserver import (
    SELF,
    Prometheus,
    Query,
    dashboard_queries,
    evaluate,
    free_port,
    http_get,
    running_prometheus,
)

from s3feed.client import Client, S3feedError
from s3feed.daemon.metrics import Metrics

if TYPE_CHECKING:
    from conftest import LocalAws, TestBucket

REPO = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((REPO / "grafana" / "dashboards").glob("*.json"))
S3FEED = str(Path(sys.executable).parent / "s3feed")
JOB = "s3feed"

# Panels that a short healthy run cannot give data: a refresh happens minutes
# into a session at the earliest, so no refresh can fail here. For these the
# metric must still be exported (Prometheus has its # TYPE line), which a
# misspelling would not be.
EMPTY_IN_A_SHORT_RUN = {
    "Refresh failures by code": "s3feed_credential_refresh_failures_total",
    # The run registers no job with a Destination (the acme role may not
    # write); the metrics-module test below moves it, and tests/integration/
    # test_outputs.py checks the upload metrics against real uploads.
    "Upload throughput by host": "s3feed_sent_bytes_total",
}


@pytest.fixture
def daemon(local_aws: LocalAws, tmp_path: Path) -> Iterator[Daemon]:
    with running_daemon(local_aws, tmp_path / "s3feed") as d:
        yield d


def do_real_work(client: Client, local_aws: LocalAws, bucket: TestBucket) -> None:
    """Moves every kind of series the dashboards show."""
    bucket.put("media/fetched.bin", os.urandom(3 * 1024 * 1024 + 17))
    bucket.put("media/streamed.bin", os.urandom(5 * 1024 * 1024 + 5))
    region = local_aws.region
    uri = f"https://{bucket.name}.s3.{region}.amazonaws.com/media/"
    client.create_job("prom-job", local_aws.acme_tenant, uri, local_aws.acme_role_arn, 3600)

    fetched = client.fetch("prom-job", "fetched.bin", wait=True)
    assert fetched["State"] == "done", fetched
    streamed = b"".join(client.read_object("prom-job", "streamed.bin"))
    assert len(streamed) == 5 * 1024 * 1024 + 5
    # From the cache this time: a hit.
    assert len(b"".join(client.read_object("prom-job", "fetched.bin"))) == 3 * 1024 * 1024 + 17

    with pytest.raises(S3feedError) as missing:
        client.fetch("prom-job", "not-there.bin", wait=True)
    assert missing.value.code == "NoSuchKey"

    # The acme role may not read globex's bucket: S3 says AccessDenied.
    other = f"https://{local_aws.globex_bucket}.s3.{region}.amazonaws.com/media/"
    client.create_job("prom-other", local_aws.acme_tenant, other, local_aws.acme_role_arn)
    with pytest.raises(S3feedError) as denied_s3:
        client.fetch("prom-other", "readme.txt", wait=True)
    assert denied_s3.value.code == "AccessDenied"

    # The tenant name is the ExternalId the acme role checks: STS refuses.
    with pytest.raises(S3feedError) as denied_sts:
        client.create_job("prom-denied", "globex", uri, local_aws.acme_role_arn)
    assert denied_sts.value.code == "AssumeRoleDenied"


def check_dashboards(prom: Prometheus, values: dict[str, str], window: int) -> list[str]:
    """Every query of every dashboard; returns what had no data."""
    missing = []
    for path in DASHBOARDS:
        for query in dashboard_queries(json.loads(path.read_text()), path.name):
            result = evaluate(prom, query, values, window)
            if not result:
                missing.append(f"{query.where}: {query.expr}")
    return missing


def test_every_dashboard_query_has_data(
    daemon: Daemon, local_aws: LocalAws, bucket: TestBucket, tmp_path: Path
) -> None:
    targets = {JOB: [daemon.instance]}
    with running_prometheus(tmp_path / "prometheus", targets) as prom:
        started = time.time()
        prom.wait_for_scrapes(JOB, after=0, count=1)
        client = Client(socket=str(daemon.socket), timeout=120)
        do_real_work(client, local_aws, bucket)
        prom.wait_for_scrapes(JOB, after=time.time(), count=2)

        up = prom.query(f'up{{job="{JOB}"}}')
        assert [r["value"][1] for r in up] == ["1"], up

        # Rates over everything since Prometheus started, as if the dashboard
        # showed exactly this run.
        window = math.ceil(time.time() - started) + 5
        values = {"job": JOB, "instance": daemon.instance, "datasource": "prometheus"}
        missing = check_dashboards(prom, values, window)
        really_missing = [
            m for m in missing if not any(f": {t} " in m for t in EMPTY_IN_A_SHORT_RUN)
        ]
        assert not really_missing, "queries without data:\n" + "\n".join(really_missing)
        # Prometheus keeps no metadata for a family without samples; the
        # daemon's exposition must still declare it.
        exposition = http_get(f"http://{daemon.instance}/metrics").decode()
        for metric in EMPTY_IN_A_SHORT_RUN.values():
            assert f"# TYPE {metric} counter" in exposition, f"{metric} is not exported"

        client.delete_job("prom-job")
        client.delete_job("prom-other")


def test_daemon_exposition_passes_promtool(daemon: Daemon) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: run `scripts/debian-packages prometheus`"
    text = http_get(f"http://{daemon.instance}/metrics")
    out = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, timeout=60, check=False
    )
    assert out.returncode == 0 and not out.stdout.strip() and not out.stderr.strip(), (
        out.stdout.decode() + out.stderr.decode()
    )


def test_dashboard_evaluation_sees_a_misspelled_metric(tmp_path: Path) -> None:
    """The machinery above, on Prometheus scraping itself: a good query has
    data, the same query with one letter wrong has none, variables resolve,
    and Prometheus is gone afterwards."""
    with running_prometheus(tmp_path / "prometheus", {"prom": [SELF]}) as prom:
        instance = f"127.0.0.1:{prom.port}"
        prom.wait_for_scrapes("prom", after=0, count=2)
        values = {"job": "prom", "instance": instance}
        board = {
            "panels": [
                {"type": "row", "title": "r", "panels": []},
                {
                    "type": "timeseries",
                    "title": "good",
                    "targets": [
                        {
                            "refId": "A",
                            "expr": 'sum by (instance) (rate(prometheus_http_requests_total{job=~"$job", instance=~"$instance"}[$__rate_interval]))',
                        }
                    ],
                },
                {
                    "type": "timeseries",
                    "title": "misspelled",
                    "targets": [
                        {
                            "refId": "A",
                            "expr": 'sum by (instance) (rate(prometheus_http_request_total{job=~"$job", instance=~"$instance"}[$__rate_interval]))',
                        }
                    ],
                },
            ],
            "templating": {
                "list": [
                    {"name": "datasource", "type": "datasource", "query": "prometheus"},
                    {
                        "name": "job",
                        "type": "query",
                        "query": {"query": "label_values(prometheus_build_info, job)"},
                    },
                    {
                        "name": "instance",
                        "type": "query",
                        "query": 'label_values(prometheus_build_info{job=~"$job"}, instance)',
                    },
                ]
            },
        }
        queries = {q.where: q for q in dashboard_queries(board, "b")}
        assert set(queries) == {
            "b: good A",
            "b: misspelled A",
            "b: variable job",
            "b: variable instance",
        }
        assert evaluate(prom, queries["b: good A"], values, 30)
        assert not evaluate(prom, queries["b: misspelled A"], values, 30)
        jobs = evaluate(prom, queries["b: variable job"], values, 30)
        assert [r["metric"]["job"] for r in jobs] == ["prom"]
        instances = evaluate(prom, queries["b: variable instance"], values, 30)
        assert [r["metric"]["instance"] for r in instances] == [instance]
        with pytest.raises(KeyError):
            evaluate(prom, Query("b: x", 'up{job=~"$nope"}'), values, 30)
        process = prom.process
    assert process.poll() is not None


def test_every_dashboard_query_has_data_from_the_metrics_module(tmp_path: Path) -> None:
    """The same check as above with daemon/metrics.py driven through its
    observer protocols and served by prometheus_client: no panel is excused,
    since every observer is called, refresh failures included."""
    registry = CollectorRegistry()
    metrics = Metrics(registry, "0.0.0-test")
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    instance = f"127.0.0.1:{port}"
    try:
        with running_prometheus(tmp_path / "prometheus", {JOB: [instance]}) as prom:
            started = time.time()
            prom.wait_for_scrapes(JOB, after=0, count=1)
            exercise(metrics)
            prom.wait_for_scrapes(JOB, after=time.time(), count=2)
            window = math.ceil(time.time() - started) + 5
            missing = check_dashboards(prom, {"job": JOB, "instance": instance}, window)
            assert not missing, "queries without data:\n" + "\n".join(missing)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def exercise(m: Metrics) -> None:
    """One of everything the daemon reports, as its packages would report it."""
    m.jobs_active.set(1)
    m.assume_role()
    m.expiry_changed("job-1", datetime.now(UTC) + timedelta(hours=1))
    m.assume_role()
    m.assume_role_failed("AccessDenied")
    m.assume_role()
    m.refreshed(datetime.now(UTC))
    m.refresh_failed("Throttling")
    m.cache_size(3 << 20, 1 << 30)
    m.cache_miss()
    m.cache_hit()
    m.cache_eviction()
    for mode in ("cache", "stream"):
        m.transfer_started(mode)
    m.transfer_started("stream")
    m.s3_request("HeadObject", 0.004)
    m.s3_request("ListObjectsV2", 0.008)
    m.s3_request("GetObject", 0.02)
    m.s3_request("HeadObject", 0.003)
    m.s3_request_error("HeadObject", "NoSuchKey")
    m.range_retry("reset")
    m.stream_buffered(1 << 20)
    m.bytes_received("acme-films", 3 << 20)
    m.bytes_served("cache", 3 << 20)
    m.bytes_served("stream", 1 << 20)
    m.transfer_finished("cache", "success", 0.4)
    m.transfer_finished("stream", "failed", 0.7)
    m.upload_started()
    m.bytes_sent("acme-films", 5 << 20)
    m.upload_part(0.05)
    m.upload_finished("success", 0.3)
    m.api_request("/v1/jobs/{JobId}/objects/{Key}", 200)
    m.api_request("/v1/jobs/{JobId}/fetches", 507)
    m.connection_refused(429)
    m.loop_lag(0.0004)
    m.loop_lag(1.3)
