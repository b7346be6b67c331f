"""Where s3feed's CPU goes on the data path: py-spy on the daemon and on `s3feed cat`.

    .venv/bin/python -m bench.profile [--size 1GiB] [--link remote] [--out bench/PROFILE.md]

Starts SeaweedFS (bench/.work/profile/local-aws), uploads the object, then
for each path runs one transfer while py-spy (bench/.venv) samples:

- cache: the daemon during `POST fetches?wait=true`;
- stream: the daemon during `curl --unix-socket ... -o /dev/null`;
- cat: the daemon during `s3feed cat | consume` (a delivery: the daemon
  writes the consumer's pipe itself; the CLI only waits).

py-spy records only threads that are running (not those waiting in epoll),
so sample counts are proportional to CPU time; with --native, C frames of
extensions (uvloop, httptools) and the interpreter show as well. Prints and
writes the top functions by self samples and by inclusive samples.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from s3feed.client import Client

from . import peers, s3feedd
from .measure import proc_cpu
from .run import WORK, GiB, MiB, add_link_args, linked, parse_size, prepare
from .store import CHECKSUMS, DEFAULT_CHECKSUM, Store, own_seaweed

PY_SPY = peers.VENV / "bin" / "py-spy"


def record(pid: int | None, out: Path, cmd: list[str] | None = None) -> subprocess.Popen[bytes]:
    args = [str(PY_SPY), "record", "--format", "raw", "--rate", "200", "--native", "-o", str(out)]
    target = ["--pid", str(pid)] if pid else ["--", *(cmd or [])]
    return subprocess.Popen([*args, *target], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def stop(spy: subprocess.Popen[bytes]) -> None:
    if spy.poll() is None:
        spy.send_signal(signal.SIGINT)
    try:
        spy.wait(timeout=60)
    except subprocess.TimeoutExpired:
        spy.kill()
        spy.wait()
    if spy.stderr is not None:
        spy.stderr.close()


def summarize(raw: Path, top: int = 18) -> list[str]:
    """Self and inclusive sample shares per function from py-spy's collapsed stacks."""
    selfc: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        frames = [_short(f) for f in stack.split(";")[1:]]  # [0] is the thread
        if not frames:
            continue
        total += n
        selfc[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    out = [f"{total} samples at 200 Hz (~{total / 200:.1f} CPU-s)", "", "| self % | function |"]
    out.append("|---|---|")
    out += [f"| {100 * n / total:.1f} | `{f}` |" for f, n in selfc.most_common(top)]
    out += ["", "| inclusive % | function |", "|---|---|"]
    out += [f"| {100 * n / total:.1f} | `{f}` |" for f, n in incl.most_common(top)]
    return out


def _short(frame: str) -> str:
    # "func (/path/to/module.py:123)" -> "func (module.py)"
    name, _, where = frame.partition(" (")
    file = where.rstrip(")").rsplit(":", 1)[0]
    return f"{name} ({Path(file).name})" if file else name


def where(args: argparse.Namespace) -> str:
    if args.link == "loopback":
        return "on loopback"
    return (
        f"through the remote profile's relay ({args.link_rate / 1e6:g} MB/s per connection,"
        f" {args.link_delay * 1e3:g} ms per request; bench/run.py, `linked`)"
    )


def profile(store: Store, args: argparse.Namespace) -> list[str]:
    ctx = prepare(store, args)
    lines = [
        "# Where s3feed's CPU goes (py-spy)",
        "",
        f"`python -m bench.profile --size {args.size} --link {args.link}`: one"
        f" {args.size / GiB:g} GiB transfer per path from SeaweedFS, {where(args)}, default"
        " [transfer] settings, py-spy --native at 200 Hz (only running threads are sampled, so"
        " shares are shares of CPU time).",
        "",
    ]
    spy_dir = args.work / "spy"
    spy_dir.mkdir(parents=True, exist_ok=True)
    url = f"http://localhost/v1/jobs/{ctx.job_id}/fetches?wait=true"
    for path in ("cache", "stream", "cat"):
        raw = spy_dir / f"{path}.txt"
        with s3feedd.running(store, args.work / "daemon") as d:
            Client(str(d.socket)).create_job(
                ctx.job_id, "bench-tenant", s3feedd.job_uri(store, "bench/"), store.role_arn
            )
            ctx.socket = d.socket
            curl = ["curl", "-sS", "--fail", "--unix-socket", str(d.socket)]
            t0, cpu0 = time.monotonic(), proc_cpu(d.pid)
            if path == "cache":
                spy = record(d.pid, raw)
                time.sleep(1.0)  # py-spy attaches
                subprocess.run(
                    [
                        *curl,
                        "-X",
                        "POST",
                        "-H",
                        "Content-Type: application/json",
                        "-d",
                        f'{{"Key": "{ctx.job_key}"}}',
                        url,
                        "-o",
                        "/dev/null",
                    ],
                    check=True,
                    timeout=600,
                )
            elif path == "stream":
                spy = record(d.pid, raw)
                time.sleep(1.0)
                subprocess.run([*curl, ctx.object_url, "-o", "/dev/null"], check=True, timeout=600)
            else:  # the daemon writes the consumer's pipe itself (a delivery)
                env = {**os.environ, "S3FEED_SOCKET": str(d.socket)}
                spy = record(d.pid, raw)
                time.sleep(1.0)
                cat = [str(peers.S3FEED), "cat", ctx.job_id, ctx.job_key]
                consume = [str(peers.consumer_bin()), str(ctx.ref)]
                cmd = ["sh", "-c", 'exec "$@" | ' + " ".join(consume), "sh", *cat]
                subprocess.run(cmd, env=env, check=True, timeout=600)
            wall, dcpu = time.monotonic() - t0, proc_cpu(d.pid) - cpu0
            stop(spy)
        ctx.socket = None
        title = {
            "cache": "Daemon, cache mode (fetch with wait)",
            "stream": "Daemon, stream mode (curl --unix-socket to /dev/null)",
            "cat": "Daemon, `s3feed cat | consume` (the daemon writes the pipe)",
        }[path]
        lines += [
            f"## {title}",
            "",
            f"wall {wall:.2f} s (py-spy attached); daemon CPU {dcpu:.2f} s.",
            "",
        ]
        lines += summarize(raw) if raw.exists() else ["(py-spy wrote nothing)"]
        lines.append("")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.profile")
    p.add_argument("--size", type=parse_size, default=1 * GiB)
    p.add_argument("--upload-part-size", type=parse_size, default=16 * MiB)
    p.add_argument("--checksum", choices=CHECKSUMS, default=DEFAULT_CHECKSUM, help="bench/store.py")
    p.add_argument("--work", type=Path, default=WORK / "profile")
    p.set_defaults(transfer=[])
    add_link_args(p)
    p.add_argument("--out", type=Path, help="default bench/PROFILE.md (PROFILE-remote.md)")
    args = p.parse_args(argv)
    if args.out is None:
        name = "PROFILE.md" if args.link == "loopback" else "PROFILE-remote.md"
        args.out = Path(__file__).resolve().parent / name
    peers.install()
    args.work.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        store, _ = stack.enter_context(linked(stack.enter_context(own_seaweed(args.work)), args))
        text = "\n".join(profile(store, args)) + "\n"
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
