"""Load, churn and leaks: the daemon's fds, threads and RSS come back after the load.

Short version always (make test): 50 concurrent streams over 10 jobs, 200 jobs
created, used and deleted. With S3FEED_SOAK=1: the streams for several rounds
and 1000 jobs. Baselines are taken after a warm-up round of the same load, so
pools (the data plane's keep-alive connections, at most [transfer]
global_concurrency idle ones) are at their steady size; a leak of one fd or
one task per job or stream would show as hundreds. The daemon reads S3
directly (no proxy in the data path, so the proxy's CPU does not set the
pace); STS goes through the recording proxy, so the secrets grep covers
every session issued.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest
from faultproxy import wait_until
from reliability import (
    TALLY,
    MiB,
    Rig,
    blob,
    check_bytes,
    check_file,
    fds,
    metric_value,
    proxied_daemon,
    remember,
    results_table,  # noqa: F401 (session fixture: writes the results table)
    rss_kib,
    threads,
    uri,
)

import localaws
from s3feed.client import AsyncClient, Client

if TYPE_CHECKING:
    from conftest import LocalAws

SOAK = os.environ.get("S3FEED_SOAK") == "1"
JOBS = 10
STREAMS_PER_JOB = 5
STREAM_SIZE = 1 * MiB + 4321
CHURN_JOBS = 1000 if SOAK else 200
STREAM_ROUNDS = 10 if SOAK else 1


@pytest.fixture(scope="module")
def load_bucket(local_aws: LocalAws) -> Iterator[tuple[str, dict[str, bytes]]]:
    objects = {
        f"j{j}/s{s}.bin": remember(blob(STREAM_SIZE + s, seed=1000 + 10 * j + s))
        for j in range(JOBS)
        for s in range(STREAMS_PER_JOB)
    }
    objects["small/clip.ts"] = remember(blob(64 * 1024, seed=7))
    name = localaws.TEST_BUCKET_PREFIX + secrets.token_hex(6)
    with local_aws.closing_client("s3") as s3:
        s3.create_bucket(Bucket=name)
        try:
            for key, body in objects.items():
                s3.put_object(Bucket=name, Key=key, Body=body)
            yield name, objects
        finally:
            localaws.empty_and_delete_bucket(s3, name)


@pytest.fixture(scope="module")
def rig(local_aws: LocalAws, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    with proxied_daemon(
        local_aws,
        tmp_path_factory.mktemp("load"),
        s3={"endpoint_url": local_aws.endpoint_url},
        transfer={"concurrency": 4, "global_concurrency": 32, "stream_window": "4MiB"},
        # The churn registers jobs as fast as it can: far above the default rate.
        limits={"job_creates_per_minute_per_uid": 100_000},
    ) as r:
        yield r


def usage(pid: int) -> tuple[int, int, int]:
    return fds(pid), threads(pid), rss_kib(pid)


def settled(pid: int, baseline: tuple[int, int, int], slack_fds: int = 8) -> tuple[int, int, int]:
    """Wait (bounded) until fds and threads are back near the baseline. The
    S3 connection pool (one for every job) closes idle connections 15 s after
    their last use: a burst's connections are gone within that, plus margin."""
    return wait_until(
        lambda: (u := usage(pid))[0] <= baseline[0] + slack_fds and u[1] <= baseline[1] + 2 and u,
        40,
        f"fds/threads back to {baseline[:2]} (now {usage(pid)[:2]})",
        interval=0.1,
    )


async def _stream_round(
    sock: str, local_aws: LocalAws, bucket: str, objects: dict[str, bytes]
) -> None:
    async with AsyncClient(sock) as c:
        ids = [f"load-{secrets.token_hex(3)}-{j}" for j in range(JOBS)]
        await asyncio.gather(
            *(
                c.create_job(
                    i, local_aws.acme_tenant, uri(bucket, f"j{j}/"), local_aws.acme_role_arn
                )
                for j, i in enumerate(ids)
            )
        )

        async def one(job: str, j: int, s: int) -> None:
            got = b"".join([chunk async for chunk in c.read_object(job, f"s{s}.bin")])
            assert check_bytes(objects[f"j{j}/s{s}.bin"], got)

        async with asyncio.timeout(120):
            await asyncio.gather(
                *(one(i, j, s) for j, i in enumerate(ids) for s in range(STREAMS_PER_JOB))
            )
        await asyncio.gather(*(c.delete_job(i) for i in ids))


