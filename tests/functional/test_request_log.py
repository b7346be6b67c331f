"""One `"event": "request"` record and one count per API request, on the socket
and the URL listener; malformed requests on one line, without a traceback
(docs/design.md, Logs and Metrics). The whole daemon in-process, fake S3/STS.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import orjson
import pytest
from harness import Harness

from s3feed.daemon.logs import JsonFormatter

MALFORMED = b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header\x01: y\r\n\r\n"


@pytest.fixture
def api_settings() -> dict[str, Any]:
    return {"http_listen": "127.0.0.1:0"}


@pytest.fixture
def lines(caplog: pytest.LogCaptureFixture) -> Iterator[list[dict[str, Any]]]:
    """Every record the daemon writes, as its JSON lines (re-read on each iteration)."""
    caplog.set_level(logging.INFO)
    formatter = JsonFormatter()

    class Lines(list[dict[str, Any]]):
        def __iter__(self) -> Iterator[dict[str, Any]]:
            self[:] = [orjson.loads(formatter.format(r)) for r in caplog.records]
            return super().__iter__()

    yield Lines()


def requests(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [line for line in lines if line.get("event") == "request"]


def count(harness: Harness, route: str, code: int) -> float:
    value = harness.daemon.metrics.registry.get_sample_value(
        "s3feed_api_requests_total", {"route": route, "code": str(code)}
    )
    return value or 0.0


async def raw(socket: str, data: bytes) -> bytes:
    """Send `data` on a fresh connection to the API socket; -> all it answered."""
    reader, writer = await asyncio.open_unix_connection(socket)
    try:
        writer.write(data)
        async with asyncio.timeout(30):
            return await reader.read()
    finally:
        writer.close()


async def test_each_request_on_the_socket_is_one_record_and_one_count(
    harness: Harness, lines: list[dict[str, Any]]
) -> None:
    assert (await harness.request("GET", "/healthz")).status == 200
    assert (await harness.request("GET", "/v1/jobs/nope")).status == 404
    assert (await harness.request("GET", "/v1/jobs/nope/objects/a/b.ts")).status == 404
    assert (await harness.request("PATCH", "/v1/jobs")).status == 405
    got = [
        (r["method"], r["path"], r["status"], r["route"], r["uid"], r["listener"])
        for r in requests(lines)
    ]
    uid = os.getuid()
    assert got == [
        ("GET", "/healthz", 200, "/healthz", uid, "socket"),
        ("GET", "/v1/jobs/nope", 404, "/v1/jobs/{JobId}", uid, "socket"),
        (
            "GET",
            "/v1/jobs/nope/objects/a/b.ts",
            404,
            "/v1/jobs/{JobId}/objects/{Key}",
            uid,
            "socket",
        ),
        ("PATCH", "/v1/jobs", 405, "unmatched", uid, "socket"),
    ]
    assert all(r["level"] == "info" and r["seconds"] >= 0 for r in requests(lines))
    # The metric's route is the template, never the raw path.
    assert count(harness, "/v1/jobs/{JobId}/objects/{Key}", 404) == 1
    assert count(harness, "/healthz", 200) == 1
    assert count(harness, "unmatched", 405) == 1
    text = (await harness.request("GET", "/metrics")).body.decode()
    assert "nope" not in text and "b.ts" not in text


async def test_url_listener_requests_are_recorded_too(
    harness: Harness, lines: list[dict[str, Any]]
) -> None:
    harness.store().put("sources/a.ts", b"0123456789")
    assert (await harness.create_job()).status == 201
    async with (
        aiohttp.ClientSession(base_url=f"http://{harness.daemon.http_listen}") as s,
        s.get("/v1/jobs/job-1/objects/a.ts") as r,
    ):
        assert await r.read() == b"0123456789"
    async with (
        aiohttp.ClientSession(base_url=f"http://{harness.daemon.http_listen}") as s,
        s.get("/healthz") as r,
    ):
        assert r.status == 404  # not served there
    url = [r for r in requests(lines) if r["listener"] == "url"]
    assert [(r["method"], r["status"], r["route"], r["uid"]) for r in url] == [
        ("GET", 200, "/v1/jobs/{JobId}/objects/{Key}", os.getuid()),
        ("GET", 404, "unmatched", os.getuid()),
    ]


async def test_a_malformed_request_is_one_line_without_a_traceback(
    harness: Harness, lines: list[dict[str, Any]]
) -> None:
    answer = await raw(harness.socket, MALFORMED)
    assert answer.split(b"\r\n", 1)[0].endswith(b" 400 Bad Request")
    async with asyncio.timeout(30):
        while not count(harness, "malformed", 400):
            await asyncio.sleep(0.01)  # counted after the answer went out, on this loop
    written = list(lines)
    assert [r for r in written if r["level"] in ("error", "warning")] == []
    assert not [r for r in written if "exc" in r]
    (record,) = requests(written)
    assert (record["route"], record["status"], record["uid"]) == ("malformed", 400, os.getuid())
    assert record["error"].startswith("400: ") and "\n" not in record["error"]
    assert len(orjson.dumps(record)) < 400


async def test_a_flood_of_malformed_requests_is_summarised(
    harness: Harness, lines: list[dict[str, Any]]
) -> None:
    for _ in range(15):
        await raw(harness.socket, MALFORMED)
    async with asyncio.timeout(30):
        while count(harness, "malformed", 400) < 15:
            await asyncio.sleep(0.01)
    assert len(requests(lines)) == 10  # MALFORMED_BURST within a minute; the metric has all


@pytest.mark.parametrize("api_settings", [{"access_log": False}])
async def test_access_log_false_writes_no_record_and_still_counts(
    harness: Harness, lines: list[dict[str, Any]]
) -> None:
    assert (await harness.request("GET", "/healthz")).status == 200
    await raw(harness.socket, MALFORMED)
    async with asyncio.timeout(30):
        while not count(harness, "malformed", 400):
            await asyncio.sleep(0.01)
    assert requests(lines) == []
    assert count(harness, "/healthz", 200) == 1


@pytest.mark.parametrize("api_settings", [{}])
async def test_answers_are_counted_by_route_and_code(harness: Harness) -> None:
    """A refusal (409 here; 429, 403, 507 alike) moves the metric under its code."""
    harness.store().put("sources/a.ts", b"x")
    assert (await harness.create_job()).status == 201
    again = await harness.create_job()
    assert again.status == 409
    assert count(harness, "/v1/jobs", 409) == 1
    assert count(harness, "/v1/jobs", 201) == 1


async def test_the_daemon_observes_a_block_of_its_loop(harness: Harness) -> None:
    """The lag task runs in the daemon: a call that holds the loop 0.6 s is
    seen as a late timer. Real time passing is the behaviour here (the loop
    blocked); tests/unit/test_looplag.py checks the measurement on a fake clock."""
    registry = harness.daemon.metrics.registry

    def late(over: float) -> float:
        total = registry.get_sample_value("s3feed_event_loop_lag_seconds_count") or 0.0
        within = registry.get_sample_value(
            "s3feed_event_loop_lag_seconds_bucket", {"le": str(over)}
        )
        return total - (within or 0.0)

    before = late(0.05)
    time.sleep(0.6)  # blocking the loop is what this test does
    # The timer fell due 0-0.5 s into the block: it runs 0.1-0.6 s late.
    async with asyncio.timeout(30):  # hang guard: the next wake is at most 0.5 s away
        while late(0.05) == before:
            await asyncio.sleep(0.05)
