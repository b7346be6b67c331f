"""s3feed against the S3 downloaders a user would otherwise pick, side by side.

    bench/run [--size 2GiB] [--runs 3] [--only NAME ...] [--link remote]

(`bench/run` is `.venv/bin/python -m bench.run` from the repository root.)
Installs the peers into bench/.venv, starts SeaweedFS on 127.0.0.1 (its own
state directory; stopped at the end), uploads the test objects (multipart),
then:

1. main: every contender once as a checked warm-up, then `--runs` rounds,
   each running every contender once, alternating the order (A B C, C B A)
   so drift and other people's load fall on all of them; every run is
   checked byte-exact (peers.py says how);
2. time to first byte of the stream contenders (spawn to first byte read);
3. slow reader: the object streamed to curl --limit-rate (50 MB/s), the
   daemon's RSS and window against [transfer] stream_window;
4. concurrency: 8 jobs (`--conc-jobs 1 8 32`: each count in turn) of 4
   tenants fetching as many different 512 MiB objects at once on one daemon,
   against the same fetches one after another;
5. the idle daemon's RSS and CPU;
6. uploads: the reference written back to S3 from the file and from a pipe
   (`s3feed put`, rclone copyto / rcat, s5cmd cp / pipe), by the rules of
   the main rows (warm-up, alternating rounds, a fresh daemon per s3feed
   run, the same kind of credentials: a writer-role session); each upload is
   read back into the consumer after the timed part and deleted before the
   next run. With --https, again over HTTPS.

The remote profile (`--link remote [--link-rate 90000000] [--link-delay
0.02]`): every contender, the daemon's [s3]/[sts] endpoint, the peers and
the presigned URLs alike, reaches SeaweedFS through one relay process
(localaws/relay.py: each connection paced to the rate, a delay per new
connection and per request), whose CPU is reported apart; a suite `link`
first measures what that relay carries (presigned GETs at once). Its
report goes to bench/RESULTS-remote.md unless --results says otherwise.

Only the upload rows, quickly:
    bench/run --size 256MiB --runs 1 --skip main ttfb slow crowd concurrency idle

Writes bench/RESULTS.md (report.py) and the raw figures beside it
(RESULTS.json); scratch files live in bench/.work/ (`--work`). Every process it starts is bounded by a timeout and
stopped on the way out, Ctrl-C included.

Design note (what runs where): everything is sequential in this process
except the 8 fetch requests of the concurrency benchmark (threads waiting on
the daemon) and the RSS sampler of the slow-reader run (a thread reading
/proc). Measured work happens in child processes (measure.py).
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import dataclasses
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from localaws import relay
from s3feed.client import Client
from s3feed.transfer.config import TransferConfig

from . import peers, report, s3feedd, urls
from .measure import (
    Sample,
    kernel_stalls,
    loadavg,
    pids_cpu,
    proc_cpu,
    proc_status_kib,
    run_pipeline,
    wait_quiet,
)
from .peers import Contender, Ctx
from .store import CHECKSUMS, DEFAULT_CHECKSUM, Store, head, own_seaweed, reference, upload

MiB = 1 << 20
GiB = 1 << 30
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
RESULTS_REMOTE = Path(__file__).resolve().parent / "RESULTS-remote.md"
WORK = Path(__file__).resolve().parent / ".work"
TENANT = "bench-tenant"


def parse_size(text: str) -> int:
    units = {"KiB": 1 << 10, "MiB": MiB, "GiB": GiB, "KB": 1000, "MB": 10**6, "GB": 10**9}
    for unit, mult in units.items():
        if text.endswith(unit):
            return int(float(text[: -len(unit)]) * mult)
    return int(text)


def log(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def run_threads(go: Callable[[int], None], n: int) -> None:
    """`go(0)` .. `go(n - 1)` at once, each in a thread of its own; returns when all have."""
    threads = [threading.Thread(target=go, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def run_timeout(size: int) -> float:
    return 120 + size / 10e6  # even 10 MB/s finishes; a hang does not hold the machine


# ------------------------------------------------------------------ one run


def measure(
    contender: Contender, ctx: Ctx, store: Store, daemon_pid: int | None, exact: bool
) -> dict[str, Any]:
    plan = contender.plan(ctx, exact)
    shutil.rmtree(ctx.out, ignore_errors=True)
    ctx.out.mkdir(parents=True)
    os.sync()  # earlier runs' dirty pages are not this run's cost
    capture = plan.path_from_stdout is not None or plan.size_line
    base_rss = proc_status_kib(daemon_pid, "VmRSS") / 1024 if daemon_pid else None
    relay0 = pids_cpu(ctx.relay_pids)
    before, stalls0 = Sample.take(daemon_pid, store.server_pgid), kernel_stalls()
    res = run_pipeline(plan.cmds, env=plan.env, capture_last=capture, timeout=run_timeout(ctx.size))
    after, stalls = Sample.take(daemon_pid, store.server_pgid), kernel_stalls()
    relay_cpu = pids_cpu(ctx.relay_pids) - relay0
    producers = res.procs[plan.feeders : len(res.procs) - plan.readers]
    others = res.procs[: plan.feeders] + res.procs[len(res.procs) - plan.readers :]
    row: dict[str, Any] = {
        "name": contender.name,
        "mode": contender.mode,
        "exact": not plan.size_line,
        "wall_s": res.wall_s,
        "client_cpu_s": sum(p.cpu_s for p in producers),
        "client_sys_s": sum(p.sys_s for p in producers),
        "kernel_stalls": {k: stalls[k] - stalls0[k] for k in stalls},
        "client_rss_mib": max(p.maxrss_kib for p in producers) / 1024,
        # The consumer a stream is piped into, or the producer feeding a pipe upload.
        "reader_cpu_s": sum(p.cpu_s for p in others),
        "daemon_cpu_s": after.daemon_cpu - before.daemon_cpu if daemon_pid else 0.0,
        "daemon_sys_s": after.daemon_sys - before.daemon_sys,
        "daemon_hwm_mib": proc_status_kib(daemon_pid, "VmHWM") / 1024 if daemon_pid else None,
        "daemon_base_mib": base_rss,
        "server_cpu_s": after.server_cpu - before.server_cpu,
        "server_user_s": after.server_user - before.server_user,
        "relay_cpu_s": relay_cpu,
        "machine_busy_s": after.busy - before.busy,
        "error": None,
    }
    try:
        if not res.ok:
            codes = [(p.argv0, p.returncode) for p in res.procs]
            errs = b" | ".join(e.strip()[-500:] for e in res.stderr).decode(errors="replace")
            raise RuntimeError(
                f"exit codes {codes}{' (timed out)' if res.timed_out else ''}: {errs}"
            )
        if plan.size_line:
            got = res.stdout.decode().split()
            if got != [str(ctx.size), "200"]:
                raise RuntimeError(f"curl got {got}, expected {ctx.size} bytes with 200")
        if plan.uploaded_key is not None:
            check_upload(store, ctx, plan.uploaded_key)
        out = plan.path_from_stdout(res.stdout) if plan.path_from_stdout else plan.out_file
        if out is not None:
            cmp = subprocess.run(["cmp", str(out), str(ctx.ref)], capture_output=True, timeout=600)
            if cmp.returncode != 0:
                raise RuntimeError(
                    f"{out} differs from the reference: {cmp.stdout!r}{cmp.stderr!r}"
                )
    except RuntimeError as exc:
        row["error"] = str(exc)[:1500]
        log(f"{contender.name}: FAILED: {row['error']}")
    finally:
        if plan.uploaded_key is not None:
            store.delete(plan.uploaded_key)  # the next run starts without it
    shutil.rmtree(ctx.out, ignore_errors=True)
    return row


def check_upload(store: Store, ctx: Ctx, key: str) -> None:
    """Untimed: the uploaded object read back (admin keys, plain HTTP) into the
    consumer, which compares every byte and the length with the reference."""
    res = run_pipeline(
        [["curl", "-sS", "--fail", store.presign(key), "-o", "-"], peers._cmp(ctx)],
        timeout=run_timeout(ctx.size),
    )
    if not res.ok:
        errs = b" | ".join(e.strip()[-500:] for e in res.stderr).decode(errors="replace")
        raise RuntimeError(f"{key} read back is not the reference: {errs}")


def run_one(contender: Contender, ctx: Ctx, store: Store, exact: bool) -> dict[str, Any]:
    if not contender.daemon:
        return measure(contender, ctx, store, None, exact)
    with daemon_with_job(store, ctx) as d:
        row = measure(contender, ctx, store, d.pid, exact)
        if row["error"]:  # keep the daemon's side of the story
            kept = ctx.work / "failed" / f"{contender.name}-{time.strftime('%H%M%S')}.log"
            kept.parent.mkdir(exist_ok=True)
            shutil.copy(d.log, kept)
            row["daemon_log"] = str(kept)
            log(f"daemon log kept in {kept}:\n{d.log.read_text()[-2000:]}")
        return row


@contextlib.contextmanager
def daemon_with_job(
    store: Store,
    ctx: Ctx,
    transfer: dict[str, Any] | None = None,
    api: dict[str, Any] | None = None,
) -> Iterator[s3feedd.Daemon]:
    with s3feedd.running(
        store,
        ctx.work / "daemon",
        {**ctx.transfer, **(transfer or {})},
        endpoint_url=ctx.endpoint_url,
        ca_bundle=ctx.ca_bundle,
        api=api,
    ) as d:
        client = Client(str(d.socket))
        uri = s3feedd.job_uri(store, "bench/")
        role = ctx.role_arn or store.role_arn
        # A daemon on an encoder host is long-lived: its botocore models are
        # loaded once. Another job's listing warms them; the measured job still
        # pays for its own S3 client, as every new job does.
        client.create_job("warm", TENANT, uri, role)
        client.list_objects("warm", "no-such-prefix/")
        client.delete_job("warm")
        dest: dict[str, Any] = {}
        if ctx.destination is not None:  # uploads: the job's Destination
            dest["Destination"] = {"Provider": "AmazonS3", "UriPath": ctx.destination}
        client.create_job(ctx.job_id, TENANT, uri, role, **dest)
        ctx.socket = d.socket
        try:
            yield d
        finally:
            ctx.socket = None


def main_suite(
    contenders: list[Contender], ctx: Ctx, store: Store, runs: int, warmup: bool
) -> list[dict[str, Any]]:
    rows = []
    if warmup:
        for c in contenders:
            log(f"warm-up (checked byte-exact): {c.name}")
            row = run_one(c, ctx, store, exact=True)
            rows.append({**row, "round": 0})
    for r in range(1, runs + 1):
        order = contenders if r % 2 else list(reversed(contenders))
        for c in order:
            row = run_one(c, ctx, store, exact=False)
            row["round"] = r
            rows.append(row)
            log(
                f"round {r}/{runs} {c.name}: {row['wall_s']:.2f} s"
                f" client {row['client_cpu_s']:.2f} + daemon {row['daemon_cpu_s']:.2f} CPU-s"
                f"{' FAILED' if row['error'] else ''}"
            )
    return rows


# ------------------------------------------------------------------ time to first byte


def first_byte(cmd: list[str], env: dict[str, str] | None, ref: Path, n: int = 65536) -> float:
    """Seconds from spawning `cmd` to its first stdout byte; checks the first bytes."""
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    try:
        assert p.stdout is not None
        data = os.read(p.stdout.fileno(), n)
        t1 = time.monotonic()
        with open(ref, "rb") as fh:
            if not data or data != fh.read(len(data)):
                raise RuntimeError(f"{cmd[0]}: first bytes differ from the reference")
        return t1 - t0
    finally:
        if p.stdout is not None:
            p.stdout.close()  # the producer gets EPIPE and stops
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def ttfb_suite(
    contenders: list[Contender], ctx: Ctx, store: Store, runs: int
) -> dict[str, list[float]]:
    streams = [c for c in contenders if c.mode == "stream"]
    out: dict[str, list[float]] = {c.name: [] for c in streams}
    if not streams:
        return out
    with daemon_with_job(store, ctx):
        wait_quiet()
        for _ in range(runs):
            for c in streams:
                plan = c.plan(ctx, True)  # the producer of the exact form writes to stdout
                out[c.name].append(first_byte(plan.cmds[0], plan.env, ctx.ref))
                wait_quiet()  # the cancelled transfer has wound down, on every side
    return out


# ------------------------------------------------------------------ slow reader


def slow_reader(ctx: Ctx, store: Store, rate: int) -> dict[str, Any]:
    os.sync()
    with daemon_with_job(store, ctx) as d:
        base_rss = proc_status_kib(d.pid, "VmRSS")
        peak = {"rss": 0, "buffered": 0.0}
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.25):
                with contextlib.suppress(OSError):
                    peak["rss"] = max(peak["rss"], proc_status_kib(d.pid, "VmRSS"))
                    peak["buffered"] = max(
                        peak["buffered"], d.metric("s3feed_stream_buffered_bytes") or 0
                    )

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        cmd = ["curl", "-sS", "--fail", "--limit-rate", str(rate), "--unix-socket", str(d.socket)]
        cpu0 = proc_cpu(d.pid)
        res = run_pipeline(
            [[*cmd, ctx.object_url, "-o", "-"], [str(peers.consumer_bin()), str(ctx.ref)]],
            timeout=120 + ctx.size / rate * 2,
        )
        stop.set()
        sampler.join()
        return {
            "size": ctx.size,
            "rate_limit": rate,
            "wall_s": res.wall_s,
            "ok": res.ok,
            "daemon_cpu_s": proc_cpu(d.pid) - cpu0,
            "base_rss_mib": base_rss / 1024,
            "peak_rss_sampled_mib": peak["rss"] / 1024,
            "daemon_hwm_mib": proc_status_kib(d.pid, "VmHWM") / 1024,
            "peak_buffered_mib": peak["buffered"] / MiB,
            "window_mib": _transfer(ctx).stream_window / MiB,
            "budget_mib": _transfer(ctx).stream_memory / MiB,
        }


def _transfer(ctx: Ctx) -> TransferConfig:
    """The [transfer] settings the daemons of this run have."""
    return TransferConfig(
        **{k: parse_size(v) if isinstance(v, str) else v for k, v in ctx.transfer.items()}
    )


def stream_crowd(ctx: Ctx, store: Store, n: int, rate: int | None) -> dict[str, Any]:
    """`n` streams of the object at once on one fresh daemon, each into the
    consumer: `s3feed cat` (rate None: readers that keep up) or curl on the
    socket at `rate` bytes/s (slow readers). Daemon peak RSS against its
    baseline plus [transfer] stream_memory (docs/design.md, Stream memory)."""
    os.sync()
    with daemon_with_job(store, ctx) as d:
        base_rss = proc_status_kib(d.pid, "VmRSS")
        peak = {"rss": 0, "buffered": 0.0}
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.1):
                with contextlib.suppress(OSError):
                    peak["rss"] = max(peak["rss"], proc_status_kib(d.pid, "VmRSS"))
                    peak["buffered"] = max(
                        peak["buffered"], d.metric("s3feed_stream_buffered_bytes") or 0
                    )

        if rate is None:
            plan = peers.CONTENDERS_BY_NAME["s3feed-cat"].plan(ctx, True)
            cmds, env = plan.cmds, plan.env
        else:
            curl = ["curl", "-sS", "--fail", "--limit-rate", str(rate), "--unix-socket"]
            cmds = [[*curl, str(d.socket), ctx.object_url, "-o", "-"], peers._cmp(ctx)]
            env = None
        timeout = run_timeout(ctx.size * n) + (ctx.size / rate * 2 if rate else 0)
        results: list[Any] = [None] * n

        def go(i: int) -> None:
            results[i] = run_pipeline(cmds, env=env, timeout=timeout)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        cpu0 = proc_cpu(d.pid)
        t0 = time.monotonic()
        run_threads(go, n)
        wall = time.monotonic() - t0
        stop.set()
        sampler.join()
        return {
            "streams": n,
            "size": ctx.size,
            "rate_limit": rate,
            "wall_s": wall,
            "ok": all(r is not None and r.ok for r in results),
            "daemon_cpu_s": proc_cpu(d.pid) - cpu0,
            "base_rss_mib": base_rss / 1024,
            "peak_rss_sampled_mib": peak["rss"] / 1024,
            "daemon_hwm_mib": proc_status_kib(d.pid, "VmHWM") / 1024,
            "peak_buffered_mib": peak["buffered"] / MiB,
            "window_mib": _transfer(ctx).stream_window / MiB,
            "budget_mib": _transfer(ctx).stream_memory / MiB,
        }


# ------------------------------------------------------------------ concurrency


def fetch_timed(
    sock: Path, job: str, key: str, barrier: threading.Barrier | None
) -> dict[str, Any]:
    client = Client(str(sock), timeout=900)
    if barrier is not None:
        barrier.wait(timeout=60)
    t0 = time.monotonic()
    doc = client.fetch(job, key, wait=True)
    return {
        "job": job,
        "start": t0,
        "end": time.monotonic(),
        "path": doc["Path"],
        "state": doc["State"],
    }


def concurrency_suite(
    store: Store, refs: list[tuple[str, Path]], tenants: int, rounds: int, ctx: Ctx
) -> list[dict[str, Any]]:
    size = refs[0][1].stat().st_size
    out = []
    for r in range(rounds):
        row: dict[str, Any] = {"round": r + 1, "jobs": len(refs), "tenants": tenants, "size": size}
        os.sync()  # no writeback of earlier work during the round
        # The same fetches one after another, on a fresh daemon: the same bytes
        # reach the page cache and the disk as in the concurrent case (4 GiB of
        # dirty pages get written back where 512 MiB alone would not).
        with s3feedd.running(store, ctx.work / "daemon", ctx.transfer) as d:
            client = Client(str(d.socket))
            uri = s3feedd.job_uri(store, "bench/")
            for i in range(len(refs)):
                client.create_job(f"job-{i}", f"{TENANT}-{i % tenants}", uri, store.role_arn)
            cpu0, relay0 = proc_cpu(d.pid), pids_cpu(ctx.relay_pids)
            seq = [fetch_timed(d.socket, f"job-{i}", refs[i][0], None) for i in range(len(refs))]
            row["seq_durations_s"] = [x["end"] - x["start"] for x in seq]
            row["seq_s"] = seq[-1]["end"] - seq[0]["start"]
            row["single_s"] = row["seq_durations_s"][0]
            row["seq_cpu_s"] = proc_cpu(d.pid) - cpu0
            row["seq_relay_cpu_s"] = pids_cpu(ctx.relay_pids) - relay0
            for res, (_, ref) in zip(seq, refs, strict=True):
                check_file(Path(res["path"]), ref)
        os.sync()
        # All at once on another fresh daemon.
        with s3feedd.running(store, ctx.work / "daemon", ctx.transfer) as d:
            client = Client(str(d.socket))
            for i in range(len(refs)):
                client.create_job(
                    f"job-{i}",
                    f"{TENANT}-{i % tenants}",
                    s3feedd.job_uri(store, "bench/"),
                    store.role_arn,
                )
            barrier = threading.Barrier(len(refs))
            results: list[dict[str, Any]] = [{} for _ in refs]
            cpu0, relay0 = proc_cpu(d.pid), pids_cpu(ctx.relay_pids)

            def go(
                i: int,
                results: list[dict[str, Any]] = results,
                barrier: threading.Barrier = barrier,
            ) -> None:
                results[i] = fetch_timed(d.socket, f"job-{i}", refs[i][0], barrier)

            threads = [threading.Thread(target=go, args=(i,)) for i in range(len(refs))]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=run_timeout(size * len(refs)))
            row["daemon_cpu_s"] = proc_cpu(d.pid) - cpu0
            row["relay_cpu_s"] = pids_cpu(ctx.relay_pids) - relay0
            row["daemon_hwm_mib"] = proc_status_kib(d.pid, "VmHWM") / 1024
            if any(not res for res in results):
                raise RuntimeError("a concurrent fetch did not finish")
            durations = [res["end"] - res["start"] for res in results]
            row["durations_s"] = durations
            row["wall_s"] = max(res["end"] for res in results) - min(
                res["start"] for res in results
            )
            for res, (_, ref) in zip(results, refs, strict=True):
                check_file(Path(res["path"]), ref)
        out.append(row)
        log(
            f"concurrency, {len(refs)} jobs, round {r + 1}: one after another {row['seq_s']:.2f} s,"
            f" {len(refs)} at once {row['wall_s']:.2f} s, slowest/fastest"
            f" {max(durations) / min(durations):.2f}"
        )
    return out


def check_file(path: Path, ref: Path) -> None:
    if subprocess.run(["cmp", "-s", str(path), str(ref)], timeout=600).returncode != 0:
        raise RuntimeError(f"{path} differs from {ref}")


# ------------------------------------------------------------------ the remote profile


def add_link_args(p: argparse.ArgumentParser) -> None:
    """--link and how the remote profile's relay paces (`linked`)."""
    p.add_argument(
        "--link",
        choices=["loopback", "remote"],
        default="loopback",
        help="loopback: S3 as it is; remote: every contender through a pacing relay"
        " (localaws/relay.py), its CPU reported apart; the report goes to RESULTS-remote.md",
    )
    p.add_argument(
        "--link-rate",
        type=float,
        default=90_000_000,
        help="remote: server->client bytes/s of each connection (default 90 MB/s)",
    )
    p.add_argument(
        "--link-delay",
        type=float,
        default=0.02,
        help="remote: seconds per request, and per new connection (default 0.02)",
    )
    p.add_argument(
        "--link-slice",
        type=parse_size,
        default=relay.Link.slice,
        help="remote: most bytes the relay reads and sends on at once (default 64KiB): how"
        " coarsely paced bytes arrive",
    )


