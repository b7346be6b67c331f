"""S3 bursts and failing first requests, through the fault proxy (faultproxy.py).

docs/design.md, Transfers: Retries: every range has its own retry budget and
the ranges of a transfer wait out one shared backoff, so a burst of 12
SlowDown answers across them delays the transfer and does not fail it; here
on SeaweedFS, the fast store, where the delay is not lost in the store's own
pace. docs/design.md, Socket API: streams: a stream whose first GET fails for
good answers that error's status and document before any byte, on the
socket and on the URL listener, so `curl --fail` catches it.

Every fault here fires a bounded number of times or is cleared at the end;
all traffic stays on loopback.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from faultproxy import Fault, key_get
from reliability import (
    TALLY,
    MiB,
    Rig,
    blob,
    check_bytes,
    check_file,
    metric_value,
    no_partial_served,
    proxied_daemon,
    remember,
    results_table,  # noqa: F401 (session fixture: writes the results table)
    uri,
)

import localaws
from s3feed.client import Client

if TYPE_CHECKING:
    from conftest import LocalAws, Seaweed

SIZE = 24 * MiB + 7  # 25 ranges of 1 MiB: eight in flight at a time


@pytest.fixture(scope="module")
def seaweed_rig(seaweed: Seaweed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    # SeaweedFS has the daemon's identity and a role it may assume, like
    # ministack: the proxied daemon runs on it unchanged.
    with proxied_daemon(seaweed, tmp_path_factory.mktemp("bursts")) as rig:  # type: ignore[arg-type]
        yield rig


def timed(rig: Rig, job: str, key: str, mode: str) -> tuple[bytes, float]:
    client = Client(rig.socket, timeout=120)
    started = time.monotonic()
    if mode == "cache":
        path = client.fetch(job, key)["Path"]
        elapsed = time.monotonic() - started
        return Path(path).read_bytes(), elapsed
    got = b"".join(client.read_object(job, key))
    return got, time.monotonic() - started


@pytest.mark.parametrize("mode", ["cache", "stream"])
def test_twelve_slowdowns_across_a_transfers_ranges_delay_it(
    seaweed_rig: Rig, seaweed: Seaweed, mode: str
) -> None:
    """The next 12 GETs of the object answer 503 SlowDown: in cache mode the
    first eight ranges in flight and four of their retries; in a stream, once
    its first range flows, the ranges its window holds. The transfer ends
    whole; it took longer than the same transfer without the burst."""
    rig = seaweed_rig
    folder = f"burst-{secrets.token_hex(4)}/"
    calm, burst = remember(blob(SIZE, seed=81)), remember(blob(SIZE, seed=82))
    with seaweed.closing_client("s3") as s3:
        s3.put_object(Bucket=seaweed.bucket, Key=folder + "calm.bin", Body=calm)
        s3.put_object(Bucket=seaweed.bucket, Key=folder + "burst.bin", Body=burst)
    client = Client(rig.socket, timeout=120)
    job = "burst-" + secrets.token_hex(4)
    client.create_job(job, "seaweed-tenant", uri(seaweed.bucket, folder), seaweed.role_arn)
    slowdowns = Fault(
        "slowdown", key_get(folder + "burst.bin"), after=0 if mode == "cache" else 1, times=12
    )
    try:
        got, calm_s = timed(rig, job, "calm.bin", mode)
        assert check_bytes(calm, got)
        throttled = metric_value(rig.metrics(), "s3feed_range_retries_total", reason="throttled")
        rig.s3.add(slowdowns)
        got, burst_s = timed(rig, job, "burst.bin", mode)
        assert check_bytes(burst, got)
        assert slowdowns.fired == 12
        after = metric_value(rig.metrics(), "s3feed_range_retries_total", reason="throttled")
        assert after - throttled == 12, "every SlowDown was retried, none failed the transfer"
        doc = client.get_job(job)
        assert [t["State"] for t in doc["Transfers"]] == ["done", "done"], doc["Transfers"]
        no_partial_served(rig.work / "cache")
        TALLY.notes.append(
            f"12 SlowDowns in a row across the ranges of a {SIZE / MiB:.0f} MiB {mode} "
            f"on SeaweedFS: done in {burst_s:.2f} s against {calm_s:.2f} s without them"
        )
    finally:
        rig.s3.clear()
        client.delete_job(job)


def curl(url: str, *options: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["curl", "--no-progress-meter", "--max-time", "60", *options, url],
        capture_output=True,
        timeout=90,
        check=False,
    )


def test_a_stream_whose_first_get_fails_answers_503_before_any_body(
    local_aws: LocalAws, tmp_path: Path
) -> None:
    """Every GET of the object answers 500 (its HEAD passes): with `retries`
    1 the first range fails for good after two, and the stream answers 503
    S3Unavailable with the error document and no byte of the object, on the
    socket and on the URL listener; `curl --fail` exits 22."""
    data = remember(blob(3 * MiB, seed=83))
    folder = f"first-{secrets.token_hex(4)}/"
    with local_aws.closing_client("s3") as s3:
        bucket = localaws.TEST_BUCKET_PREFIX + secrets.token_hex(6)  # the acme role reads it
        s3.create_bucket(Bucket=bucket)
        try:
            s3.put_object(Bucket=bucket, Key=folder + "x.ts", Body=data)
            with proxied_daemon(
                local_aws, tmp_path, transfer={"retries": 1}, api={"http_listen": "127.0.0.1:0"}
            ) as rig:
                rig.s3.add(Fault("status500", key_get(folder + "x.ts"), times=None))
                client = Client(rig.socket, timeout=60)
                job = "first-" + secrets.token_hex(4)
                client.create_job(
                    job, local_aws.acme_tenant, uri(bucket, folder), local_aws.acme_role_arn
                )
                path = f"/v1/jobs/{job}/objects/x.ts"
                listen = client.health()["HttpListen"]
                for url, options in (
                    (f"http://localhost{path}", ("--unix-socket", rig.socket)),
                    (f"http://{listen}{path}", ()),
                ):
                    failed = curl(url, "--fail", *options)
                    assert failed.returncode == 22, failed
                    assert failed.stdout == b"", "no byte before the status"
                    assert b"503" in failed.stderr
                    answer = curl(url, "--write-out", "\n%{http_code}", *options)
                    body, _, status = answer.stdout.rpartition(b"\n")
                    assert status == b"503", answer
                    error = json.loads(body)["Error"]
                    assert error["Code"] == "S3Unavailable", error
                    assert "retries exhausted; last cause: server_error" in error["Message"]
                    TALLY.transfers_failed_cleanly += 2
                streams = [t for t in client.get_job(job)["Transfers"] if t["Mode"] == "stream"]
                assert [t["Error"]["Code"] for t in streams] == ["S3Unavailable"] * 4
                rig.s3.clear()
                check_file(data, client.fetch(job, "x.ts")["Path"])  # S3 back: whole again
                client.delete_job(job)
        finally:
            localaws.empty_and_delete_bucket(s3, bucket)
