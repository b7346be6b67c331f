"""A pacing TCP relay: S3 as if it were remote, on 127.0.0.1 (docs/design.md, Test environment).

    python -m localaws relay --upstream 127.0.0.1:8333 [--rate 90000000] [--delay 0.02]

Real S3 caps each connection (85-95 MB/s per GET in-region) and answers after
a round trip; SeaweedFS on loopback does neither. This kernel has no netem or
fq qdisc, toxiproxy is no package here, and trickle (LD_PRELOAD) reaches
neither the static Go peers nor single connections: so a relay in user space,
in front of any TCP endpoint (plain HTTP or TLS alike: it never reads the
bytes it passes).

- Pace: every connection's server->client bytes go through a token bucket of
  its own (`rate` bytes/s, `burst` bytes deep); the relay reads at most
  `slice` bytes from upstream at a time and stops reading while the bucket is
  in debt, so a reader sees the bytes arrive evenly, a slice at a time, as
  from a network (client->server bytes are not paced).
- Delay: a connection is usable one `delay` after it was accepted (the TCP
  handshake's round trip), and client->server bytes that start a request wait
  one `delay` more (`RequestGate`). A request starts where the client speaks
  after the server has (HTTP/1.1 without pipelining; a TLS handshake's turns
  and an `Expect: 100-continue` body each cost a delay too, as on a network).
  So a GET on a new connection sees its first byte after 2 delays, on a
  reused one after 1.

Design note (what runs where): one asyncio loop (uvloop when importable); per
accepted connection a `_Link` owns the client transport and its upstream one.
Upstream bytes are received into one reused slice buffer and written to the
client at once; the bucket's debt pauses upstream reading and a timer
resumes it. Memory is bounded by the transports' write-buffer limits
(`BUFFER` each way): a full client pauses upstream reading, a full upstream
(or a queue of held-back request bytes over `BUFFER`) pauses client reading.
A client's half-close reaches upstream after its held bytes; upstream's
end (or either side's loss) closes both, each after its buffered bytes. Every
connection keeps `ConnStats`: its own accounting of what it passed and when,
which tests assert on instead of wall time. As a process (`main`), the relay
prints its address on stdout when it listens and writes the stats as JSON
(`--stats`) when SIGTERM or SIGINT stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

KiB = 1 << 10
BUFFER = 1 << 20  # bytes a transport may hold before the other side is paused

# The shortest wait: uvloop's timers count whole milliseconds, and a shorter
# one fires at once (measured: 0.74 CPU-s spinning to relay one 87 MB/s
# connection for 3 s). The bucket's depth holds what accrues meanwhile.
TICK = 0.001

Clock = Callable[[], float]


@dataclass(frozen=True)
class Link:
    """What the relay makes of the path to upstream."""

    rate: float = 90e6  # server->client bytes/s, per connection
    delay: float = 0.02  # s: once per new connection, once per request
    burst: int = 256 * KiB  # bucket depth: timers fire late on a busy host
    slice: int = 64 * KiB  # most bytes read from upstream (and sent on) at once

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.delay < 0 or self.slice <= 0 or self.burst < self.slice:
            raise ValueError(f"bad link {self}: rate > 0, delay >= 0, burst >= slice > 0")


class TokenBucket:
    """`rate` tokens a second, at most `burst` held; `take` may overdraw, and
    the debt says how long the taker waits before taking again."""

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.stamp = now

    def refill(self, now: float) -> float:
        if now > self.stamp:
            self.tokens = min(float(self.burst), self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
        return self.tokens

    def take(self, n: int, now: float) -> float:
        """Spend `n` tokens; the seconds until the bucket is out of debt (0: none)."""
        self.tokens = self.refill(now) - n
        return self.wait(now)

    def wait(self, now: float) -> float:
        """Seconds from `now` until the bucket holds no debt."""
        tokens = self.refill(now)
        return 0.0 if tokens >= 0 else -tokens / self.rate


class RequestGate:
    """When client->server bytes may go upstream: one delay after the
    connection was opened, and one delay after the start of each request (the
    first client bytes after the server has sent some). Never earlier than
    bytes the client sent before them."""

    def __init__(self, delay: float, opened: float) -> None:
        self.delay = delay
        self.ready = opened + delay  # the handshake's round trip
        self.not_before = self.ready
        self.turned = True  # the next client bytes start a request
        self.requests = 0

    def server_sent(self) -> None:
        self.turned = True

    def client_sent(self, now: float) -> float:
        """Client bytes arrived at `now`: the time they may be forwarded."""
        if self.turned:
            self.turned = False
            self.requests += 1
            self.not_before = max(self.not_before, max(now, self.ready) + self.delay)
        return self.not_before


@dataclass
class ConnStats:
    """One connection's accounting, on the relay's clock."""

    opened: float
    bytes_down: int = 0  # server -> client
    bytes_up: int = 0
    requests: int = 0  # request starts the gate delayed
    pauses: int = 0  # times the bucket's debt stopped upstream reading
    paced_s: float = 0.0  # the waits the bucket asked for, summed
    first_up: float | None = None  # the first client bytes went upstream
    first_down: float | None = None
    last_down: float | None = None
    # The most bytes sent ahead of burst + rate x (time since the first byte):
    # never more than one slice when the pace holds.
    max_ahead: float = float("-inf")
    closed: bool = False

    def sent(self, n: int, now: float, link: Link) -> None:
        if self.first_down is None:
            self.first_down = now
        self.bytes_down += n
        self.last_down = now
        allowed = link.burst + link.rate * (now - self.first_down)
        self.max_ahead = max(self.max_ahead, self.bytes_down - allowed)


class _Link:
    """A client connection and its upstream (the module's design note)."""

    def __init__(self, relay: Relay, client: asyncio.Transport) -> None:
        self.relay = relay
        self.link = relay.link
        self.loop = asyncio.get_running_loop()
        now = relay.clock()
        self.stats = ConnStats(now)
        relay.connections.append(self.stats)
        self.client = client
        self.upstream: asyncio.Transport | None = None
        self.bucket = TokenBucket(self.link.rate, self.link.burst, now)
        self.gate = RequestGate(self.link.delay, now)
        self.held: list[bytes] = []  # client bytes waiting for the gate
        self.held_bytes = 0
        self.flush_timer: asyncio.TimerHandle | None = None
        self.resume_timer: asyncio.TimerHandle | None = None
        self.client_full = False  # the client's transport is over BUFFER
        self.upstream_full = False
        self.client_eof = False
        self.buf = bytearray(self.link.slice)
        client.set_write_buffer_limits(high=BUFFER)
        self.connecting = self.loop.create_task(self._connect())

    async def _connect(self) -> None:
        host, port = self.relay.upstream
        try:
            transport, _ = await self.loop.create_connection(
                lambda: _UpstreamProtocol(self), host, port
            )
        except OSError:
            self.close()
            return
        if self.stats.closed:  # the client went away meanwhile
            transport.close()
            return
        transport.set_write_buffer_limits(high=BUFFER)
        self.upstream = transport
        self._flush()

    # -- client -> upstream: the gate's delays

    def from_client(self, data: bytes) -> None:
        self.stats.bytes_up += len(data)
        self.gate.client_sent(self.relay.clock())
        self.stats.requests = self.gate.requests
        self.held.append(data)
        self.held_bytes += len(data)
        if self.held_bytes > BUFFER:
            self.client.pause_reading()
        if self.flush_timer is None:  # else the pending flush takes these too
            self._flush()

    def _flush(self) -> None:
        self.flush_timer = None
        if self.upstream is None or self.upstream.is_closing():
            return
        wait = self.gate.not_before - self.relay.clock()
        if wait > 0 and self.held:
            self.flush_timer = self.loop.call_later(wait, self._flush)
            return
        if self.held:
            if self.stats.first_up is None:
                self.stats.first_up = self.relay.clock()
            self.upstream.writelines(self.held)
            self.held.clear()
            self.held_bytes = 0
            if not self.upstream_full and not self.client_eof:
                self.client.resume_reading()
        if self.client_eof and self.upstream.can_write_eof():
            self.upstream.write_eof()  # the client's half-close, once its bytes went

    # -- upstream -> client: the bucket's pace

    def from_upstream(self, n: int) -> None:
        now = self.relay.clock()
        self.client.write(memoryview(self.buf)[:n])
        if self.client.get_write_buffer_size():
            # The transport may keep a view of what it could not send yet.
            self.buf = bytearray(self.link.slice)
        self.stats.sent(n, now, self.link)
        self.gate.server_sent()
        wait = self.bucket.take(n, now)
        if wait > 0:
            self.stats.pauses += 1
            self.stats.paced_s += wait
            self._pause_upstream()
            self.resume_timer = self.loop.call_later(max(wait, TICK), self._paced)

    def _paced(self) -> None:
        # A timer may fire a little early (millisecond timers): wait out the rest.
        wait = self.bucket.wait(self.relay.clock())
        if wait > 0:
            self.resume_timer = self.loop.call_later(max(wait, TICK), self._paced)
            return
        self.resume_timer = None
        self._resume_upstream()

    def _pause_upstream(self) -> None:
        if self.upstream is not None and not self.upstream.is_closing():
            self.upstream.pause_reading()

    def _resume_upstream(self) -> None:
        up = self.upstream
        if self.resume_timer is None and not self.client_full and up and not up.is_closing():
            up.resume_reading()

    # -- flow control and closing

    def client_paused(self, full: bool) -> None:
        self.client_full = full
        if full:
            self._pause_upstream()
        else:
            self._resume_upstream()

    def upstream_paused(self, full: bool) -> None:
        self.upstream_full = full
        if full:
            self.client.pause_reading()
        elif self.held_bytes <= BUFFER:
            self.client.resume_reading()

    def client_done(self) -> None:
        """The client half-closed: upstream is told once the held bytes went;
        the answer still comes back."""
        self.client_eof = True
        if self.flush_timer is None:
            self._flush()

    def close(self) -> None:
        for timer in (self.flush_timer, self.resume_timer):
            if timer is not None:
                timer.cancel()
        self.resume_timer = self.flush_timer = None
        if self.upstream is not None:
            self.upstream.close()  # after what it holds
        else:
            self.connecting.cancel()
        self.client.close()
        self.stats.closed = True
        self.relay.live.discard(self)


class _ClientProtocol(asyncio.Protocol):
    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.link: _Link | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.link = _Link(self.relay, cast(asyncio.Transport, transport))  # uvloop's is no subclass
        self.relay.live.add(self.link)

    def data_received(self, data: bytes) -> None:
        assert self.link is not None
        self.link.from_client(data)

    def eof_received(self) -> bool:
        if self.link is not None:
            self.link.client_done()
        return True  # keep the transport open for the answer

    def connection_lost(self, exc: Exception | None) -> None:
        if self.link is not None:
            self.link.close()

    def pause_writing(self) -> None:
        if self.link is not None:
            self.link.client_paused(True)

    def resume_writing(self) -> None:
        if self.link is not None:
            self.link.client_paused(False)


class _UpstreamProtocol(asyncio.BufferedProtocol):
    def __init__(self, link: _Link) -> None:
        self.link = link

    def get_buffer(self, sizehint: int) -> memoryview:
        return memoryview(self.link.buf)  # sent on (or replaced) before the next read

    def buffer_updated(self, nbytes: int) -> None:
        self.link.from_upstream(nbytes)

    def eof_received(self) -> bool:
        self.link.close()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.link.close()

    def pause_writing(self) -> None:
        self.link.upstream_paused(True)

    def resume_writing(self) -> None:
        self.link.upstream_paused(False)


class Relay:
    """Listens on `host:port` and relays every connection to `upstream`."""

    def __init__(self, upstream: tuple[str, int], link: Link, clock: Clock = time.monotonic):
        self.upstream = upstream
        self.link = link
        self.clock = clock
        self.connections: list[ConnStats] = []
        self.live: set[_Link] = set()
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _ClientProtocol(self), host, port)
        self.port = int(self.server.sockets[0].getsockname()[1])
        return self.port

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for link in list(self.live):
            link.close()
        if self.server is not None:
            await self.server.wait_closed()

    def totals(self) -> dict[str, Any]:
        """The whole run's accounting (what `--stats` writes)."""
        conns = self.connections
        return {
            "link": dataclasses.asdict(self.link),
            "connections": len(conns),
            "requests": sum(c.requests for c in conns),
            "bytes_down": sum(c.bytes_down for c in conns),
            "bytes_up": sum(c.bytes_up for c in conns),
            "pauses": sum(c.pauses for c in conns),
            "max_ahead": max((c.max_ahead for c in conns if c.bytes_down), default=0.0),
        }