@contextlib.contextmanager
def linked(store: Store, args: argparse.Namespace) -> Iterator[tuple[Store, dict[str, Any]]]:
    """The store as every contender reaches it: itself on loopback; with
    `--link remote`, through a relay process per port (HTTP, and HTTPS when
    the server has it), and the facts of that link (the relays' own
    accounting is added when they stop)."""
    if args.link == "loopback":
        yield store, {"profile": "loopback"}
        return
    link = relay.Link(
        rate=args.link_rate,
        delay=args.link_delay,
        burst=max(relay.Link.burst, args.link_slice),
        slice=args.link_slice,
    )
    facts: dict[str, Any] = {"profile": "remote", **dataclasses.asdict(link)}
    with contextlib.ExitStack() as stack:
        plain = stack.enter_context(relay.spawn(store.endpoint_url, link, args.work / "relay"))
        handles = [plain]
        tls_url = None
        if store.https_endpoint_url is not None:
            tls = stack.enter_context(
                relay.spawn(store.https_endpoint_url, link, args.work / "relay")
            )
            handles.append(tls)
            tls_url = tls.url
        log(
            f"remote profile: S3 through {plain.url} ({args.link_rate / 1e6:g} MB/s per"
            f" connection, {args.link_delay * 1e3:g} ms per request)"
        )
        facts["relay_pids"] = args.relay_pids = [h.pid for h in handles]
        try:
            yield (
                dataclasses.replace(store, endpoint_url=plain.url, https_endpoint_url=tls_url),
                facts,
            )
        finally:
            stack.close()  # the relays stop and write their accounting
            facts["relay_stats"] = [h.stats for h in handles]


