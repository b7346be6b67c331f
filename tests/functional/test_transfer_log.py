"""Every transfer on the record (docs/design.md, Logs): each kind of transfer
(fetch, stream, delivery, URL read, upload) and each way it ends (done,
failed, cancelled) writes one `"event": "transfer"` record, asserted on the
JSON the daemon's formatter writes. The whole daemon in-process, fake S3,
STS and upload store; URL reads on the loopback listener.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from harness import ACME_ROLE, ACME_URI

from s3feed.auth.clock import SystemClock
from s3feed.client import AsyncClient
from s3feed.daemon.config import ApiConfig, Config, MetricsConfig
from s3feed.daemon.logs import JsonFormatter
from s3feed.daemon.service import Daemon
from s3feed.transfer.config import CacheConfig, MiB, S3Config, TransferConfig
from s3feed.transfer.errors import AccessDenied, ObjectStoreError
from tests.fakes.store import FakeObjectStore
from tests.fakes.sts import FakeSts
from tests.fakes.upload import FakeUploadStore

DATA = random.Random(24).randbytes(3 * MiB + 7)
OUT_URI = "https://acme-renditions.s3.eu-west-1.amazonaws.com/out/"
FIELDS = {"job_id", "key", "kind", "outcome", "bytes", "seconds", "source"}


class Rig:
    def __init__(self, daemon: Daemon, store: FakeObjectStore, uploads: FakeUploadStore) -> None:
        self.daemon = daemon
        self.store = store
        self.uploads = uploads
        self.socket = str(daemon.socket_path)
        self.stopped = False

    def unix(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            connector=aiohttp.UnixConnector(path=self.socket), base_url="http://localhost"
        )

    def tcp(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(base_url=f"http://{self.daemon.http_listen}")

    async def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            await self.daemon.stop()


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="s3feed-", dir="/tmp"))
    yield path
    for child in path.iterdir():
        child.unlink()
    path.rmdir()


@pytest.fixture
async def rig(tmp_path: Path, socket_dir: Path) -> AsyncIterator[Rig]:
    config = Config(
        api=ApiConfig(
            socket=socket_dir / "s3feed.sock",
            http_listen="127.0.0.1:0",
            drain_grace=0,  # shutdown cancels what runs at once
        ),
        metrics=MetricsConfig(listen=""),
        s3=S3Config(),
        transfer=TransferConfig(part_size=1 * MiB, concurrency=2, stream_window=2 * MiB),
        cache=CacheConfig(dir=tmp_path / "cache", max_size=64 * MiB, min_free=0),
    )
    store = FakeObjectStore(bucket="acme-media", endpoint="fake://s3")
    uploads = FakeUploadStore("acme-renditions")
    daemon = Daemon(
        config,
        sts=FakeSts(SystemClock(), account="123456789012"),
        make_store=lambda location, session: store,
        make_uploader=lambda location, session: uploads,
    )
    await daemon.start()
    store.put("sources/clip.ts", DATA)
    r = Rig(daemon, store, uploads)
    async with r.unix() as s:
        body = {
            "JobId": "job-1",
            "TenantName": "acme-films",
            "Source": {"Provider": "AmazonS3", "UriPath": ACME_URI, "RoleArnToAssume": ACME_ROLE},
            "Destination": {"Provider": "AmazonS3", "UriPath": OUT_URI},
        }
        async with s.post("/v1/jobs", json=body) as resp:
            assert resp.status == 201, await resp.text()
    try:
        yield r
    finally:
        await r.stop()


@pytest.fixture
def logged(caplog: pytest.LogCaptureFixture) -> Iterator[list[dict[str, Any]]]:
    """The transfer records written so far, as the JSON lines the daemon writes."""
    caplog.set_level(logging.INFO, "s3feed.transfer")
    formatter = JsonFormatter()

    class Lines(list[dict[str, Any]]):
        def __iter__(self) -> Iterator[dict[str, Any]]:
            self[:] = [
                orjson.loads(formatter.format(r))
                for r in caplog.records
                if getattr(r, "event", None) == "transfer"
            ]
            return super().__iter__()

    yield Lines()


def one(logged: list[dict[str, Any]], **match: Any) -> dict[str, Any]:
    found = [line for line in logged if all(line.get(k) == v for k, v in match.items())]
    assert len(found) == 1, (match, list(logged))
    line = found[0]
    assert set(line) >= FIELDS, line
    assert line["level"] == "info" and line["job_id"] == "job-1"
    assert isinstance(line["seconds"], float) and line["seconds"] >= 0
    return line


async def finished(rig: Rig, kind_mode: str, count: int = 1) -> None:
    """Wait until `count` records of `kind_mode` have ended."""
    job = rig.daemon.registry.get(0, "job-1")
    async with asyncio.timeout(30):
        while (
            len([r for r in job.transfers.values() if r.mode == kind_mode and r.finished.is_set()])
            < count
        ):
            await asyncio.sleep(0.01)  # the records end on this loop, in the daemon's tasks


def hold_after_first_range(store: FakeObjectStore, at: int = 1) -> asyncio.Event:
    """S3 holds every body at byte `at` and on until released (a URL read
    hands out a piece once it has landed whole: hold it after its first)."""
    release = asyncio.Event()

    async def gate(key: str, pos: int) -> None:
        if pos >= at:
            await release.wait()

    store.gate = gate
    return release


def deny_after_first_range(store: FakeObjectStore) -> None:
    """S3 sends a stream's first range, or a URL read's first piece (1 MiB
    each), then refuses."""

    async def gate(key: str, pos: int) -> None:
        if pos >= 1024 * 1024:
            exc = AccessDenied("Access Denied")
            exc.request_id, exc.host_id = "REQ123", "HOST456"
            raise exc

    store.gate = gate


# --- fetches ---------------------------------------------------------------------------


async def test_fetch_done_from_s3_then_from_the_cache(
    rig: Rig, logged: list[dict[str, Any]]
) -> None:
    async with rig.unix() as s:
        for _ in range(2):
            async with s.post("/v1/jobs/job-1/fetches?wait=true", json={"Key": "clip.ts"}) as r:
                assert r.status == 200
    lines = [line for line in logged if line["kind"] == "fetch"]
    assert [(x["outcome"], x["source"], x["bytes"]) for x in lines] == [
        ("done", "s3", len(DATA)),
        ("done", "cache", len(DATA)),
    ]
    assert lines[0]["key"] == "clip.ts" and "request_id" not in lines[0]  # none: S3 said no error
    assert "code" not in lines[0]


async def test_fetch_failed_names_s3s_request_id(rig: Rig, logged: list[dict[str, Any]]) -> None:
    deny_after_first_range(rig.store)
    async with (
        rig.unix() as s,
        s.post("/v1/jobs/job-1/fetches?wait=true", json={"Key": "clip.ts"}) as r,
    ):
        assert r.status == 403
    line = one(logged, kind="fetch")
    assert line["outcome"] == "failed" and line["code"] == "AccessDenied"
    assert (line["request_id"], line["host_id"]) == ("REQ123", "HOST456")
    assert line["source"] == "s3" and 0 < line["bytes"] < len(DATA)


async def test_fetch_cancelled_by_delete_and_ended_by_shutdown(
    rig: Rig, logged: list[dict[str, Any]]
) -> None:
    release = hold_after_first_range(rig.store)
    rig.store.put("sources/other.ts", DATA[::-1])
    async with rig.unix() as s:
        async with s.post("/v1/jobs/job-1/fetches", json={"Key": "clip.ts"}) as r:
            fetch_id = (await r.json())["FetchId"]
        async with s.delete(f"/v1/jobs/job-1/fetches/{fetch_id}") as r:
            assert r.status == 204
        async with s.post("/v1/jobs/job-1/fetches", json={"Key": "other.ts"}) as r:
            assert r.status == 202
    assert one(logged, kind="fetch", key="clip.ts")["outcome"] == "cancelled"
    await rig.stop()  # drain_grace 0: the running fetch ends with ShuttingDown
    release.set()
    line = one(logged, kind="fetch", key="other.ts")
    assert (line["outcome"], line["code"]) == ("failed", "ShuttingDown")


# --- streams on the socket and URL reads -----------------------------------------------


@pytest.mark.parametrize("kind", ["stream", "url"])
async def test_read_done_with_range(rig: Rig, logged: list[dict[str, Any]], kind: str) -> None:
    session = rig.unix() if kind == "stream" else rig.tcp()
    async with session as s:
        async with s.get("/v1/jobs/job-1/objects/clip.ts") as r:
            assert await r.read() == DATA
        async with s.get("/v1/jobs/job-1/objects/clip.ts", headers={"Range": "bytes=10-19"}) as r:
            assert r.status == 206 and await r.read() == DATA[10:20]
    lines = [line for line in logged if line["kind"] == kind]
    # A URL read leaves what it read in the cache (docs/design.md, URLs for encoders: Reads).
    assert [(x["outcome"], x["bytes"], x["source"]) for x in lines] == [
        ("done", len(DATA), "s3"),
        ("done", 10, "s3" if kind == "stream" else "cache"),
    ]
    assert not [line for line in logged if line["kind"] != kind]


@pytest.mark.parametrize("kind", ["stream", "url"])
async def test_read_from_the_cache_says_so(
    rig: Rig, logged: list[dict[str, Any]], kind: str
) -> None:
    async with (
        rig.unix() as s,
        s.post("/v1/jobs/job-1/fetches?wait=true", json={"Key": "clip.ts"}) as r,
    ):
        assert r.status == 200
    async with (
        rig.unix() if kind == "stream" else rig.tcp() as s,
        s.get("/v1/jobs/job-1/objects/clip.ts") as r,
    ):
        assert await r.read() == DATA
    assert one(logged, kind=kind)["source"] == "cache"


@pytest.mark.parametrize("kind", ["stream", "url"])
async def test_read_failed_after_headers(rig: Rig, logged: list[dict[str, Any]], kind: str) -> None:
    deny_after_first_range(rig.store)
    async with (
        rig.unix() if kind == "stream" else rig.tcp() as s,
        s.get("/v1/jobs/job-1/objects/clip.ts") as r,
    ):
        assert r.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await r.read()
    await finished(rig, "stream")
    line = one(logged, kind=kind)
    assert (line["outcome"], line["code"], line["request_id"]) == (
        "failed",
        "AccessDenied",
        "REQ123",
    )
    assert 0 < line["bytes"] < len(DATA)


@pytest.mark.parametrize("kind", ["stream", "url"])
async def test_read_cancelled_when_the_reader_leaves(
    rig: Rig, logged: list[dict[str, Any]], kind: str
) -> None:
    release = hold_after_first_range(rig.store, 1024 * 1024)
    async with (
        rig.unix() if kind == "stream" else rig.tcp() as s,
        s.get("/v1/jobs/job-1/objects/clip.ts") as r,
    ):
        assert r.status == 200
        await r.content.readexactly(1000)
        r.close()  # the reader leaves mid-body
    release.set()
    await finished(rig, "stream")
    line = one(logged, kind=kind)
    assert (line["outcome"], line["code"]) == ("cancelled", "Cancelled")
    assert line["bytes"] < len(DATA)


# --- deliveries ------------------------------------------------------------------------


async def test_delivery_done_failed_and_cancelled(rig: Rig, logged: list[dict[str, Any]]) -> None:
    async with AsyncClient(rig.socket) as client:
        with tempfile.TemporaryFile() as out:
            doc = await client.deliver("job-1", "clip.ts", out.fileno())
            assert doc["Bytes"] == len(DATA)
        reader, writer = os.pipe()
        os.close(reader)  # nobody reads: the first write is EPIPE
        try:
            with pytest.raises(Exception, match=r"OutputClosed|closed"):
                await client.deliver("job-1", "clip.ts", writer)
        finally:
            os.close(writer)
        deny_after_first_range(rig.store)
        with tempfile.TemporaryFile() as out, pytest.raises(Exception, match=r"Access ?Denied"):
            await client.deliver("job-1", "clip.ts", out.fileno())
    lines = [line for line in logged if line["kind"] == "delivery"]
    assert [(x["outcome"], x.get("code")) for x in lines] == [
        ("done", None),
        ("cancelled", "Cancelled"),
        ("failed", "AccessDenied"),
    ]
    assert lines[0]["bytes"] == len(DATA) and lines[0]["source"] == "s3"
    assert lines[2]["request_id"] == "REQ123"


# --- uploads ---------------------------------------------------------------------------


async def test_upload_done_failed_and_cancelled(rig: Rig, logged: list[dict[str, Any]]) -> None:
    async with rig.unix() as s:
        async with s.put("/v1/jobs/job-1/outputs/a.ts", data=b"x" * 1000) as r:
            assert r.status == 201
        rig.uploads.failures["PutObject"] = [ObjectStoreError("AccessDenied: no s3:PutObject")]
        async with s.put("/v1/jobs/job-1/outputs/b.ts", data=b"y" * 1000) as r:
            assert r.status >= 400
        more = asyncio.Event()

        async def body() -> AsyncIterator[bytes]:
            yield b"z" * 1000
            await more.wait()
            yield b"z"

        put = asyncio.create_task(s.put("/v1/jobs/job-1/outputs/c.ts", data=body()))
        job = rig.daemon.registry.get(0, "job-1")
        async with asyncio.timeout(30):
            while not [r for r in job.transfers.values() if r.key == "c.ts"]:
                await asyncio.sleep(0.01)  # the PUT is on this loop: until its record exists
        async with s.delete("/v1/jobs/job-1") as r:
            assert r.status == 204  # the job's close cancels (and aborts) its upload
        more.set()
        with pytest.raises(aiohttp.ClientError):
            async with await put as r:
                await r.read()
    lines = {line["key"]: line for line in logged if line["kind"] == "upload"}
    assert (lines["a.ts"]["outcome"], lines["a.ts"]["bytes"]) == ("done", 1000)
    assert lines["a.ts"]["source"] == "s3"
    assert lines["b.ts"]["outcome"] == "failed" and lines["b.ts"]["bytes"] == 0
    assert lines["c.ts"]["outcome"] == "cancelled"
    assert len(lines) == 3