def parse_upstream(text: str) -> tuple[str, int]:
    """`host:port` or an URL with a port (`http://127.0.0.1:8333`)."""
    if "://" in text:
        parts = urlsplit(text)
        if parts.hostname is None or parts.port is None:
            raise ValueError(f"{text!r}: want an URL with host and port")
        return parts.hostname, parts.port
    host, sep, port = text.rpartition(":")
    if not sep:
        raise ValueError(f"{text!r}: want host:port")
    return host, int(port)


# ---------------------------------------------------------------- in a thread (tests)


@contextlib.contextmanager
def in_thread(upstream: str, link: Link) -> Iterator[Relay]:
    """A relay on its own loop in a background thread, for synchronous tests:
    its `connections` are readable once the caller's transfer is done."""
    relay = Relay(parse_upstream(upstream), link)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="relay", daemon=True)
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(relay.start(), loop).result(10)
        yield relay
    finally:
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(relay.close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


# ---------------------------------------------------------------- as a process (bench)


@dataclass
class RelayProcess:
    """A relay started by `spawn`: its pid (for its CPU) and its address."""

    process: subprocess.Popen[bytes]
    url: str  # the upstream URL with the relay's port
    stats_path: Path
    stats: dict[str, Any] = field(default_factory=dict)  # after it stopped

    @property
    def pid(self) -> int:
        return self.process.pid


def relay_url(upstream_url: str, port: int) -> str:
    parts = urlsplit(upstream_url)
    return f"{parts.scheme}://127.0.0.1:{port}"


@contextlib.contextmanager
def spawn(upstream_url: str, link: Link, work: Path) -> Iterator[RelayProcess]:
    """`python -m localaws relay` in front of `upstream_url` for the `with`
    block; its stats read back when it has stopped."""
    work.mkdir(parents=True, exist_ok=True)
    stats = work / f"relay-{os.getpid()}-{time.monotonic_ns()}.json"
    cmd = [sys.executable, "-m", "localaws", "relay", "--upstream", upstream_url]
    cmd += ["--rate", str(link.rate), "--delay", str(link.delay)]
    cmd += ["--burst", str(link.burst), "--slice", str(link.slice), "--stats", str(stats)]
    root = Path(__file__).resolve().parent.parent  # localaws is imported from the repo root
    proc = subprocess.Popen(
        cmd, cwd=root, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=None
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()  # "listening on 127.0.0.1:PORT"
        if not line.startswith("listening on "):
            raise RuntimeError(f"relay did not start: {line!r} (exit {proc.poll()})")
        port = int(line.rsplit(":", 1)[1])
        handle = RelayProcess(proc, relay_url(upstream_url, port), stats)
        yield handle
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    with contextlib.suppress(OSError, ValueError):
        handle.stats = json.loads(stats.read_text())
        stats.unlink()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m localaws relay", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--upstream", required=True, help="host:port or URL to relay to")
    p.add_argument("--listen", default="127.0.0.1:0", help="host:port (default 127.0.0.1:0)")
    p.add_argument("--rate", type=float, default=Link.rate, help="bytes/s per connection")
    p.add_argument("--delay", type=float, default=Link.delay, help="seconds per request")
    p.add_argument("--burst", type=int, default=Link.burst, help="bucket depth, bytes")
    p.add_argument("--slice", type=int, default=Link.slice, help="bytes read at once")
    p.add_argument("--stats", type=Path, help="write the accounting here as JSON on exit")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    link = Link(args.rate, args.delay, args.burst, args.slice)
    relay = Relay(parse_upstream(args.upstream), link)
    host, port = parse_upstream(args.listen)
    try:
        import uvloop

        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    async def serve() -> None:
        bound = await relay.start(host, port)
        print(f"listening on {host}:{bound}", flush=True)
        await stop.wait()
        await relay.close()

    try:
        loop.run_until_complete(serve())
    finally:
        loop.close()
    if args.stats is not None:
        tmp = args.stats.with_suffix(".tmp")
        tmp.write_text(json.dumps(relay.totals()))
        tmp.replace(args.stats)
    return 0