CAPACITY_BYTES = 2_000_000_000  # above what this machine moves through one process


def link_capacity(ctx: Ctx, rate: float, streams: int | None) -> dict[str, Any]:
    """What one relay, with the store behind it, carries on this machine:
    presigned GETs at once through it (curl to /dev/null, the cheapest
    reader), aggregate MB/s and the relay's CPU-s per GB: the ceiling the
    scale rows are read against. Unless `streams` is given, enough of them that their
    paced rates add up to 2 GB/s, so the relay, not the pace, is the limit;
    each reads a range of the object, 2 GB in all."""
    n = streams or min(64, max(4, math.ceil(CAPACITY_BYTES / rate)))
    each = min(ctx.size, max(16 * MiB, CAPACITY_BYTES // n))
    os.sync()
    cmd = ["curl", "-sS", "--fail", *ctx.curl_tls(), "-o", "/dev/null"]
    cmd += ["-r", f"0-{each - 1}"] if each < ctx.size else []
    cmd += ["-w", "%{size_download} %{http_code}", ctx.presigned]
    results: list[Any] = [None] * n

    def go(i: int) -> None:
        results[i] = run_pipeline([cmd], capture_last=True, timeout=run_timeout(each * n))

    relay0 = pids_cpu(ctx.relay_pids)
    t0 = time.monotonic()
    run_threads(go, n)
    wall = time.monotonic() - t0
    relay_cpu = pids_cpu(ctx.relay_pids) - relay0
    expect = [str(each), "206" if each < ctx.size else "200"]
    ok = all(r is not None and r.ok and r.stdout.decode().split() == expect for r in results)
    total = n * each
    return {
        "streams": n,
        "bytes_each": each,
        "wall_s": wall,
        "ok": ok,
        "aggregate_mbps": total / wall / 1e6,
        "paced_mbps": n * rate / 1e6,
        "relay_cpu_s": relay_cpu,
        "relay_cpu_per_gb": relay_cpu / (total / 1e9),
        "curl_cpu_s": sum(p.cpu_s for r in results if r is not None for p in r.procs),
    }


# ------------------------------------------------------------------ idle


def idle_daemon(store: Store, ctx: Ctx, seconds: float) -> dict[str, Any]:
    with daemon_with_job(store, ctx) as d:
        time.sleep(1.0)
        cpu0 = proc_cpu(d.pid)
        time.sleep(seconds)
        return {
            "seconds": seconds,
            "cpu_s": proc_cpu(d.pid) - cpu0,
            "rss_mib": proc_status_kib(d.pid, "VmRSS") / 1024,
        }


# ------------------------------------------------------------------ machine


def machine(work: Path) -> dict[str, Any]:
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        platform.processor(),
    )
    mem = next(
        ln.split()[1]
        for ln in Path("/proc/meminfo").read_text().splitlines()
        if ln.startswith("MemTotal")
    )
    os_name = "?"
    with contextlib.suppress(OSError):
        for ln in Path("/etc/os-release").read_text().splitlines():
            if ln.startswith("PRETTY_NAME="):
                os_name = ln.split("=", 1)[1].strip('"')
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(int(mem) / (1 << 20), 1),
        "os": os_name,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "fs": subprocess.run(
            ["stat", "-f", "-c", "%T", str(work)], capture_output=True, text=True
        ).stdout.strip(),
    }


