"""Engine.download with the fakes: ordering, retries, budget, If-Match, checksums."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from s3feed.transfer.config import MiB, TransferConfig
from s3feed.transfer.engine import Engine, object_parts, plan_ranges, range_size
from s3feed.transfer.errors import (
    AccessDenied,
    ChecksumMismatch,
    NoSuchKey,
    S3Unavailable,
    SourceChanged,
)
from s3feed.transfer.fairshare import FairLimiter
from s3feed.transfer.observer import NullTransferObserver
from s3feed.transfer.progress import Progress, RangeSet
from tests.fakes.store import FailingObjectStore, FakeObjectStore, Fault


class Recorder(NullTransferObserver):
    def __init__(self) -> None:
        self.retries: list[str] = []
        self.received = 0
        self.finished: list[str] = []

    def range_retry(self, reason: str) -> None:
        self.retries.append(reason)

    def bytes_received(self, tenant: str, n: int) -> None:
        self.received += n

    def transfer_finished(self, mode: str, outcome: str, seconds: float) -> None:
        self.finished.append(outcome)


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def blob(n: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(n)


@pytest.fixture
def fd(tmp_path: Path) -> Iterator[int]:
    f = os.open(tmp_path / "out", os.O_RDWR | os.O_CREAT, 0o600)
    yield f
    os.close(f)


def read_all(fd: int) -> bytes:
    return os.pread(fd, 1 << 30, 0)


def make(
    retries: int = 10, concurrency: int = 4, **kw: object
) -> tuple[Engine, Recorder, list[float]]:
    sleeps: list[float] = []

    async def sleep(d: float) -> None:
        sleeps.append(d)
        await asyncio.sleep(0)

    obs = Recorder()
    cfg = TransferConfig(part_size=MiB, concurrency=concurrency, retries=retries, **kw)  # type: ignore[arg-type]
    return Engine(cfg, obs, rng=random.Random(7), sleep=sleep), obs, sleeps


@pytest.mark.parametrize("size", [0, 1, MiB, MiB + 1, 5 * MiB + 12345])
@pytest.mark.parametrize("seed", [1, 2])
async def test_byte_exact_under_random_completion_order(fd: int, size: int, seed: int) -> None:
    store = FakeObjectStore(chunk_size=100_000, rng=random.Random(seed))
    data = blob(size, seed)
    store.put("k", data)
    engine, obs, _ = make()
    progress = Progress()
    meta = await engine.download(store, "k", fd, tenant="t", progress=progress)
    assert meta.size == size
    assert sha(read_all(fd)) == sha(data)
    assert progress.bytes_done == size and progress.size == size
    assert progress.verified == ["MD5"]
    assert obs.received == size and obs.finished == ["success"]


async def test_multipart_ranges_align_to_object_parts(fd: int) -> None:
    inner = FakeObjectStore(chunk_size=1 << 18)
    data = blob(7 * MiB + 5)
    inner.put("k", data, parts=3, checksum="CRC32")  # parts of ceil(size/3)
    store = FailingObjectStore(inner)
    engine, _, _ = make()
    progress = Progress()
    await engine.download(store, "k", fd, tenant="t", progress=progress)
    assert sha(read_all(fd)) == sha(data)
    bounds = {(c.start, c.end) for c in store.gets}
    assert all(c.if_match == inner.objects["k"].etag for c in store.gets)
    for s, e in inner.objects["k"].parts or []:  # no range crosses a part boundary
        assert all(not (rs < s <= re) and not (rs <= e < re) for rs, re in bounds)
    assert progress.verified == ["CRC32-COMPOSITE"]


def test_plan_and_part_guess() -> None:
    assert plan_ranges(0, 2 * MiB, MiB, None) == [
        (0, MiB - 1),
        (MiB, 2 * MiB - 1),
        (2 * MiB, 2 * MiB),
    ]
    from s3feed.transfer.store import ObjectMeta

    meta = ObjectMeta("k", 8 * MiB * 9 + 1, '"' + "a" * 32 + '-10"', None)  # type: ignore[arg-type]
    parts = object_parts(meta, None)
    assert parts is not None and parts[0] == (0, 8 * MiB - 1) and len(parts) == 10
    assert object_parts(meta, 3 * MiB) is None  # part 1 of 3 MiB cannot make 10 parts


def test_a_large_objects_ranges_grow_in_whole_parts_up_to_max_range() -> None:
    defaults = TransferConfig()  # 16 MiB parts, max_range 64 MiB; 8 connections at first
    assert defaults.max_range == 64 * MiB
    assert range_size(defaults, 2 * 1024 * MiB, 8) == 64 * MiB  # 32 ranges: 4 per connection
    assert range_size(defaults, 1024 * MiB, 8) == 32 * MiB
    assert range_size(defaults, 1024 * MiB - 1, 8) == 16 * MiB  # whole parts only
    assert range_size(defaults, 512 * MiB, 8) == 16 * MiB
    assert range_size(defaults, 100 * 1024 * MiB, 8) == 64 * MiB  # never past max_range
    # More connections in flight (a slow link) keep ranges small, fewer let them grow.
    assert range_size(defaults, 2 * 1024 * MiB, 32) == 16 * MiB
    assert range_size(defaults, 1024 * MiB, 2) == 64 * MiB
    off = TransferConfig(max_range=16 * MiB)
    assert range_size(off, 100 * 1024 * MiB, 8) == 16 * MiB
    with pytest.raises(ValueError, match="max_range"):
        TransferConfig(max_range=8 * MiB)
    assert TransferConfig(part_size=8 * MiB).max_range == 32 * MiB  # follows part_size


def test_joined_ranges_start_on_a_part_and_stay_within_the_range_size() -> None:
    parts = [(0, 9), (10, 19), (20, 29), (30, 59), (60, 64)]
    assert plan_ranges(0, 64, 20, parts, join_parts=True) == [
        (0, 19),  # two parts
        (20, 29),  # with the next part it would be 40
        (30, 49),  # a part larger than a range is cut
        (50, 64),  # the cut's rest and the last part: 15
    ]
    assert plan_ranges(0, 64, 20, parts) == [
        (0, 9),
        (10, 19),
        (20, 29),
        (30, 49),
        (50, 59),
        (60, 64),
    ]


async def test_cache_ranges_join_parts_unless_a_composite_checksum_needs_each(
    tmp_path: Path,
) -> None:
    inner = FakeObjectStore(chunk_size=1 << 18)
    plain, composite = blob(16 * MiB + 5, 1), blob(16 * MiB + 5, 2)
    inner.put("plain", plain, part_size=MiB)  # 17 parts, no checksum
    inner.put("composite", composite, part_size=MiB, checksum="CRC32")
    store = FailingObjectStore(inner)
    engine, _, _ = make(concurrency=2, max_range=4 * MiB)  # 16 MiB / (2 x 4): 2 MiB ranges
    got = {}
    for key, data in (("plain", plain), ("composite", composite)):
        before = len(store.gets)
        progress = Progress()
        f = os.open(tmp_path / key, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            await engine.download(store, key, f, tenant="t", progress=progress)
            assert sha(read_all(f)) == sha(data)
        finally:
            os.close(f)
        got[key] = (sorted((c.start, c.end) for c in store.gets[before:]), progress.verified)
    size = 16 * MiB + 5
    assert got["plain"] == (
        [(k * 2 * MiB, (k + 1) * 2 * MiB - 1) for k in range(8)] + [(16 * MiB, size - 1)],
        [],
    )  # two parts per GET; the 5-byte last part would make 2 MiB + 5
    parts = [(k * MiB, min((k + 1) * MiB, size) - 1) for k in range(17)]
    assert got["composite"] == (parts, ["CRC32-COMPOSITE"])  # one GET per part


@pytest.mark.parametrize(
    "kind", ["server_error", "throttled", "reset", "truncated", "stall", "expired_token"]
)
async def test_each_transient_fault_is_retried_from_where_it_stopped(fd: int, kind: str) -> None:
    inner = FakeObjectStore(chunk_size=1 << 16)
    data = blob(3 * MiB + 7)
    inner.put("k", data)
    store = FailingObjectStore(inner, {1: Fault(kind, after_bytes=300_000)})  # type: ignore[arg-type]
    engine, obs, sleeps = make()
    await engine.download(store, "k", fd, tenant="t", progress=Progress())
    assert sha(read_all(fd)) == sha(data)
    assert obs.retries == [kind]
    assert len(sleeps) == 1 and 0 <= sleeps[0] <= 0.1
    failed = store.gets[1]
    retry = next(c for c in store.gets[2:] if c.end == failed.end)
    assert retry.start == failed.start + 300_000  # resumed, not restarted
    assert obs.received == len(data)  # no byte fetched twice


async def test_retry_budget_exhaustion_names_last_cause(fd: int) -> None:
    inner = FakeObjectStore()
    inner.put("k", blob(2 * MiB))
    faults = {i: Fault("throttled" if i < 3 else "server_error") for i in range(100)}
    store = FailingObjectStore(inner, faults)
    engine, obs, sleeps = make(retries=4, concurrency=1)
    with pytest.raises(S3Unavailable, match="server_error"):
        await engine.download(store, "k", fd, tenant="t", progress=Progress())
    # The three SlowDowns spend the throttling allowance, the errors the 4 retries.
    assert len(store.gets) == 8 and len(obs.retries) == 7
    assert obs.finished == ["failed"]
    assert sleeps[1] <= 0.2 and sleeps[3] <= 0.8  # capped exponential, full jitter


async def test_source_changed_mid_transfer_is_final(fd: int) -> None:
    inner = FakeObjectStore()
    inner.put("k", blob(4 * MiB))
    store = FailingObjectStore(inner, {2: Fault("source_changed")})
    engine, obs, _ = make(concurrency=1)
    with pytest.raises(SourceChanged):
        await engine.download(store, "k", fd, tenant="t", progress=Progress())
    assert len(store.gets) == 3 and obs.retries == []


@pytest.mark.parametrize("exc", [AccessDenied, NoSuchKey])
async def test_denied_or_missing_is_final_at_once(fd: int, exc: type[Exception]) -> None:
    store = FakeObjectStore()
    if exc is AccessDenied:
        store.put("k", b"x")
        store.deny("k")
    engine, obs, _ = make()
    with pytest.raises(exc):
        await engine.download(store, "k", fd, tenant="t", progress=Progress())
    assert obs.retries == [] and store.bytes_sent == 0


async def test_access_denied_mid_transfer(fd: int) -> None:
    inner = FakeObjectStore()
    inner.put("k", blob(3 * MiB))
    store = FailingObjectStore(inner, {1: Fault("access_denied")})
    engine, obs, _ = make(concurrency=1)
    with pytest.raises(AccessDenied):
        await engine.download(store, "k", fd, tenant="t", progress=Progress())
    assert obs.retries == []


async def test_skip_fetches_only_missing_ranges(fd: int) -> None:
    inner = FakeObjectStore()
    data = blob(4 * MiB + 3)
    inner.put("k", data, checksum="CRC32")
    os.pwrite(fd, data[MiB : 3 * MiB - 10], MiB)  # a previous run wrote parts 2 and 3
    store = FailingObjectStore(inner)
    engine, _, _ = make()
    progress = Progress()
    await engine.download(
        store, "k", fd, tenant="t", progress=progress, skip=RangeSet([(MiB, 3 * MiB - 11)])
    )
    assert sha(read_all(fd)) == sha(data)
    assert sorted((c.start, c.end) for c in store.gets) == [
        (0, MiB - 1),
        (3 * MiB - 10, 3 * MiB - 1),
        (3 * MiB, 4 * MiB - 1),
        (4 * MiB, 4 * MiB + 2),
    ]
    assert progress.resumed == 2 * MiB - 10 and progress.verified == ["CRC32"]


async def test_checksum_mismatch_redownloads_then_fails(fd: int) -> None:
    store = FakeObjectStore()
    data = blob(2 * MiB)
    store.put("k", data, checksum="CRC32")
    store.objects["k"].checksums["CRC32"] = "AAAAAA=="
    engine, obs, _ = make()
    with pytest.raises(ChecksumMismatch):
        await engine.download(store, "k", fd, tenant="t", progress=Progress())
    assert obs.retries == ["checksum"] and store.bytes_sent == 2 * len(data)


async def test_md5_mismatch_with_stable_bytes_is_not_an_md5_etag(fd: int) -> None:
    store = FakeObjectStore()
    data = blob(MiB + 1)
    store.put("k", data, etag='"' + "0" * 32 + '"')  # as SSE-KMS: an ETag that is no MD5
    engine, _, _ = make()
    progress = Progress()
    await engine.download(store, "k", fd, tenant="t", progress=progress)
    assert sha(read_all(fd)) == sha(data) and progress.verified == []


async def test_cancel_stops_every_range_promptly(fd: int) -> None:
    gate = asyncio.Event()
    entered = asyncio.Event()

    async def hold(key: str, pos: int) -> None:
        entered.set()
        await gate.wait()

    store = FakeObjectStore(gate=hold)
    store.put("k", blob(8 * MiB))
    engine, obs, _ = make()
    task = asyncio.create_task(engine.download(store, "k", fd, tenant="t", progress=Progress()))
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert obs.finished == ["cancelled"] and store.bytes_sent == 0
    assert engine.limiter._free == engine.config.global_concurrency


async def test_fair_limiter_round_robin() -> None:
    lim = FairLimiter(1)
    await lim.acquire("a")
    order: list[str] = []

    async def take(owner: str) -> None:
        await lim.acquire(owner)
        order.append(owner)
        lim.release(owner)

    tasks = [asyncio.create_task(take(o)) for o in ["a", "a", "a", "b"]]
    await asyncio.sleep(0)
    lim.release("a")
    await asyncio.gather(*tasks)
    assert order == ["a", "b", "a", "a"]
