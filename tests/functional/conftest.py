"""The whole daemon in-process, over a real Unix socket, with fake S3 and STS.

`harness` starts a `Daemon` on a socket in a fresh directory, with the fake
STS of auth/, one `FakeObjectStore` per bucket (tests/fakes/store.py) and
one `FakeUploadStore` per destination bucket (tests/fakes/upload.py),
and checks every answer it gives against daemon/openapi.yaml (harness.py).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import uvloop
from harness import Harness

from s3feed.auth.clock import SystemClock
from s3feed.daemon.config import ApiConfig, Config, MetricsConfig
from s3feed.daemon.service import Daemon
from s3feed.transfer.config import CacheConfig, MiB, S3Config, TransferConfig
from tests.fakes.store import FakeObjectStore
from tests.fakes.sts import FakeSts
from tests.fakes.upload import FakeUploadStore


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Any]:
    """The daemon runs on uvloop in production, so it does here."""
    return {"uvloop": uvloop.new_event_loop}


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    # Short, world-traversable path: AF_UNIX paths are limited to 108 bytes,
    # and the other-uid tests connect as nobody.
    path = Path(tempfile.mkdtemp(prefix="s3feed-", dir="/tmp"))
    os.chmod(path, 0o755)
    yield path
    for child in path.iterdir():
        child.unlink()
    path.rmdir()


@pytest.fixture
def api_settings() -> dict[str, Any]:
    """[api] settings beyond the harness's own; a test module overrides this fixture."""
    return {}


@pytest.fixture
def cache_settings() -> dict[str, Any]:
    """[cache] settings beyond the harness's own; a test module overrides this fixture."""
    return {}


@pytest.fixture
async def harness(
    tmp_path: Path,
    socket_dir: Path,
    api_settings: dict[str, Any],
    cache_settings: dict[str, Any],
) -> AsyncIterator[Harness]:
    config = Config(
        api=ApiConfig(
            socket=socket_dir / "s3feed.sock",
            socket_mode=0o666,
            max_body=1024 * 1024,
            **api_settings,
        ),
        metrics=MetricsConfig(listen="127.0.0.1:0"),
        s3=S3Config(),
        transfer=TransferConfig(part_size=1 * MiB, concurrency=4, stream_window=4 * MiB),
        cache=CacheConfig(
            **{"dir": tmp_path / "cache", "max_size": 256 * MiB, "min_free": 0, **cache_settings}
        ),
    )
    sts = FakeSts(SystemClock(), account="123456789012")
    stores: dict[str, FakeObjectStore] = {}

    def make_store(location: Any, session: Any) -> FakeObjectStore:
        return stores.setdefault(
            location.bucket, FakeObjectStore(bucket=location.bucket, endpoint="fake://s3")
        )

    uploads: dict[str, FakeUploadStore] = {}

    def make_uploader(location: Any, session: Any) -> FakeUploadStore:
        return uploads.setdefault(location.bucket, FakeUploadStore(bucket=location.bucket))

    daemon = Daemon(config, sts=sts, make_store=make_store, make_uploader=make_uploader)
    await daemon.start()
    connector = aiohttp.UnixConnector(path=str(config.api.socket))
    async with aiohttp.ClientSession(connector=connector, base_url="http://localhost") as session:
        h = Harness(daemon, str(config.api.socket), sts, stores, session, uploads)
        h.store()
        try:
            yield h
        finally:
            await daemon.stop()