async def _churn(
    sock: str,
    local_aws: LocalAws,
    bucket: str,
    objects: dict[str, bytes],
    count: int,
    workers: int = 8,
) -> None:
    ids = iter(range(count))
    small = objects["small/clip.ts"]

    async def worker(c: AsyncClient) -> None:
        for n in ids:
            job = f"churn-{n}"
            await c.create_job(
                job, local_aws.acme_tenant, uri(bucket, "small/"), local_aws.acme_role_arn
            )
            assert [o["Key"] for o in await c.list_objects(job)] == ["clip.ts"]
            got = b"".join([chunk async for chunk in c.read_object(job, "clip.ts")])
            assert check_bytes(small, got)
            if n % 10 == 0:
                check_file(small, (await c.fetch(job, "clip.ts"))["Path"])
            await c.delete_job(job)

    async with AsyncClient(sock) as c, asyncio.timeout(600):
        await asyncio.gather(*(worker(c) for _ in range(workers)))


def test_concurrent_streams_and_job_churn_leave_no_leaks(
    rig: Rig, local_aws: LocalAws, load_bucket: tuple[str, dict[str, bytes]]
) -> None:
    bucket, objects = load_bucket
    pid = rig.pid
    asyncio.run(_stream_round(rig.socket, local_aws, bucket, objects))  # warm-up
    asyncio.run(_churn(rig.socket, local_aws, bucket, objects, 20))
    baseline = settled(pid, usage(pid), slack_fds=0)

    t0 = time.monotonic()
    for _ in range(STREAM_ROUNDS):
        asyncio.run(_stream_round(rig.socket, local_aws, bucket, objects))
    streams_s = time.monotonic() - t0
    after_streams = settled(pid, baseline)

    t0 = time.monotonic()
    asyncio.run(_churn(rig.socket, local_aws, bucket, objects, CHURN_JOBS))
    churn_s = time.monotonic() - t0
    after = settled(pid, baseline)

    assert Client(rig.socket).list_jobs() == []
    assert after[2] <= baseline[2] + 40 * 1024, f"RSS grew from {baseline[2]} to {after[2]} KiB"
    # s3feed_jobs_active is refreshed with the status line (every 5 s), not on DELETE.
    metrics = wait_until(
        lambda: (m := rig.metrics()) and metric_value(m, "s3feed_jobs_active") == 0 and m,
        10,
        "s3feed_jobs_active back to 0",
        interval=0.5,
    )
    assert metric_value(metrics, "s3feed_transfers_active") == 0
    assert metric_value(metrics, "s3feed_stream_buffered_bytes") == 0
    TALLY.notes.append(
        f"load: {STREAM_ROUNDS} x {JOBS * STREAMS_PER_JOB} concurrent streams over {JOBS} jobs "
        f"in {streams_s:.1f} s; {CHURN_JOBS} jobs created/used/deleted in {churn_s:.1f} s "
        f"({CHURN_JOBS / churn_s:.0f} jobs/s); fds/threads/RSS KiB baseline {baseline}, "
        f"after streams {after_streams}, after churn {after}"
    )


def test_client_gone_mid_stream_cancels_the_transfer(
    rig: Rig, local_aws: LocalAws, load_bucket: tuple[str, dict[str, bytes]]
) -> None:
    """A reader that hangs up after the first bytes: the stream is recorded as
    cancelled, its fetches stop, and no fd stays behind."""
    bucket, _ = load_bucket
    client = Client(rig.socket, timeout=30)
    client.create_job("gone", local_aws.acme_tenant, uri(bucket, "j0/"), local_aws.acme_role_arn)
    before = usage(rig.pid)
    for _ in range(5):
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(10)
            s.connect(rig.socket)
            s.sendall(b"GET /v1/jobs/gone/objects/s0.bin HTTP/1.1\r\nHost: localhost\r\n\r\n")
            head = s.recv(65536)
            assert head.startswith(b"HTTP/1.1 200"), head[:100]
    doc = wait_until(
        lambda: (
            (d := client.get_job("gone"))
            and sum(t["State"] == "cancelled" for t in d["Transfers"]) == 5
            and d
        ),
        15,
        "five cancelled streams",
    )
    assert all(t["Mode"] == "stream" for t in doc["Transfers"])
    settled(rig.pid, before, slack_fds=2)
    assert (
        metric_value(rig.metrics(), "s3feed_transfers_total", mode="stream", outcome="cancelled")
        >= 5
    )
    assert metric_value(rig.metrics(), "s3feed_stream_buffered_bytes") == 0
    client.delete_job("gone")


@pytest.mark.soak
@pytest.mark.skipif(not SOAK, reason="long soak: set S3FEED_SOAK=1")
def test_soak_marker_runs_only_with_the_flag(rig: Rig) -> None:
    """The soak sizes above apply when S3FEED_SOAK=1; this marks the run as a soak."""
    TALLY.notes.append("soak run (S3FEED_SOAK=1)")
    assert rig.alive()
