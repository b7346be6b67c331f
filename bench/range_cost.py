"""What one ranged GET costs the S3 server: its CPU for the same bytes read as
one whole-object GET or as ranges of several sizes (docs/design.md,
Performance notes: Range size).

    .venv/bin/python -m bench.range_cost [--size 1GiB] [--rounds 2]

Starts its own SeaweedFS (bench/store.py, under bench/.work/range-cost),
uploads a pseudo-random object in 16 MiB parts, then reads it with a plain
blocking reader (http.client, one reused 1 MiB buffer, SigV4 with the
reader role's session keys) in each pattern and prints the server's CPU-s
(its process group, /proc) and the wall time per pattern and round. The
per-GET cost is the slope between two range sizes. With `--connections 3`
the ranges are also read on 3 connections at once, one thread each, in
turn (a stream's pattern: 3 ranges of 16 MiB in its 48 MiB window). Not a
test: a measurement, for the server side only, on an otherwise idle host;
the client's CPU is not counted.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import http.client
import time
import urllib.parse
from pathlib import Path

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from .measure import group_cpu
from .store import Store, own_seaweed, reference, upload

MiB = 1 << 20
HERE = Path(__file__).resolve().parent


def read(store: Store, creds: Credentials, url: str, ranges: list[tuple[int, int | None]]) -> int:
    """GET each range on one keep-alive connection (end None: the whole
    object, no Range header); the bytes received."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port)
    view = memoryview(bytearray(MiB))
    total = 0
    try:
        for start, end in ranges:
            headers = {} if end is None else {"Range": f"bytes={start}-{end}"}
            req = AWSRequest("GET", url, headers=headers)
            SigV4Auth(creds, "s3", store.region).add_auth(req)
            conn.request("GET", parts.path, headers=dict(req.headers.items()))
            resp = conn.getresponse()
            if resp.status not in (200, 206):
                raise RuntimeError(f"GET {start}-{end}: {resp.status} {resp.read()[:200]!r}")
            while n := resp.readinto(view):
                total += n
    finally:
        conn.close()
    return total


def pattern(
    store: Store, creds: Credentials, url: str, size: int, range_size: int, connections: int
) -> tuple[float, float]:
    """Server CPU-s and wall s to read the object in `range_size` GETs on
    `connections` connections at once, dealt to them in turn."""
    ranges: list[tuple[int, int | None]] = (
        [(0, None)]
        if range_size >= size
        else [(s, min(s + range_size, size) - 1) for s in range(0, size, range_size)]
    )
    assert store.server_pgid is not None
    cpu, wall = group_cpu(store.server_pgid), time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(connections) as pool:
        got = sum(
            pool.map(lambda i: read(store, creds, url, ranges[i::connections]), range(connections))
        )
    wall, cpu = time.monotonic() - wall, group_cpu(store.server_pgid) - cpu
    if got != size:
        raise RuntimeError(f"read {got} bytes of {size}")
    return cpu, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=lambda v: int(v.removesuffix("GiB")) << 30, default=1 << 30)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--connections", type=int, nargs="+", default=[1])
    args = parser.parse_args()
    work = HERE / ".work" / "range-cost"
    with own_seaweed(work) as store:
        ref = reference(HERE / ".work", "range-cost", args.size, 7)
        upload(store, "range-cost.bin", ref, 16 * MiB)
        session = store.reader_session()
        creds = Credentials(
            session["AccessKeyId"], session["SecretAccessKey"], session["SessionToken"]
        )
        url = f"{store.endpoint_url}/{store.bucket}/range-cost.bin"
        rows = [("one GET of the whole object", args.size, 1)] + [
            (f"GETs of {n} MiB on {c} connection{'s' if c > 1 else ''}", n * MiB, c)
            for c in args.connections
            for n in (4, 16, 64)
        ]
        print(f"{args.size} bytes, 16 MiB parts; server CPU-s and wall s")
        for rnd in range(1, args.rounds + 1):
            for name, range_size, conns in rows:
                cpu, wall = pattern(store, creds, url, args.size, range_size, conns)
                gets = -(-args.size // range_size)
                print(
                    f"round {rnd}: {name:40s} {gets:5d} GETs  server {cpu:5.2f}  wall {wall:5.2f}"
                )
        store.delete("range-cost.bin")
        store.reclaim()  # SeaweedFS keeps a deleted object's bytes until vacuumed


if __name__ == "__main__":
    main()
