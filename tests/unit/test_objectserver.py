"""ObjectServer with the fakes: the access check comes first, cache or S3, the outcome counted once."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from s3feed.transfer.cache.cache import Cache
from s3feed.transfer.config import CacheConfig, MiB, TransferConfig
from s3feed.transfer.engine import Engine
from s3feed.transfer.errors import AccessDenied, InvalidRange, NoSuchKey, SourceChanged
from s3feed.transfer.objectserver import Authorised, ObjectServer
from s3feed.transfer.observer import NullTransferObserver
from s3feed.transfer.progress import Progress
from tests.fakes.store import FailingObjectStore, FakeObjectStore, Fault


class Seen(NullTransferObserver):
    def __init__(self) -> None:
        self.started: list[str] = []
        self.finished: list[tuple[str, str]] = []
        self.served: dict[str, int] = {}

    def transfer_started(self, mode: str) -> None:
        self.started.append(mode)

    def transfer_finished(self, mode: str, outcome: str, seconds: float) -> None:
        self.finished.append((mode, outcome))

    def bytes_served(self, mode: str, n: int) -> None:
        self.served[mode] = self.served.get(mode, 0) + n


async def no_sleep(d: float) -> None:
    await asyncio.sleep(0)


@pytest.fixture
async def server(tmp_path: Path) -> ObjectServer:
    seen = Seen()
    engine = Engine(TransferConfig(part_size=MiB, concurrency=2), seen, sleep=no_sleep)
    cache = Cache(CacheConfig(dir=tmp_path / "cache", max_size=1 << 40, min_free=0), engine, seen)
    await cache.start()
    yield ObjectServer(engine, cache, seen)
    await cache.close()


def seen(server: ObjectServer) -> Seen:
    assert isinstance(server.observer, Seen)
    return server.observer


async def read_all(
    server: ObjectServer, store: FakeObjectStore, key: str, rng=None
) -> tuple[str, bytes]:
    delivery = await server.open(store, key, tenant="t", choose_range=lambda meta: rng)
    out = bytearray()
    async with delivery:
        async for chunk in delivery:
            out += chunk
    return delivery.source, bytes(out)


async def test_another_jobs_store_is_asked_before_a_cache_hit(server: ObjectServer) -> None:
    data = random.Random(1).randbytes(3 * MiB)
    allowed = FakeObjectStore()
    allowed.put("k", data)
    auth = await server.authorise(allowed, "k")
    await server.fetch(auth, tenant="t1", owner="j1", readers=frozenset(), progress=Progress())
    assert await read_all(server, allowed, "k") == ("cache", data)

    denied = FakeObjectStore()
    denied.objects = allowed.objects  # the same bucket, seen with another job's credentials
    denied.deny("k")
    sent = allowed.bytes_sent + denied.bytes_sent
    with pytest.raises(AccessDenied):
        await server.authorise(denied, "k")
    with pytest.raises(AccessDenied):
        await server.open(denied, "k", tenant="t2", choose_range=lambda meta: None)
    assert allowed.bytes_sent + denied.bytes_sent == sent, "not a byte for the denied job"


def test_an_authorisation_cannot_be_made_outside_the_server() -> None:
    store = FakeObjectStore()
    store.put("k", b"x")
    meta = asyncio.run(store.head("k"))
    with pytest.raises(TypeError):
        Authorised(store, meta, object())


async def test_stream_from_s3_then_from_the_cache_counts_each_once(server: ObjectServer) -> None:
    data = random.Random(2).randbytes(2 * MiB + 17)
    store = FakeObjectStore()
    store.put("k", data)
    assert await read_all(server, store, "k") == ("s3", data)
    auth = await server.authorise(store, "k")
    await server.fetch(auth, tenant="t", owner="j", readers=frozenset(), progress=Progress())
    assert await read_all(server, store, "k", (5, 100)) == ("cache", data[5:101])
    assert seen(server).finished == [
        ("stream", "success"),
        ("cache", "success"),
        ("stream", "success"),
    ]
    assert seen(server).served == {"stream": len(data) + 96, "cache": len(data)}


async def test_a_range_outside_the_object_is_refused_before_anything_starts(
    server: ObjectServer,
) -> None:
    store = FakeObjectStore()
    store.put("k", b"abc")

    def outside(meta: object) -> tuple[int, int]:
        raise InvalidRange("outside", 3)

    with pytest.raises(InvalidRange):
        await server.open(store, "k", tenant="t", choose_range=outside)
    with pytest.raises(NoSuchKey):
        await server.open(store, "nope", tenant="t", choose_range=lambda m: None)
    assert seen(server).started == []


async def test_a_reader_that_stops_early_is_cancelled_a_failure_is_failed(
    server: ObjectServer,
) -> None:
    data = random.Random(3).randbytes(4 * MiB)
    store = FakeObjectStore()
    store.put("k", data)
    delivery = await server.open(store, "k", tenant="t", choose_range=lambda m: None)
    async with delivery:
        async for _ in delivery:
            break
    assert delivery.outcome == "cancelled" and not delivery.complete

    failing = FailingObjectStore(store, {3: Fault("source_changed")})
    delivery = await server.open(failing, "k", tenant="t", choose_range=lambda m: None)
    with pytest.raises(SourceChanged):
        async with delivery:
            async for _ in delivery:
                pass
    assert delivery.outcome == "failed"
    assert seen(server).finished == [("stream", "cancelled"), ("stream", "failed")]
