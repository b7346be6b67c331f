"""A stream's status is its first S3 request's (docs/design.md, Socket API:
streams): on the socket and on the URL listener, a first GET that fails for
good answers that error's status and document before any byte, and a
failure after the first bytes still cuts the body short."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from harness import Answer, Harness

from s3feed.transfer.config import MiB
from s3feed.transfer.errors import AccessDenied, TransientError

DATA = random.Random(12).randbytes(3 * MiB + 5)
KEY = "show/clip.ts"
PATH = f"/v1/jobs/job-1/objects/{KEY}"


@pytest.fixture
def api_settings() -> dict[str, Any]:
    return {"http_listen": "127.0.0.1:0"}


@pytest.fixture
async def tcp(harness: Harness) -> AsyncIterator[aiohttp.ClientSession]:
    listen = harness.daemon.http_listen
    assert listen is not None
    async with aiohttp.ClientSession(base_url=f"http://{listen}") as session:
        yield session


async def instant(seconds: float) -> None:
    await asyncio.sleep(0)


async def failing_from(h: Harness, offset: int, error: Callable[[], Exception]) -> None:
    """A job whose object's GETs fail with `error()` from byte `offset` on
    (its HEAD answers); the engine's backoff pauses take no time (the pauses
    themselves are tests/unit/test_retry.py's)."""
    store = h.store()
    store.put(f"sources/{KEY}", DATA)

    async def gate(key: str, pos: int) -> None:
        if pos >= offset:
            raise error()

    store.gate = gate
    h.daemon.engine.sleep = instant
    assert (await h.create_job()).status == 201


async def get(h: Harness, transport: str, tcp: aiohttp.ClientSession) -> Answer:
    session = h.session if transport == "socket" else tcp
    async with session.get(PATH) as resp:
        answer = Answer(resp.status, resp.headers, await resp.read())
    h.check("GET", PATH, answer)
    return answer


def denied() -> Exception:
    return AccessDenied(f"Access Denied: s3://acme-media/sources/{KEY}")


def throttled() -> Exception:
    return TransientError("S3 is throttling: SlowDown", "throttled")


@pytest.mark.parametrize("transport", ["socket", "tcp"])
@pytest.mark.parametrize(
    ("error", "status", "code"),
    [(denied, 403, "AccessDenied"), (throttled, 503, "S3Unavailable")],
)
async def test_a_first_get_that_fails_for_good_is_the_answer(
    harness: Harness,
    tcp: aiohttp.ClientSession,
    transport: str,
    error: Callable[[], Exception],
    status: int,
    code: str,
) -> None:
    await failing_from(harness, 0, error)
    answer = await get(harness, transport, tcp)
    assert (answer.status, answer.code) == (status, code), answer.body
    assert answer.headers["Content-Type"] == "application/json"
    assert "ETag" not in answer.headers, "no header of the object went out"
    if code == "S3Unavailable":
        assert "retries exhausted; last cause: throttled" in answer.json["Error"]["Message"]
    job = (await harness.request("GET", "/v1/jobs/job-1")).json
    stream = job["Transfers"][-1]
    assert (stream["Mode"], stream["State"], stream["Error"]["Code"]) == ("stream", "failed", code)


@pytest.mark.parametrize("transport", ["socket", "tcp"])
async def test_a_failure_after_the_first_bytes_cuts_the_body_short(
    harness: Harness, tcp: aiohttp.ClientSession, transport: str
) -> None:
    await failing_from(harness, MiB, denied)  # the first range flows, the second is refused
    session = harness.session if transport == "socket" else tcp
    got = bytearray()
    async with session.get(PATH) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Length"] == str(len(DATA))
        with pytest.raises(aiohttp.ClientPayloadError):
            async for chunk in resp.content.iter_any():
                got += chunk
    assert 0 < len(got) < len(DATA) and got == DATA[: len(got)]
    job = (await harness.request("GET", "/v1/jobs/job-1")).json
    assert job["Transfers"][-1]["Error"]["Code"] == "AccessDenied"
