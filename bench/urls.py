"""The URL rows (docs/design.md, URLs for encoders): ffmpeg reading an MP4
with its index at the end (`moov` after `mdat`, ffmpeg's default) three ways.

    bench/run --scenario urls [--size 2GiB] [--runs 3] [--https]

- `s3feed url`: ffmpeg on the URL the daemon's loopback listener serves;
- `presigned URL`: ffmpeg on a URL presigned with the same role session's
  credentials (botocore's signer), straight to S3;
- `fetch, then ffmpeg`: `s3feed fetch` (the whole object into the cache),
  then ffmpeg on the cached file.

Every row is the same consumer, `ffmpeg -i SRC -map 0 -c copy -f null -`,
with `-progress pipe:1 -stats_period 0.02`, so it prints `frame=N` every
20 ms: the first frame is the first block with N > 0, timed from the start
of the row (for fetch-then-ffmpeg, from the fetch's start), to 20 ms. Total
is the row's wall time to ffmpeg's exit. S3 bytes: the daemon's
`s3feed_received_bytes_total` for the s3feed rows, ffmpeg's own read bytes
counted by a TCP relay in one extra, untimed run, for the presigned URL
(heads and, over HTTPS, TLS records included; a relay in the timed runs
would slow them). Each s3feed
row gets a fresh daemon and an empty cache; the MP4 is made once with ffmpeg
(a generated, noisy picture looped with `-c copy` up to the size) and kept in
the work directory. Rounds alternate the order; ratios are paired per round
against the presigned URL. No figure is asserted anywhere.

Design note: everything runs in this process, one row after another; ffmpeg
is a child reaped with wait4 (its CPU), its stdout read line by line here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import socket
import statistics
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from localaws.daemon import S3FEED
from s3feed.client import Client

from .measure import pids_cpu, proc_cpu
from .peers import Ctx
from .store import Store, upload

MiB = 1 << 20
FFMPEG = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-nostats"]
ROWS = ("s3feed url", "presigned URL", "fetch, then ffmpeg")


def media(work: Path, size: int) -> Path:
    """A moov-at-end MP4 of about `size` bytes (at least), made once and kept."""
    out = work / "urls" / f"late-{size}.mp4"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    clip = out.parent / "clip.mp4"
    if not clip.exists():
        # 10 s of a noisy 720p picture: about 5 MB/s of H.264, quick to encode.
        src = "testsrc2=size=1280x720:rate=25:duration=10"
        enc = ["-vf", "noise=alls=30:allf=t", "-c:v", "libx264", "-preset", "ultrafast"]
        enc += ["-qp", "20", "-g", "50", "-pix_fmt", "yuv420p"]
        tmp = clip.with_suffix(".tmp.mp4")
        subprocess.run([*FFMPEG, "-y", "-f", "lavfi", "-i", src, *enc, str(tmp)], check=True)
        tmp.rename(clip)
    loops = max(0, math.ceil(size / clip.stat().st_size) - 1)
    tmp = out.with_suffix(".tmp.mp4")
    loop = ["-stream_loop", str(loops), "-i", str(clip), "-c", "copy", "-fs", str(size)]
    subprocess.run([*FFMPEG, "-y", *loop, str(tmp)], check=True, timeout=3600)
    tmp.rename(out)
    return out


def received(daemon_metrics_port: int) -> float:
    """s3feed_received_bytes_total, summed over its tenants."""
    url = f"http://127.0.0.1:{daemon_metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as resp:
        lines = resp.read().decode().splitlines()
    name = "s3feed_received_bytes_total"
    return sum(float(ln.split()[-1]) for ln in lines if ln.startswith((name + "{", name + " ")))


def ffmpeg(src: str, before: list[str], t0: float, timeout: float) -> dict[str, Any]:
    """ffmpeg copying `src` to null: first frame (s since t0), end (s since
    t0), its CPU-s, its exit code and stderr's end."""
    cmd = [*FFMPEG, *before, "-i", src, "-map", "0", "-c", "copy", "-f", "null", "-"]
    cmd += ["-stats_period", "0.02", "-progress", "pipe:1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    killer = threading.Timer(timeout, proc.kill)
    killer.start()
    first = None
    err = b""
    try:
        assert proc.stdout is not None and proc.stderr is not None
        errs: list[bytes] = []
        reader = threading.Thread(target=lambda: errs.append(proc.stderr.read()))  # type: ignore[union-attr]
        reader.start()
        for line in proc.stdout:
            if first is None and line.startswith(b"frame=") and int(line[6:]) > 0:
                first = time.monotonic() - t0
        reader.join()
        err = b"".join(errs)
        _, status, usage = os.wait4(proc.pid, 0)
        end = time.monotonic() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
    finally:
        killer.cancel()
        if proc.returncode is None:
            proc.kill()
            proc.wait()
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
    return {
        "first_frame_s": first,
        "total_s": end,
        "ffmpeg_cpu_s": usage.ru_utime + usage.ru_stime,
        "returncode": proc.returncode,
        "stderr": err[-500:].decode(errors="replace"),
    }


def presign(store: Store, ctx: Ctx, endpoint_url: str | None = None) -> tuple[str, str]:
    """A GET URL for ctx.key presigned with the role session (ctx.creds), or,
    when the server refuses that, with the admin keys; and which it is. The
    signature covers the host: `endpoint_url` (a relay's) is the one ffmpeg
    will connect to."""
    import localaws

    endpoint = endpoint_url or ctx.endpoint_url
    creds = ctx.creds
    s3 = localaws.client(
        "s3",
        endpoint,
        creds["AccessKeyId"],
        creds["SecretAccessKey"],
        creds.get("SessionToken"),
        store.region,
    )
    with contextlib.closing(s3):
        url = str(
            s3.generate_presigned_url(
                "get_object", Params={"Bucket": ctx.bucket, "Key": ctx.key}, ExpiresIn=3600
            )
        )
    probe = [*FFMPEG, *_tls(ctx), "-i", url, "-f", "null", "-frames:v", "1", "-"]
    if subprocess.run(probe, capture_output=True, timeout=120).returncode == 0:
        return url, "role session"
    return store.presign(ctx.key, endpoint_url=endpoint), "admin keys (session refused)"


class CountingRelay:
    """A TCP relay to `upstream` ("host:port") counting the bytes it passes
    back to the client: what S3 sent to whoever connected through it (TLS
    records included over HTTPS). Threads, one pair per connection."""

    def __init__(self, upstream: str) -> None:
        host, _, port = upstream.rpartition(":")
        self.upstream = (host, int(port))
        self.received = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._open: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = self._listener.accept()
                server = socket.create_connection(self.upstream)
                self._open += [client, server]
                threading.Thread(
                    target=self._pump, args=(client, server, False), daemon=True
                ).start()
                threading.Thread(
                    target=self._pump, args=(server, client, True), daemon=True
                ).start()

    def _pump(self, src: socket.socket, dst: socket.socket, count: bool) -> None:
        buf = memoryview(bytearray(MiB))
        with contextlib.suppress(OSError):
            while n := src.recv_into(buf):
                dst.sendall(buf[:n])
                if count:
                    with self._lock:
                        self.received += n
            dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._listener.close()
        for s in self._open:
            s.close()


def presigned_bytes(store: Store, ctx: Ctx, timeout: float) -> int:
    """What S3 sends for one presigned-URL row, counted through a relay in
    an extra run that is not timed (a relay in a timed run would slow it)."""
    scheme, _, hostport = ctx.endpoint_url.partition("://")
    relay = CountingRelay(hostport.split("/")[0])
    try:
        url, _ = presign(store, ctx, f"{scheme}://127.0.0.1:{relay.port}")
        before = relay.received  # the probe's bytes are not the row's
        res = ffmpeg(url, _tls(ctx), time.monotonic(), timeout)
        if res["returncode"] != 0:
            raise RuntimeError(f"ffmpeg through the relay failed: {res['stderr']}")
        return relay.received - before
    finally:
        relay.close()


def _tls(ctx: Ctx) -> list[str]:
    if ctx.ca_bundle is None:
        return []
    return ["-ca_file", str(ctx.ca_bundle), "-tls_verify", "1"]


def one_row(
    name: str,
    ctx: Ctx,
    presigned: str,
    daemon: Callable[..., contextlib.AbstractContextManager[Any]],
) -> dict[str, Any]:
    timeout = 300 + ctx.size / 5e6
    row: dict[str, Any] = {"name": name, "error": None}
    if name == "presigned URL":
        os.sync()
        relay0 = pids_cpu(ctx.relay_pids)
        res = ffmpeg(presigned, _tls(ctx), time.monotonic(), timeout)
        row.update(res, s3_bytes=None, daemon_cpu_s=0.0)
    else:
        api = {"http_listen": "127.0.0.1:0"} if name == "s3feed url" else {}
        with daemon(ctx, api) as d:
            client = Client(str(d.socket))
            bytes0, cpu0 = received(d.metrics_port), _cpu(d.pid)
            os.sync()
            relay0 = pids_cpu(ctx.relay_pids)
            t0 = time.monotonic()
            if name == "s3feed url":
                listen = client.health()["HttpListen"]
                src = f"http://{listen}/v1/jobs/{ctx.job_id}/objects/{ctx.job_key}"
                res = ffmpeg(src, [], t0, timeout)
            else:
                env = {**os.environ, "S3FEED_SOCKET": str(d.socket)}
                fetched = subprocess.run(
                    [str(S3FEED), "fetch", ctx.job_id, ctx.job_key],
                    env=env,
                    capture_output=True,
                    timeout=timeout,
                    check=True,
                )
                row["fetch_s"] = time.monotonic() - t0
                res = ffmpeg(fetched.stdout.decode().strip(), [], t0, timeout)
            row.update(res, s3_bytes=received(d.metrics_port) - bytes0)
            row["daemon_cpu_s"] = _cpu(d.pid) - cpu0
    row["relay_cpu_s"] = pids_cpu(ctx.relay_pids) - relay0
    if row["returncode"] != 0 or row["first_frame_s"] is None:
        row["error"] = f"ffmpeg exit {row['returncode']}, no frame? {row['stderr']}"
    return row


def _cpu(pid: int) -> float:
    return proc_cpu(pid)


def suite(
    ctx: Ctx,
    store: Store,
    runs: int,
    daemon: Callable[..., contextlib.AbstractContextManager[Any]],
    log: Callable[[str], None],
) -> dict[str, Any]:
    """A checked warm-up of every row, then `runs` rounds in alternating order."""
    presigned, signed_with = presign(store, ctx)
    counted = presigned_bytes(store, ctx, 300 + ctx.size / 5e6)
    log(f"urls: a presigned-URL read made S3 send {counted} bytes (through a counting relay)")
    rows = []
    for r in range(0, runs + 1):
        order = ROWS if r % 2 == 0 else tuple(reversed(ROWS))
        for name in order:
            row = one_row(name, ctx, presigned, daemon)
            row["round"] = r
            if row["s3_bytes"] is None:
                row["s3_bytes"] = counted
            rows.append(row)
            log(
                f"urls round {r}/{runs} {name}: first frame {row['first_frame_s'] or 0:.2f} s,"
                f" total {row['total_s']:.2f} s, S3 {row['s3_bytes'] / MiB:.0f} MiB"
                f"{' FAILED: ' + row['error'] if row['error'] else ''}"
            )
    return {
        "size": ctx.size,
        "presigned_with": signed_with,
        "presigned_s3_bytes": counted,
        "rows": rows,
    }


def prepare(store: Store, ctx: Ctx, work: Path, size: int, part_size: int) -> Ctx:
    """The MP4 in the bucket; ctx pointing at it."""
    mp4 = media(work, size)
    key = f"bench/{mp4.name}"
    upload(store, key, mp4, part_size)
    return dataclasses.replace(ctx, key=key, job_key=mp4.name, ref=mp4, size=mp4.stat().st_size)


# ------------------------------------------------------------------ report


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _commit() -> str:
    out = subprocess.run(
        ["git", "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parent,
    )
    return out.stdout.strip() or "?"


def link_text(link: dict[str, Any] | None) -> str:
    """How S3 was reached: on loopback, or the remote profile's relay."""
    if not link or link.get("profile") != "remote":
        return "SeaweedFS on loopback"
    return (
        f"SeaweedFS through the remote profile's relay (localaws/relay.py: each connection"
        f" paced to {link['rate'] / 1e6:g} MB/s server to client, {link['delay'] * 1e3:g} ms"
        " per request and per new connection; its CPU reported apart)"
    )


def render(
    section: dict[str, Any],
    started: str,
    machine: dict[str, Any],
    link: dict[str, Any] | None = None,
) -> str:
    """The "URLs" section of the results: one table per protocol."""
    remote = bool(link and link.get("profile") == "remote")
    out = [
        "## URLs",
        "",
        f"Measured {started} by `bench/run --scenario urls` on {machine.get('cores')} cores"
        f" ({machine.get('cpu')}), shared with other work: figures are medians of the measured"
        " rounds (round 0, the warm-up, is left out), ratios paired per round against the"
        " presigned URL. What was measured: `ffmpeg -i SRC -map 0 -c copy -f null -` of an"
        f" MP4 with its index at the end (ffmpeg's default), from {link_text(link)}; first"
        " frame from `-progress` (20 ms steps), for fetch-then-ffmpeg counted from the fetch's"
        " start; S3 bytes from `s3feed_received_bytes_total` (s3feed rows) or counted"
        " through a counting TCP relay in one extra, untimed run (presigned URL). The s3feed"
        " rows read with a reader-role session; the presigned URL is signed with the same"
        " session where the server takes such a URL, else with the admin keys (each"
        " heading says which: SeaweedFS refuses session-signed URLs);"
        f" each s3feed row has a fresh daemon and an empty cache. s3feed at {_commit()}.",
        "",
    ]
    for proto, data in section.items():
        size = data["size"]
        rows = [r for r in data["rows"] if r["round"] > 0 and not r["error"]]
        rounds = sorted({r["round"] for r in rows})
        by = {(r["round"], r["name"]): r for r in rows}
        out += [
            f"### {proto}: {size / MiB:.0f} MiB, {len(rounds)} rounds,"
            f" presigned with {data['presigned_with']}",
            "",
            "| row | first frame s | vs presigned | total s | vs presigned"
            " | S3 bytes / size | ffmpeg CPU-s | daemon CPU-s |"
            + (" relay CPU-s |" if remote else ""),
            "|---|---|---|---|---|---|---|---|" + ("---|" if remote else ""),
        ]
        for name in ROWS:
            mine = [by[(r, name)] for r in rounds if (r, name) in by]
            pairs = [(by[(r, name)], by[(r, ROWS[1])]) for r in rounds if (r, name) in by]
            pairs = [(a, b) for a, b in pairs if (b["round"], ROWS[1]) in by]
            ff = _median([m["first_frame_s"] for m in mine])
            tot = _median([m["total_s"] for m in mine])
            ff_ratio = _median([a["first_frame_s"] / b["first_frame_s"] for a, b in pairs])
            tot_ratio = _median([a["total_s"] / b["total_s"] for a, b in pairs])
            s3 = _median([m["s3_bytes"] / size for m in mine])
            out.append(
                f"| {name} | {ff:.2f} | {ff_ratio:.2f} | {tot:.2f} | {tot_ratio:.2f} | {s3:.3f}"
                f" | {_median([m['ffmpeg_cpu_s'] for m in mine]):.2f}"
                f" | {_median([m['daemon_cpu_s'] for m in mine]):.2f} |"
                + (f" {_median([m.get('relay_cpu_s', 0.0) for m in mine]):.2f} |" if remote else "")
            )
        failed = [r for r in data["rows"] if r["error"]]
        if failed:
            out.append("")
            out += [f"- failed: {r['name']} round {r['round']}: {r['error'][:200]}" for r in failed]
        out.append("")
    out.append(
        "Targets (issue 25, remote profile): total (ffmpeg -c copy) through the URL at most"
        " 0.3x the presigned URL's."
        if remote
        else "Targets (issue 23): first frame within 1.2x the presigned URL's, total at most"
        " the presigned URL's, S3 bytes at most 1.05x the object's size."
    )
    return "\n".join(out) + "\n"


def section_of(text: str) -> str:
    """The "## URLs" section of a results text ("" when it has none)."""
    start = text.find("\n## URLs\n")
    if start < 0:
        return ""
    end = text.find("\n## ", start + 1)
    return text[start + 1 : end + 1 if end >= 0 else len(text)]


def upsert(results: Path, section: str) -> None:
    """Put `section` (starting "## URLs") in place of the file's own, or at its end."""
    text = results.read_text() if results.exists() else ""
    start = text.find("\n## URLs\n")
    if start < 0:
        results.write_text(text.rstrip("\n") + "\n\n" + section)
        return
    end = text.find("\n## ", start + 1)
    rest = "\n" + text[end + 1 :] if end >= 0 else ""
    results.write_text(text[: start + 1] + section + rest)
