"""Hostile clients on the socket: random bodies and bytes, huge headers, clients
that trickle their request. Every answer is documented (openapi.yaml, via the
harness) and nobody else waits for the bad client."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any
from urllib.parse import urlencode

import orjson
import pytest
from harness import ACME_ROLE, ACME_URI, Harness
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

SETTINGS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=16),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=10,
)
BODIES = st.one_of(
    JSON,
    st.fixed_dictionaries(
        {},
        optional={
            "JobId": st.one_of(st.from_regex(r"[A-Za-z0-9._-]{1,12}", fullmatch=True), JSON),
            "TenantName": st.one_of(st.sampled_from(["acme-films", "a", "x" * 1300]), JSON),
            "Source": st.one_of(
                JSON,
                st.fixed_dictionaries(
                    {},
                    optional={
                        "Provider": st.one_of(st.just("AmazonS3"), JSON),
                        "UriPath": st.one_of(st.just(ACME_URI), st.text(max_size=40), JSON),
                        "RoleArnToAssume": st.one_of(st.just(ACME_ROLE), JSON),
                        "RoleSessionDurationInSeconds": st.one_of(st.integers(0, 50000), JSON),
                    },
                ),
            ),
        },
    ),
)


@SETTINGS
@given(body=BODIES)
async def test_random_job_bodies_get_documented_answers(harness: Harness, body: Any) -> None:
    answer = await harness.request(
        "POST", "/v1/jobs", raw=orjson.dumps(body), headers={"Content-Type": "application/json"}
    )  # harness.request checks the status and body against openapi.yaml
    assert answer.status in (201, 400, 409), answer.body
    if answer.status == 201:
        assert (await harness.request("DELETE", f"/v1/jobs/{body['JobId']}")).status == 204


@SETTINGS
@given(key=st.one_of(st.text(max_size=40), JSON), prefix=st.text(max_size=20))
async def test_random_keys_and_prefixes_get_documented_answers(
    harness: Harness, key: Any, prefix: str
) -> None:
    if (await harness.request("GET", "/v1/jobs/k")).status != 200:
        await harness.create_job("k")
    fetch = await harness.request("POST", "/v1/jobs/k/fetches", {"Key": key})
    assert fetch.status in (400, 404), fetch.body  # nothing exists in this bucket
    listed = await harness.request("GET", f"/v1/jobs/k/objects?{urlencode({'Prefix': prefix})}")
    assert listed.status in (200, 400), listed.body
    if listed.status == 400:
        assert listed.code == "InvalidKey"


async def _raw(socket: str, data: bytes, timeout: float = 10) -> bytes:
    reader, writer = await asyncio.open_unix_connection(socket)
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(timeout):
            return await reader.read(65536)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


@SETTINGS
@given(data=st.binary(min_size=1, max_size=2048))
async def test_random_bytes_on_the_socket(harness: Harness, data: bytes) -> None:
    try:
        answer = await _raw(harness.socket, data + b"\r\n\r\n", timeout=0.5)
    except TimeoutError:
        answer = b""  # still waiting for a request line (leading CRLFs are skipped)
    assert answer == b"" or answer.startswith((b"HTTP/1.1 4", b"HTTP/1.0 4")), answer[:80]
    assert (await harness.request("GET", "/healthz")).status == 200


async def test_oversized_headers_are_refused_and_the_daemon_keeps_serving(
    harness: Harness,
) -> None:
    for head in (
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n",
        b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(5000)) + b"\r\n",
    ):
        answer = await _raw(harness.socket, head)
        assert answer == b"" or answer.split(b" ", 2)[1] in (b"400", b"413", b"431"), answer[:80]
    assert (await harness.request("GET", "/healthz")).status == 200


# The slow clients are slow on purpose and only the test's steps move them: no
# head timeout may close them meanwhile, however busy the machine.
@pytest.mark.parametrize("api_settings", [{"header_timeout": 600.0}])
async def test_clients_trickling_requests_do_not_block_others(harness: Harness) -> None:
    """Twenty clients send their request a byte at a time, one byte per step;
    between steps another client creates a job and lists the jobs, and is
    answered while every slow request is still short of its end. A daemon that
    waited for a slow client would never answer: the slow ones move only after."""
    request = orjson.dumps(
        {
            "JobId": "slow",
            "TenantName": "acme-films",
            "Source": {"Provider": "AmazonS3", "UriPath": ACME_URI, "RoleArnToAssume": ACME_ROLE},
        }
    )
    head = b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    raw = head + b"Content-Length: %d\r\n\r\n" % len(request) + request
    steps = 10
    slow = [await asyncio.open_unix_connection(harness.socket) for _ in range(20)]
    try:
        for i in range(steps):
            for _, writer in slow:
                writer.write(raw[i : i + 1])
                await writer.drain()
            async with asyncio.timeout(60):  # a hang guard: held up, it would never end
                assert (await harness.create_job(f"fast-{i}")).status == 201
                assert (await harness.request("GET", "/v1/jobs")).status == 200
        # The slow requests were whole all along, only slow: each is answered now.
        for _, writer in slow:
            writer.write(raw[steps:])
            await writer.drain()
        statuses = []
        async with asyncio.timeout(60):
            for reader, _ in slow:
                statuses.append(int((await reader.readuntil(b"\r\n\r\n")).split()[1]))
        assert sorted(statuses) == [201] + [409] * 19  # one made the job; JobExists for the rest
    finally:
        for _, writer in slow:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
