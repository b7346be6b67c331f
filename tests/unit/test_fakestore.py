"""The fakes honour the ObjectStore contract the engine relies on."""

from __future__ import annotations

import asyncio

import pytest

from s3feed.transfer.errors import (
    AccessDenied,
    InvalidRange,
    NoSuchKey,
    SourceChanged,
    TransientError,
)
from tests.fakes.store import FailingObjectStore, FakeObjectStore, Fault


class Collect:
    def __init__(self) -> None:
        self.got: list[tuple[int, bytes]] = []

    def write(self, offset: int, data: memoryview) -> None:
        self.got.append((offset, bytes(data)))


async def test_ranges_chunks_and_reused_buffer() -> None:
    store = FakeObjectStore(chunk_size=3)
    etag = store.put("k", b"0123456789")
    sink = Collect()
    meta = await store.get_range("k", 2, 7, sink, if_match=etag)
    assert sink.got == [(2, b"234"), (5, b"567")] and meta.size == 10 and meta.etag == etag
    sink2 = Collect()
    await store.get_range("k", 8, None, sink2)
    assert sink2.got == [(8, b"89")]


async def test_errors() -> None:
    store = FakeObjectStore()
    etag = store.put("k", b"abc")
    with pytest.raises(SourceChanged):
        await store.get_range("k", 0, 1, Collect(), if_match='"other"')
    with pytest.raises(InvalidRange) as info:
        await store.get_range("k", 3, None, Collect())
    assert info.value.size == 3
    with pytest.raises(NoSuchKey):
        await store.head("nope")
    store.deny("k")
    with pytest.raises(AccessDenied):
        await store.head("k", if_match=etag)
    assert [m.key async for m in store.list_objects("")] == []


async def test_multipart_etag_and_checksum() -> None:
    store = FakeObjectStore()
    etag = store.put("k", bytes(10), parts=3, checksum="CRC32")
    meta = await store.head("k")
    assert etag.endswith('-3"') and meta.checksum_type == "COMPOSITE"
    assert meta.checksums["CRC32"].endswith("-3")
    assert await store.part_size("k") == 4


@pytest.mark.parametrize("kind", ["server_error", "throttled", "reset", "truncated", "stall"])
async def test_failing_store_delivers_then_fails(kind: str) -> None:
    inner = FakeObjectStore(chunk_size=2)
    inner.put("k", b"0123456789")
    store = FailingObjectStore(inner, {0: Fault(kind, after_bytes=5)})  # type: ignore[arg-type]
    sink = Collect()
    with pytest.raises(TransientError) as info:
        await store.get_range("k", 0, 9, sink)
    assert info.value.reason == kind
    assert b"".join(b for _, b in sink.got) == b"01234"
    await store.get_range("k", 5, 9, sink)  # the next call is clean
    assert [c.start for c in store.gets] == [0, 5]


async def test_failing_store_overwrites_on_source_changed() -> None:
    inner = FakeObjectStore()
    etag = inner.put("k", b"abc")
    store = FailingObjectStore(inner, lambda n, call: Fault("source_changed") if n == 1 else None)
    await store.get_range("k", 0, 0, Collect(), if_match=etag)
    with pytest.raises(SourceChanged):
        await store.get_range("k", 1, 2, Collect(), if_match=etag)
    assert (await inner.head("k")).etag != etag


async def test_gate_holds_delivery() -> None:
    go = asyncio.Event()

    async def gate(key: str, pos: int) -> None:
        await go.wait()

    store = FakeObjectStore(gate=gate)
    store.put("k", b"abc")
    task = asyncio.create_task(store.get_range("k", 0, 2, Collect()))
    for _ in range(10):
        await asyncio.sleep(0)
    assert store.bytes_sent == 0
    go.set()
    await task
    assert store.bytes_sent == 3


async def test_failing_store_fails_heads_and_listings_too() -> None:
    inner = FakeObjectStore()
    etag = inner.put("d/k", b"x" * 30, part_size=10)
    store = FailingObjectStore(
        inner,
        heads={0: Fault("throttled"), 2: Fault("source_changed"), 3: Fault("access_denied")},
        lists={1: Fault("reset")},
    )
    with pytest.raises(TransientError) as info:
        await store.head("d/k")
    assert info.value.reason == "throttled"
    assert await store.part_size("d/k", if_match=etag) == 10  # a HEAD too: the second
    with pytest.raises(SourceChanged):
        await store.head("d/k", if_match=etag)  # the object was overwritten
    with pytest.raises(AccessDenied):
        await store.part_size("d/k")
    assert (await store.list_page("d/")).objects[0].key == "d/k"
    with pytest.raises(TransientError):
        await store.list_page("d/")
    assert [m.key async for m in store.list_objects("d/")] == ["d/k"]
    assert [c.op for c in store.calls] == [
        "HeadObject",
        "HeadObjectPart",
        "HeadObject",
        "HeadObjectPart",
        "ListObjectsV2",
        "ListObjectsV2",
        "ListObjectsV2",
    ]


async def test_a_denied_bucket_refuses_listings() -> None:
    store = FakeObjectStore()
    store.put("k", b"v")
    store.deny()
    with pytest.raises(AccessDenied):
        await store.list_page("")
    with pytest.raises(AccessDenied):
        await store.head("k")