# ------------------------------------------------------------------ main


def transfer_setting(text: str) -> tuple[str, int | str]:
    key, sep, value = text.partition("=")
    if not sep or key not in TransferConfig.__dataclass_fields__:
        raise argparse.ArgumentTypeError(f"{text!r}: want KEY=VALUE with a [transfer] key")
    return key, int(value) if value.isdigit() else value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench/run", description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=parse_size, default=2 * GiB, help="test object (default 2GiB)")
    p.add_argument("--runs", type=int, default=5, help="measured rounds (default 5)")
    p.add_argument("--no-warmup", dest="warmup", action="store_false")
    p.add_argument("--only", nargs="+", metavar="NAME", help="these contenders only")
    p.add_argument("--upload-part-size", type=parse_size, default=16 * MiB)
    p.add_argument("--checksum", choices=CHECKSUMS, default=DEFAULT_CHECKSUM, help="bench/store.py")
    p.add_argument("--ttfb-runs", type=int, default=5)
    p.add_argument("--slow-rate", type=int, default=50_000_000, help="bytes/s (default 50 MB/s)")
    p.add_argument("--slow-size", type=parse_size, default=None, help="default: --size")
    p.add_argument(
        "--conc-jobs",
        type=int,
        nargs="+",
        default=[8],
        help="jobs at once; several counts run in turn (the scale rows: 1 8 32)",
    )
    p.add_argument("--conc-tenants", type=int, default=4)
    p.add_argument("--conc-size", type=parse_size, default=512 * MiB)
    p.add_argument("--conc-rounds", type=int, default=3)
    p.add_argument("--crowd-streams", type=int, default=8, help="streams at once (default 8)")
    p.add_argument(
        "--crowd-rate",
        type=int,
        default=10_000_000,
        help="bytes/s of each slow reader in the slow crowd (default 10 MB/s)",
    )
    p.add_argument("--idle-seconds", type=float, default=10.0)
    p.add_argument(
        "--skip",
        nargs="+",
        default=[],
        choices=["link", "main", "ttfb", "slow", "crowd", "concurrency", "idle", "uploads"],
    )
    add_link_args(p)
    p.add_argument(
        "--link-streams",
        type=int,
        default=None,
        help="remote: GETs at once that measure what the relay carries (default: enough"
        " that their paced rates add up to 2 GB/s, at most 64)",
    )
    p.add_argument(
        "--transfer",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        type=transfer_setting,
        help="a [transfer] setting for every s3feed daemon (tuning runs), e.g. part_size=32MiB",
    )
    p.add_argument(
        "--https",
        action="store_true",
        help="run every main row twice: plain HTTP, then HTTPS (SeaweedFS -s3.port.https with a"
        " throwaway CA every contender is told to trust; s3feed's rows only if its"
        " configuration takes [s3] ca_bundle)",
    )
    p.add_argument(
        "--scenario",
        choices=["default", "urls"],
        default="default",
        help="default: the suites above; urls: only ffmpeg on a moov-at-end MP4 through"
        " `s3feed url`, a presigned URL and fetch-then-ffmpeg (bench/urls.py), written into"
        ' the results\' "URLs" section',
    )
    p.add_argument("--work", type=Path, default=WORK, help="scratch (default bench/.work)")
    p.add_argument(
        "--results",
        type=Path,
        default=None,
        help="markdown report (default bench/RESULTS.md; bench/RESULTS-remote.md with --link"
        " remote)",
    )
    return p


