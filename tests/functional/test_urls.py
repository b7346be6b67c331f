"""URLs for encoders: the loopback listener (`[api] http_listen`), in-process,
fake S3 behind (docs/design.md, URLs for encoders).

The caller over TCP is the uid the kernel names as the owner of the client's
socket; the other-uid tests start their client under setpriv (root in CI).
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from harness import Harness, request_as

from s3feed.auth.clock import SystemClock
from s3feed.daemon.config import ApiConfig, Config, ConfigError, MetricsConfig
from s3feed.daemon.service import Daemon
from s3feed.transfer.config import CacheConfig, MiB
from tests.fakes.sts import FakeSts

DATA = random.Random(11).randbytes(2 * MiB + 5)
ENCODER_UID = 61002
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="setpriv to another uid needs root")


@pytest.fixture
def api_settings() -> dict[str, Any]:
    return {"http_listen": "127.0.0.1:0"}


@pytest.fixture
async def tcp(harness: Harness) -> AsyncIterator[aiohttp.ClientSession]:
    listen = harness.daemon.http_listen
    assert listen is not None and listen.startswith("127.0.0.1:")
    async with aiohttp.ClientSession(base_url=f"http://{listen}") as session:
        yield session


async def _job(h: Harness, **fields: Any) -> None:
    h.store().put("sources/show/clip.mp4", DATA)
    assert (await h.create_job(**fields)).status == 201


async def _get(
    session: aiohttp.ClientSession, method: str, path: str, **headers: str
) -> tuple[int, Any, bytes]:
    async with session.request(method, path, headers=headers) as resp:
        return resp.status, resp.headers, await resp.read()


async def test_healthz_names_the_bound_listener(harness: Harness) -> None:
    health = (await harness.request("GET", "/healthz")).json
    assert health["HttpListen"] == harness.daemon.http_listen
    assert int(health["HttpListen"].rsplit(":", 1)[1]) > 0  # port 0 picked one


@pytest.mark.parametrize(
    "rng",
    [
        None,
        "bytes=0-",
        "bytes=100-199",
        "bytes=-10",
        f"bytes={len(DATA) - 1}-",
        "bytes=5-3",
        f"bytes={len(DATA)}-",
    ],
)
async def test_reads_answer_as_the_socket_does(
    harness: Harness, tcp: aiohttp.ClientSession, rng: str | None
) -> None:
    await _job(harness)
    path = "/v1/jobs/job-1/objects/show/clip.mp4"
    headers = {"Range": rng} if rng else {}
    over_tcp = await _get(tcp, "GET", path, **headers)
    over_socket = await _get(harness.session, "GET", path, **headers)
    assert over_tcp[0] == over_socket[0] in (200, 206, 416)
    for name in ("Content-Range", "Content-Length", "ETag", "Accept-Ranges"):
        assert over_tcp[1].get(name) == over_socket[1].get(name), name
    assert over_tcp[2] == over_socket[2]
    if over_tcp[0] == 206:
        first = int(over_tcp[1]["Content-Range"].split()[1].split("-")[0])
        assert over_tcp[2] == DATA[first : first + len(over_tcp[2])]


async def test_head_moves_no_bytes(harness: Harness, tcp: aiohttp.ClientSession) -> None:
    await _job(harness)
    path = "/v1/jobs/job-1/objects/show/clip.mp4"
    sent = harness.store().bytes_sent
    status, headers, body = await _get(tcp, "HEAD", path, Range="bytes=10-19")
    assert (status, body) == (206, b"")
    assert headers["Content-Range"] == f"bytes 10-19/{len(DATA)}"
    assert headers["Content-Length"] == "10"
    status, headers, _ = await _get(tcp, "HEAD", path)
    assert (status, headers["Content-Length"]) == (200, str(len(DATA)))
    assert harness.store().bytes_sent == sent, "HEAD read no byte of the object"
    status, _, _ = await _get(tcp, "HEAD", "/v1/jobs/job-1/objects/show/missing.mp4")
    assert status == 404


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/jobs"),
        ("GET", "/v1/jobs"),
        ("GET", "/v1/jobs/job-1"),
        ("DELETE", "/v1/jobs/job-1"),
        ("GET", "/healthz"),
        ("GET", "/metrics"),
        ("POST", "/v1/jobs/job-1/objects/show/clip.mp4"),
        ("DELETE", "/v1/jobs/job-1/objects/show/clip.mp4"),
        ("GET", "/v1/jobs/job-1/outputs/a.ts"),
        ("POST", "/v1/jobs/job-1/fetches"),
    ],
)
async def test_nothing_else_is_served_there(
    harness: Harness, tcp: aiohttp.ClientSession, method: str, path: str
) -> None:
    await _job(harness)
    async with tcp.request(method, path) as resp:
        assert resp.status == 404
        assert (await resp.json())["Error"]["Code"] == "NotFound"
    assert len(harness.daemon.registry) == 1, "the job is still there"


@root_only
async def test_a_stranger_uid_gets_no_such_job_and_an_encoder_uid_reads(harness: Harness) -> None:
    harness.store().put("sources/show/clip.mp4", DATA)
    body = {
        "JobId": "job-1",
        "TenantName": "acme-films",
        "EncoderUids": [ENCODER_UID],
        "Source": {
            "Provider": "AmazonS3",
            "UriPath": "https://acme-media.s3.eu-west-1.amazonaws.com/sources/",
            "RoleArnToAssume": "arn:aws:iam::111122223333:role/acme-encoding",
        },
    }
    assert (await harness.request("POST", "/v1/jobs", body)).status == 201
    listen = harness.daemon.http_listen
    path = "/v1/jobs/job-1/objects/show/clip.mp4"
    status, answer = await request_as(
        harness.socket, "GET", path, uid=ENCODER_UID + 1, gid=ENCODER_UID + 1, tcp=listen
    )
    assert (status, answer["Error"]["Code"]) == (404, "NoSuchJob")
    status, answer = await request_as(
        harness.socket, "GET", path, uid=ENCODER_UID, gid=ENCODER_UID, tcp=listen
    )
    assert (status, answer) == (200, len(DATA))


async def test_a_connection_whose_owner_the_kernel_cannot_name_is_refused(
    harness: Harness, tcp: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    """403 Forbidden before the request is read, then the connection closes."""
    from s3feed.daemon.api import connections

    await _job(harness)
    monkeypatch.setattr(connections, "peer_at_accept", lambda sock: None)  # e.g. the client left
    async with tcp.get("/v1/jobs/job-1/objects/show/clip.mp4") as resp:
        assert resp.status == 403
        assert resp.headers["Connection"] == "close"
        error = (await resp.json())["Error"]
    assert error["Code"] == "Forbidden" and "could not be learned" in error["Message"]


async def test_a_listener_address_that_cannot_be_bound_stops_the_start(
    tmp_path: Any, socket_dir: Any
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = Config(
            api=ApiConfig(socket=socket_dir / "s3feed.sock", http_listen=f"127.0.0.1:{port}"),
            metrics=MetricsConfig(listen=""),
            cache=CacheConfig(dir=tmp_path / "cache", max_size=16 * MiB, min_free=0),
        )
        daemon = Daemon(config, sts=FakeSts(SystemClock(), account="123456789012"))
        with pytest.raises(
            ConfigError, match=r"\[api\] http_listen: cannot listen on 127.0.0.1:\d+"
        ):
            await daemon.start()
        await daemon.stop()


@pytest.mark.parametrize(
    "value", ["0.0.0.0:7468", "10.1.2.3:7468", "[::]:7468", "localhost:7468", "127.0.0.1"]
)
def test_only_loopback_addresses_are_accepted(value: str) -> None:
    with pytest.raises(ValueError, match="http_listen"):
        ApiConfig(http_listen=value)


async def _raw(
    harness: Harness, over_tcp: bool
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    if over_tcp:
        host, port = str(harness.daemon.http_listen).rsplit(":", 1)
        return await asyncio.open_connection(host, int(port))
    return await asyncio.open_unix_connection(harness.socket)


@pytest.mark.parametrize("over_tcp", [False, True])
async def test_a_client_that_half_closes_after_its_request_gets_the_answer(
    harness: Harness, over_tcp: bool
) -> None:
    await _job(harness)
    reader, writer = await _raw(harness, over_tcp)
    writer.write(
        b"GET /v1/jobs/job-1/objects/show/clip.mp4 HTTP/1.1\r\nHost: x\r\nRange: bytes=0-9\r\n\r\n"
    )
    writer.write_eof()  # nothing more to send; the answer is still wanted
    answer = await asyncio.wait_for(reader.read(), 30)  # to the daemon's close
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 206") and body == DATA[:10]
    writer.close()


async def test_pipelined_requests_are_all_carried_out_when_the_client_leaves_without_answers(
    harness: Harness,
) -> None:
    """A client may send its last requests and close at once, its answers unread
    (ffmpeg's HTTP output does): each request that arrived whole is carried out."""
    _, writer = await _raw(harness, False)
    src = '{"Provider":"AmazonS3","UriPath":"https://acme-media.s3.eu-west-1.amazonaws.com/sources/","RoleArnToAssume":"arn:aws:iam::111122223333:role/acme-encoding"}'
    for n in range(3):
        body = f'{{"JobId":"pipe-{n}","TenantName":"acme-films","Source":{src}}}'.encode()
        writer.write(
            b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
    await writer.drain()
    writer.transport.abort()  # gone, answers unread
    async with asyncio.timeout(30):
        while len(harness.daemon.registry) < 3:
            await asyncio.sleep(0.01)  # the daemon's own loop carries them out
    assert sorted(j.job_id for j in harness.daemon.registry.all_jobs()) == [
        "pipe-0",
        "pipe-1",
        "pipe-2",
    ]
    assert harness.daemon.limits.usage(os.geteuid())[0] == 0, "the connection's slot is given back"
