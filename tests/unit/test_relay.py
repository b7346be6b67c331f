"""localaws/relay.py: the pacing relay's bucket, its request gate and its
accounting on an injected clock; then the relay itself between two loopback
sockets, with a rate and delay that never make it wait (what it does to a
real GET through SeaweedFS is tests/integration/test_relay_pacing.py)."""

from __future__ import annotations

import asyncio

import pytest

from localaws.relay import ConnStats, Link, Relay, RequestGate, TokenBucket, parse_upstream

MB = 1_000_000


def test_a_full_bucket_lets_its_depth_through_without_a_wait() -> None:
    bucket = TokenBucket(rate=10 * MB, burst=256_000, now=100.0)
    assert bucket.take(200_000, now=100.0) == 0.0
    assert bucket.take(56_000, now=100.0) == 0.0  # exactly empty: no debt


def test_debt_is_paid_at_the_rate() -> None:
    bucket = TokenBucket(rate=10 * MB, burst=100_000, now=0.0)
    assert bucket.take(150_000, now=0.0) == pytest.approx(0.005)  # 50 kB over, at 10 MB/s
    assert bucket.wait(now=0.002) == pytest.approx(0.003)
    assert bucket.wait(now=0.005) == 0.0
    assert bucket.take(10_000, now=0.006) == 0.0  # 10 kB earned since


def test_idle_time_refills_no_more_than_the_depth() -> None:
    bucket = TokenBucket(rate=10 * MB, burst=100_000, now=0.0)
    bucket.take(100_000, now=0.0)
    assert bucket.refill(now=60.0) == 100_000  # a minute idle: one burst, not 600 MB
    assert bucket.take(300_000, now=60.0) == pytest.approx(0.02)


def test_a_long_transfer_averages_the_rate() -> None:
    """Slices taken whenever the bucket is out of debt, on a clock that moves
    exactly by the waits it asks for: 100 MB take (100 MB - depth) / rate."""
    rate, depth, piece = 20 * MB, 256 * 1024, 64 * 1024
    bucket = TokenBucket(rate, depth, now=0.0)
    now, sent = 0.0, 0
    while sent < 100 * MB:
        now += bucket.take(piece, now)
        sent += piece
    assert now == pytest.approx((sent - depth) / rate, rel=1e-6)


def test_a_new_connection_waits_a_delay_and_its_first_request_another() -> None:
    gate = RequestGate(delay=0.02, opened=10.0)
    assert gate.client_sent(10.001) == pytest.approx(10.04)  # handshake + request
    assert gate.client_sent(10.002) == pytest.approx(10.04)  # the same request's bytes
    assert gate.requests == 1


def test_the_next_request_on_the_connection_waits_one_delay() -> None:
    gate = RequestGate(delay=0.02, opened=0.0)
    gate.client_sent(0.0)
    gate.server_sent()  # the answer
    assert gate.client_sent(1.0) == pytest.approx(1.02)
    assert gate.client_sent(1.01) == pytest.approx(1.02)  # body of that request: no more
    assert gate.requests == 2


def test_a_request_is_never_sent_before_bytes_the_client_sent_earlier() -> None:
    gate = RequestGate(delay=0.05, opened=0.0)
    first = gate.client_sent(0.0)  # held until 0.1
    gate.server_sent()  # e.g. a TLS server hello
    assert gate.client_sent(0.001) >= first


def test_accounting_says_how_far_ahead_of_the_pace_bytes_went() -> None:
    link = Link(rate=1 * MB, delay=0.0, burst=100_000, slice=50_000)
    stats = ConnStats(opened=0.0)
    stats.sent(50_000, 1.0, link)
    stats.sent(50_000, 1.0, link)
    assert stats.max_ahead == 0  # exactly the depth
    stats.sent(50_000, 1.01, link)  # 10 kB earned, 50 kB sent
    assert stats.max_ahead == pytest.approx(40_000)
    assert (stats.bytes_down, stats.first_down, stats.last_down) == (150_000, 1.0, 1.01)


@pytest.mark.parametrize(
    "kwargs", [{"rate": 0}, {"delay": -1}, {"slice": 0}, {"burst": 1000, "slice": 2000}]
)
def test_a_link_that_cannot_pace_is_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Link(**kwargs)  # type: ignore[arg-type]


def test_upstream_is_host_port_or_an_url() -> None:
    assert parse_upstream("127.0.0.1:8333") == ("127.0.0.1", 8333)
    assert parse_upstream("https://127.0.0.1:8443") == ("127.0.0.1", 8443)
    with pytest.raises(ValueError):
        parse_upstream("http://127.0.0.1")


async def test_bytes_pass_both_ways_unchanged_and_requests_are_counted() -> None:
    """An upstream that answers each line with 300 kB derived from it; two
    requests on one connection through a relay that never has to wait."""

    served = asyncio.Event()

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            writer.write(line.strip() * (300_000 // len(line.strip())))
            await writer.drain()
        writer.close()
        await writer.wait_closed()
        served.set()

    upstream = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = upstream.sockets[0].getsockname()[1]
    relay = Relay(("127.0.0.1", port), Link(rate=1e12, delay=0.0))
    relay_port = await relay.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", relay_port)
        for word in (b"abc\n", b"wxyz\n"):
            writer.write(word)
            body = await reader.readexactly(300_000 // (len(word) - 1) * (len(word) - 1))
            assert body == word.strip() * (300_000 // (len(word) - 1))
        writer.close()
        await writer.wait_closed()
    finally:
        await relay.close()
        upstream.close()
        await upstream.wait_closed()
        await asyncio.wait_for(served.wait(), 30)  # hang guard: the handler closed its end
    [conn] = relay.connections
    assert (conn.requests, conn.bytes_up) == (2, 9)
    assert conn.bytes_down == 300_000 + 300_000 // 4 * 4
    assert conn.pauses == 0


async def test_a_client_that_half_closes_still_gets_its_answer() -> None:
    """The upstream answers only once it has read the request to its end."""

    served = asyncio.Event()

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.read()  # to EOF: the client's half-close came through
        writer.write(b"got " + request)
        await writer.drain()
        writer.close()
        await writer.wait_closed()
        served.set()

    upstream = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = upstream.sockets[0].getsockname()[1]
    relay = Relay(("127.0.0.1", port), Link(rate=1e12, delay=0.0))
    relay_port = await relay.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", relay_port)
        writer.write(b"all of it")
        writer.write_eof()
        assert await reader.read() == b"got all of it"
        writer.close()
        await writer.wait_closed()
    finally:
        await relay.close()
        upstream.close()
        await upstream.wait_closed()
        await asyncio.wait_for(served.wait(), 30)  # hang guard: the handler closed its end