def run(args: argparse.Namespace, store: Store | None = None) -> dict[str, Any]:
    """The whole benchmark; with `store`, on that SeaweedFS instead of a new one."""
    if args.results is None:
        args.results = RESULTS_REMOTE if args.link == "remote" else RESULTS
    args.results.parent.mkdir(parents=True, exist_ok=True)
    compile_s3feed()
    if args.scenario == "urls":
        return run_urls(args, store)
    peers.install()
    args.work.mkdir(parents=True, exist_ok=True)
    facts: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "loadavg_start": loadavg(),
        "machine": machine(args.work),
        "versions": peers.versions(),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }
    with contextlib.ExitStack() as stack:
        if store is None:
            log("starting SeaweedFS")
            store = stack.enter_context(own_seaweed(args.work, https=args.https))
        if args.https and (store.https_endpoint_url is None or store.ca_bundle is None):
            raise SystemExit("--https needs a SeaweedFS with its HTTPS port (own_seaweed)")
        facts["server"] = {"endpoint": store.endpoint_url}
        store, facts["link"] = stack.enter_context(linked(store, args))
        ctx = prepare(store, args)
        if args.link == "remote" and "link" not in args.skip:
            log("what the relay carries")
            facts["link_capacity"] = link_capacity(ctx, args.link_rate, args.link_streams)
        meta = head(store, ctx.key)
        facts["object"] = {
            "key": ctx.key,
            "size": ctx.size,
            "etag": meta.get("ETag"),
            "checksums": {k: v for k, v in meta.items() if k.startswith("Checksum")},
            "upload_part_size": args.upload_part_size,
        }
        contenders = peers.by_name(args.only)
        if "main" not in args.skip:
            facts["main"] = main_suite(contenders, ctx, store, args.runs, args.warmup)
            if args.https:
                facts["main_https"], facts["https_note"] = https_suite(contenders, ctx, store, args)
        if "ttfb" not in args.skip:
            log("time to first byte")
            facts["ttfb"] = ttfb_suite(contenders, ctx, store, args.ttfb_runs)
        if "slow" not in args.skip:
            slow_ctx = ctx
            if args.slow_size and args.slow_size != ctx.size:
                slow_ctx = prepare(store, args, size=args.slow_size)
            log(f"slow reader: {slow_ctx.size} bytes at {args.slow_rate} B/s")
            facts["slow"] = slow_reader(slow_ctx, store, args.slow_rate)
        if "crowd" not in args.skip:
            crowd_ctx = ctx
            if args.slow_size and args.slow_size != ctx.size:
                crowd_ctx = prepare(store, args, size=args.slow_size)
            log(f"{args.crowd_streams} streams at once, readers that keep up")
            fast = stream_crowd(crowd_ctx, store, args.crowd_streams, None)
            log(f"{args.crowd_streams} streams at once, readers at {args.crowd_rate} B/s")
            slow = stream_crowd(crowd_ctx, store, args.crowd_streams, args.crowd_rate)
            facts["crowd"] = [fast, slow]
        if "concurrency" not in args.skip:
            refs = []
            for i in range(max(args.conc_jobs)):
                ref = reference(args.work, f"conc{i}", args.conc_size, 100 + i)
                key = f"bench/conc-{i}-{args.conc_size}.bin"
                upload(store, key, ref, args.upload_part_size, args.checksum)
                refs.append((key.removeprefix("bench/"), ref))
            facts["concurrency"] = []
            for jobs in args.conc_jobs:
                log(f"concurrency: {jobs} jobs of {min(jobs, args.conc_tenants)} tenants")
                facts["concurrency"] += concurrency_suite(
                    store, refs[:jobs], args.conc_tenants, args.conc_rounds, ctx
                )
        if "idle" not in args.skip:
            facts["idle"] = idle_daemon(store, ctx, args.idle_seconds)
        if "uploads" not in args.skip:
            uploads = peers.by_name(args.only, peers.UPLOADS)
            up_ctx = upload_ctx(ctx, store)
            log(f"uploads of {ctx.size} bytes: {', '.join(c.name for c in uploads)}")
            facts["uploads"] = main_suite(uploads, up_ctx, store, args.runs, args.warmup)
            if args.https:
                facts["uploads_https"], facts["uploads_https_note"] = https_suite(
                    uploads, up_ctx, store, args
                )
    facts["loadavg_end"] = loadavg()
    facts["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    raw = args.results.with_suffix(".json")
    facts["raw"] = raw.name
    raw.write_text(json.dumps(facts, indent=1, default=str))
    text = report.render(facts)
    kept = urls.section_of(args.results.read_text()) if args.results.exists() else ""
    if kept:  # the URL rows come from their own scenario: a default run keeps them
        text = text.rstrip("\n") + "\n\n" + kept
    args.results.write_text(text)
    print(text)
    log(f"wrote {args.results} and {raw}")
    return facts


def compile_s3feed() -> None:
    """Byte-compile s3feed's modules, as installing the package does (the
    .deb's postinst; pip), so the CLI rows' start-up is not charged for
    compiling sources that changed since the last import wrote them (or all
    of them, with PYTHONDONTWRITEBYTECODE set): the peers are compiled
    programs too."""
    repo = Path(__file__).resolve().parent.parent
    for package in ("auth", "client", "daemon", "transfer"):
        compileall.compile_dir(repo / package, quiet=1)


def run_urls(args: argparse.Namespace, store: Store | None = None) -> dict[str, Any]:
    """`--scenario urls`: the URL rows over plain HTTP and, with --https, over
    HTTPS; their raw figures in RESULTS-urls.json beside the results, their
    section ("## URLs") put into the results file in place of the old one."""
    args.work.mkdir(parents=True, exist_ok=True)
    facts: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "loadavg_start": loadavg(),
        "machine": machine(args.work),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }
    with contextlib.ExitStack() as stack:
        if store is None:
            log("starting SeaweedFS")
            store = stack.enter_context(own_seaweed(args.work, https=args.https))
        store, facts["link"] = stack.enter_context(linked(store, args))
        base = prepare_ctx(store, args, args.work / "unused", "bench/unused", 0)
        ctx = urls.prepare(store, base, args.work, args.size, args.upload_part_size)
        protocols = {"plain HTTP": ctx}
        if args.https:
            if store.https_endpoint_url is None or store.ca_bundle is None:
                raise SystemExit("--https needs a SeaweedFS with its HTTPS port (own_seaweed)")
            protocols["HTTPS"] = dataclasses.replace(
                ctx, endpoint_url=store.https_endpoint_url, ca_bundle=store.ca_bundle
            )
        results: dict[str, Any] = {}
        for proto, pctx in protocols.items():
            log(f"URLs over {proto}: {pctx.key}, {pctx.size} bytes")

            def daemon(c: Ctx, api: dict[str, Any], store: Store = store) -> Any:
                return daemon_with_job(store, c, api=api)

            results[proto] = urls.suite(pctx, store, args.runs, daemon, log)
        facts["urls"] = results
    facts["loadavg_end"] = loadavg()
    facts["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    args.results.with_name(args.results.stem + "-urls.json").write_text(
        json.dumps(facts, indent=1, default=str)
    )
    section = urls.render(results, facts["started"], facts["machine"], facts["link"])
    urls.upsert(args.results, section)
    print(section)
    log(f"wrote the URLs section of {args.results}")
    return facts


