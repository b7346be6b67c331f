"""`[transfer] stream_memory` on the real daemon and the local S3: 100 stalled
streams (half never read a byte, half read 8 MiB fast, which grows their
windows, then stop), plus one fast reader. The daemon's RSS stays within its
baseline + what docs/design.md bounds memory by (stream_memory, 512 KiB for
each stream started while it was spent, a 1 MiB receive buffer per
connection in global_concurrency) + 16 MiB for the rest (100 requests'
objects, allocator slack), and the fast reader gets every byte. Without the
budget the burst readers alone would hold 50 x stream_window."""

from __future__ import annotations

import socket
import threading
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

from daemonproc import Daemon, running_daemon
from faultproxy import wait_until
from reliability import blob, metric_value, rss_kib, sha, uri

from s3feed.client import Client

if TYPE_CHECKING:
    from conftest import LocalAws, TestBucket

MiB = 1024 * 1024
BUDGET = 64 * MiB
STALLED = 100
CONNECTIONS = 16  # [transfer] global_concurrency below
BURST = 8 * MiB  # what each burst reader reads before it stops


def metrics(d: Daemon) -> str:
    with urllib.request.urlopen(f"http://{d.instance}/metrics", timeout=10) as r:
        return str(r.read().decode())


def read_all(d: Daemon, job: str, key: str) -> tuple[bytes, float]:
    started = time.monotonic()
    with Client(str(d.socket), timeout=60) as c:
        data = b"".join(c.read_object(job, key))
    return data, time.monotonic() - started


class PeakRss:
    """Samples the daemon's RSS every 20 ms until stopped."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak_kib = pid, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_kib = max(self.peak_kib, rss_kib(self.pid))
            self._stop.wait(0.02)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.peak_kib = max(self.peak_kib, rss_kib(self.pid))


def test_stalled_streams_stay_within_the_budget_and_a_fast_reader_completes(
    local_aws: LocalAws, bucket: TestBucket, tmp_path: Path
) -> None:
    stalled_body, fast_body = blob(24 * MiB, seed=31), blob(48 * MiB, seed=32)
    bucket.put("m/stalled.bin", stalled_body)
    bucket.put("m/fast.bin", fast_body)
    with running_daemon(
        local_aws,
        tmp_path / "s3feed",
        transfer={
            "part_size": "1MiB",
            "stream_window": "16MiB",
            "stream_memory": "64MiB",
            "concurrency": 4,
            "global_concurrency": CONNECTIONS,
        },
        limits={"streams_per_uid": 200, "connections_per_uid": 200},
    ) as d:
        pid = d.process.pid
        Client(str(d.socket), timeout=30).create_job(
            "mem", local_aws.acme_tenant, uri(bucket.name, "m/"), local_aws.acme_role_arn
        )
        alone, alone_s = read_all(d, "mem", "fast.bin")  # also the warm-up
        assert sha(alone) == sha(fast_body)
        baseline = rss_kib(pid)
        stalled: list[socket.socket] = []
        try:
            with PeakRss(pid) as rss:
                for n in range(STALLED):
                    s = socket.socket(socket.AF_UNIX)
                    s.settimeout(60)
                    s.connect(str(d.socket))
                    s.sendall(b"GET /v1/jobs/mem/objects/stalled.bin HTTP/1.1\r\nHost: x\r\n\r\n")
                    stalled.append(s)
                    got_n = 0
                    while n % 2 and got_n < BURST:  # a burst reader, then it stops too
                        got_n += len(s.recv(1 << 20))
                wait_until(
                    lambda: (
                        metric_value(metrics(d), "s3feed_transfers_active", mode="stream")
                        == STALLED
                    ),
                    60,
                    "every stalled stream running",
                )
                # Their windows fill (what is admitted is fetched), then fetching stops.
                wait_until(
                    lambda: metric_value(metrics(d), "s3feed_stream_buffered_bytes") >= 40 * MiB,
                    60,
                    "the stalled streams' windows filled",
                )
                text = metrics(d)
                used = metric_value(text, "s3feed_stream_memory_used_bytes")
                assert metric_value(text, "s3feed_stream_memory_budget_bytes") == BUDGET
                # Over the budget only by the floors (512 KiB) of streams started once it was spent.
                assert used <= BUDGET + STALLED * 512 * 1024
                got, with_s = read_all(d, "mem", "fast.bin")
                assert sha(got) == sha(fast_body)
        finally:
            for s in stalled:
                s.close()
        grown = (rss.peak_kib - baseline) * 1024
        print(
            f"RSS baseline {baseline // 1024} MiB, peak +{grown / MiB:.0f} MiB; "
            f"stream memory used {used / MiB:.0f} MiB; fast reader "
            f"{len(fast_body) / MiB / alone_s:.0f} MiB/s alone, {len(fast_body) / MiB / with_s:.0f} "
            f"MiB/s beside {STALLED} stalled streams"
        )
        bound = BUDGET + STALLED * 512 * 1024 + CONNECTIONS * MiB + 16 * MiB
        assert grown <= bound, f"RSS grew {grown / MiB:.0f} MiB over its baseline"
        wait_until(
            lambda: metric_value(metrics(d), "s3feed_stream_memory_used_bytes") == 0,
            30,
            "every window given back",
        )