def https_suite(
    contenders: list[Contender], ctx: Ctx, store: Store, args: argparse.Namespace
) -> tuple[list[dict[str, Any]], str]:
    """The main rows again over HTTPS: the same server's TLS port, every
    contender trusting the throwaway CA (peers.Ctx: AWS_CA_BUNDLE, rclone
    --ca-cert, curl --cacert; the daemon `[s3]`/`[sts] ca_bundle`)."""
    assert store.https_endpoint_url is not None and store.ca_bundle is not None
    tls_ctx = dataclasses.replace(
        ctx,
        endpoint_url=store.https_endpoint_url,
        ca_bundle=store.ca_bundle,
        presigned=store.presign(ctx.key, endpoint_url=store.https_endpoint_url),
    )
    note = "every contender over HTTPS"
    if not s3feedd.supports_ca_bundle(args.work / "probe", store.ca_bundle):
        note = (
            "s3feed's rows are left out: this s3feed does not take `[s3] ca_bundle` /"
            " `[sts] ca_bundle` (issue 14, item 3), so it cannot trust the throwaway CA"
        )
        contenders = [c for c in contenders if not c.daemon]
    log(f"HTTPS: {note}")
    return main_suite(contenders, tls_ctx, store, args.runs, args.warmup), note


def upload_ctx(ctx: Ctx, store: Store) -> Ctx:
    """The upload rows' context: the writer role (the job's and the peers'
    session), a Destination folder of its own, one key deleted after each run."""
    key = f"bench-out/upload-{ctx.size}.bin"
    store.delete(key)  # what an interrupted run left
    return dataclasses.replace(
        ctx,
        creds=store.reader_session(store.writer_role_arn),
        role_arn=store.writer_role_arn,
        destination=s3feedd.job_uri(store, "bench-out/"),
        dest_key=key,
        dest_job_key=key.removeprefix("bench-out/"),
    )


def prepare(store: Store, args: argparse.Namespace, size: int | None = None) -> Ctx:
    size = size or args.size
    ref = reference(args.work, "main", size, 1)
    key = f"bench/main-{size}.bin"
    log(f"uploading {key} ({size} bytes, {args.upload_part_size} byte parts)")
    upload(store, key, ref, args.upload_part_size, args.checksum)
    return prepare_ctx(store, args, ref, key, size)


def prepare_ctx(store: Store, args: argparse.Namespace, ref: Path, key: str, size: int) -> Ctx:
    """The context of a run reading `key` with a fresh reader-role session."""
    creds = store.reader_session()
    return Ctx(
        endpoint_url=store.endpoint_url,
        bucket=store.bucket,
        key=key,
        size=size,
        ref=ref,
        creds=creds,
        # SeaweedFS refuses presigned URLs signed with session credentials: admin keys.
        presigned=store.presign(key),
        work=args.work,
        part_size=16 * MiB,
        job_id="bench",
        job_key=key.removeprefix("bench/"),
        transfer=dict(args.transfer),
        relay_pids=tuple(getattr(args, "relay_pids", ())),  # set by `linked`
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def interrupted(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # unwinds through every `with`: daemons, SeaweedFS

    signal.signal(signal.SIGTERM, interrupted)
    try:
        run(args)
    except KeyboardInterrupt:
        log("interrupted; stopped what was started")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
