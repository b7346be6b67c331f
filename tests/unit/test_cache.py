"""Cache with the fakes: hits, single flight, tenant re-check, 412, resume, eviction, room."""

from __future__ import annotations

import asyncio
import ctypes
import errno
import grp
import hashlib
import json
import os
import random
import stat
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from s3feed.transfer.cache import acl, disk, sync
from s3feed.transfer.cache.cache import Cache
from s3feed.transfer.cache.disk import reserve
from s3feed.transfer.config import CacheConfig, MiB, TransferConfig
from s3feed.transfer.engine import Engine
from s3feed.transfer.errors import AccessDenied, Cancelled, InsufficientStorage, SourceChanged
from s3feed.transfer.observer import NullTransferObserver
from s3feed.transfer.progress import Progress
from tests.fakes.store import FailingObjectStore, FakeObjectStore, Fault

TiB = 1 << 40


class Counts(NullTransferObserver):
    def __init__(self) -> None:
        self.hits = self.misses = self.evictions = 0
        self.size = (0, 0)

    def cache_hit(self) -> None:
        self.hits += 1

    def cache_miss(self) -> None:
        self.misses += 1

    def cache_eviction(self) -> None:
        self.evictions += 1

    def cache_size(self, size_bytes: int, capacity_bytes: int) -> None:
        self.size = (size_bytes, capacity_bytes)


def entries(c: Cache) -> list[str]:
    """Files of cache entries (the directory's secret aside)."""
    return sorted(p.name for p in c.config.dir.iterdir() if p.name != ".secret")


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def blob(n: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(n)


async def no_sleep(d: float) -> None:
    await asyncio.sleep(0)


def new_cache(
    path: Path, max_size: int = TiB, free: int = TiB, boot: str = "boot-1"
) -> tuple[Cache, Counts]:
    obs = Counts()
    engine = Engine(TransferConfig(part_size=MiB, concurrency=2), obs, sleep=no_sleep)
    cfg = CacheConfig(dir=path / "cache", max_size=max_size, min_free=MiB)
    # Sidecar after every range, so a simulated crash knows exactly what is done.
    cache = Cache(cfg, engine, obs, disk_free=lambda p: free, boot_id=boot)
    return cache, obs


@pytest.fixture
async def cache(tmp_path: Path) -> AsyncIterator[tuple[Cache, Counts]]:
    c, obs = new_cache(tmp_path)
    await c.start()
    yield c, obs
    await c.close()


async def test_miss_then_hit_byte_exact(cache: tuple[Cache, Counts]) -> None:
    c, obs = cache
    inner = FakeObjectStore(rng=random.Random(1))
    data = blob(3 * MiB + 5)
    inner.put("k", data, checksum="CRC32")
    store = FailingObjectStore(inner)
    p = Progress()
    e = await c.fetch(store, "k", tenant="t", owner="job1", progress=p)
    assert sha(e.path.read_bytes()) == sha(data) and e.verified == ("CRC32",)
    assert p.bytes_done == len(data) and p.verified == ["CRC32"]
    gets = len(store.gets)
    e2 = await c.fetch(store, "k", tenant="t", owner="job2", progress=Progress())
    assert e2.path == e.path and len(store.gets) == gets
    calls = len(store.calls)
    assert c.lookup(store, "k", e.etag) == e2
    assert len(store.calls) == calls, "lookup asks S3 nothing: its caller HEADs first"
    assert c.lookup(store, "k", '"another-etag"') is None
    assert (obs.hits, obs.misses) == (2, 2) and c.size_bytes == len(data)
    assert [p.name for p in (c.config.dir).iterdir() if p.suffix == ".part"] == []


async def test_single_flight(cache: tuple[Cache, Counts]) -> None:
    c, _ = cache
    inner = FakeObjectStore(rng=random.Random(2))
    data = blob(4 * MiB)
    inner.put("k", data)
    a, b = FailingObjectStore(inner), FailingObjectStore(inner)
    e1, e2 = await asyncio.gather(
        c.fetch(a, "k", tenant="t1", owner="j1", progress=Progress()),
        c.fetch(b, "k", tenant="t2", owner="j2", progress=Progress()),
    )
    assert e1 == e2 and sha(e1.path.read_bytes()) == sha(data)
    assert inner.bytes_sent == len(data)  # one download
    assert len(a.gets) + len(b.gets) == 4


async def test_first_waiter_leaving_hands_download_to_second(cache: tuple[Cache, Counts]) -> None:
    c, _ = cache
    release = asyncio.Event()
    first_range = asyncio.Event()

    async def gate(key: str, pos: int) -> None:
        if pos >= MiB:
            first_range.set()
            await release.wait()

    inner = FakeObjectStore(gate=gate)
    data = blob(4 * MiB)
    inner.put("k", data)
    a, b = FailingObjectStore(inner), FailingObjectStore(inner)
    t1 = asyncio.create_task(c.fetch(a, "k", tenant="t1", owner="j1", progress=Progress()))
    await first_range.wait()
    p2 = Progress()
    t2 = asyncio.create_task(c.fetch(b, "k", tenant="t2", owner="j2", progress=p2))
    for _ in range(50):
        await asyncio.sleep(0)
    t1.cancel()
    with pytest.raises(asyncio.CancelledError):
        await t1
    release.set()
    e = await t2
    assert sha(e.path.read_bytes()) == sha(data) and p2.bytes_done == len(data)
    assert b.gets and all(g.start != 0 for g in b.gets)  # resumed: range 0 came through a


async def test_second_tenant_is_rechecked_by_s3(cache: tuple[Cache, Counts]) -> None:
    c, _ = cache
    inner = FakeObjectStore()
    inner.put("k", blob(2 * MiB))
    e = await c.fetch(inner, "k", tenant="t1", owner="j1", progress=Progress())
    other = FakeObjectStore()
    other.objects = inner.objects
    other.deny("k")
    sent = inner.bytes_sent + other.bytes_sent
    with pytest.raises(AccessDenied):
        await c.fetch(other, "k", tenant="t2", owner="j2", progress=Progress())
    assert e.path.exists()
    assert inner.bytes_sent + other.bytes_sent == sent


async def test_412_mid_transfer_leaves_nothing(cache: tuple[Cache, Counts]) -> None:
    c, _ = cache
    inner = FakeObjectStore()
    inner.put("k", blob(4 * MiB))
    store = FailingObjectStore(inner, {2: Fault("source_changed")})
    with pytest.raises(SourceChanged):
        await c.fetch(store, "k", tenant="t", owner="j", progress=Progress())
    assert entries(c) == [] and c.size_bytes == 0


async def test_resume_after_crash(tmp_path: Path) -> None:
    c, _ = new_cache(tmp_path)
    await c.start()
    stop = asyncio.Event()
    hold = asyncio.Event()

    async def gate(key: str, pos: int) -> None:
        if pos >= 2 * MiB:
            stop.set()
            await hold.wait()

    inner = FakeObjectStore(gate=gate)
    data = blob(5 * MiB + 3)
    inner.put("k", data, checksum="CRC32")
    task = asyncio.create_task(c.fetch(inner, "k", tenant="t", owner="j", progress=Progress()))
    await stop.wait()
    task.cancel()  # the daemon dies: part file and sidecar stay
    with pytest.raises(asyncio.CancelledError):
        await task
    await c.close()
    rid = c.dir.entry_id(inner.endpoint, inner.bucket, "k", inner.objects["k"].etag)
    sidecar = json.loads((c.config.dir / f"{rid}.json").read_text())
    assert sidecar["State"] == "partial" and sidecar["Ranges"] == [[0, 2 * MiB - 1]]

    c2, _ = new_cache(tmp_path)
    await c2.start()
    inner.gate = None
    store = FailingObjectStore(inner)
    p = Progress()
    e = await c2.fetch(store, "k", tenant="t", owner="j", progress=p)
    assert sha(e.path.read_bytes()) == sha(data) and e.verified == ("CRC32",)
    assert min(g.start for g in store.gets) == 2 * MiB  # only the missing ranges
    assert p.resumed == 2 * MiB
    await c2.close()


async def test_unsynced_entries_do_not_survive_a_reboot(tmp_path: Path) -> None:
    c, _ = new_cache(tmp_path)
    await c.start()
    inner = FakeObjectStore()
    inner.put("a", blob(MiB, 1))
    ea = await c.fetch(inner, "a", tenant="t", owner="j", progress=Progress())
    await c.close()  # close syncs completed entries
    rid = c.dir.entry_id(inner.endpoint, inner.bucket, "a", ea.etag)
    rec = json.loads((c.config.dir / f"{rid}.json").read_text())
    assert rec["Synced"] is True
    rec["Synced"] = False  # as if the daemon died before its syncer got there
    (c.config.dir / f"{rid}.json").write_text(json.dumps(rec))
    c2, _ = new_cache(tmp_path, boot="boot-2")
    await c2.start()
    await asyncio.wait([c2._scan])  # type: ignore[list-item]
    assert c2.size_bytes == 0 and entries(c2) == []
    await c2.close()


async def test_lru_eviction_never_evicts_pinned(tmp_path: Path) -> None:
    c, obs = new_cache(tmp_path, max_size=3 * MiB)
    await c.start()
    inner = FakeObjectStore()
    for k in "abcde":
        inner.put(k, blob(MiB, ord(k)))
    for k in "abc":
        await c.fetch(inner, k, tenant="t", owner=f"job-{k}", progress=Progress())
    c.unpin_all("job-b")
    c.unpin_all("job-c")
    await c.fetch(inner, "b", tenant="t", owner="job-x", progress=Progress())  # b used last
    c.unpin_all("job-x")
    await c.fetch(inner, "d", tenant="t", owner="job-d", progress=Progress())
    assert obs.evictions == 1  # c: the least recently used unpinned (a is pinned)
    names = {e.key for e in c._entries.values()}
    assert names == {"a", "b", "d"} and c.size_bytes == 3 * MiB
    inner.put("big", blob(2 * MiB + 1))
    sent = inner.bytes_sent
    with pytest.raises(InsufficientStorage):  # only b is unpinned: evicting it is not enough
        await c.fetch(inner, "big", tenant="t", owner="job-big", progress=Progress())
    assert inner.bytes_sent == sent  # refused before any byte moved
    assert obs.evictions == 2 and c.size_bytes == 2 * MiB  # eviction was tried first
    await c.close()


async def test_min_free_disk(tmp_path: Path) -> None:
    c, _ = new_cache(tmp_path, free=2 * MiB)
    await c.start()
    inner = FakeObjectStore()
    inner.put("k", blob(2 * MiB))
    with pytest.raises(InsufficientStorage, match="min_free"):
        await c.fetch(inner, "k", tenant="t", owner="j", progress=Progress())
    assert inner.bytes_sent == 0
    await c.close()


async def test_close_fails_waiters_instead_of_hanging(tmp_path: Path) -> None:
    c, _ = new_cache(tmp_path)
    await c.start()
    entered = asyncio.Event()

    async def gate(key: str, pos: int) -> None:
        entered.set()
        await asyncio.Event().wait()  # never delivers

    inner = FakeObjectStore(gate=gate)
    inner.put("k", blob(2 * MiB))
    task = asyncio.create_task(c.fetch(inner, "k", tenant="t", owner="j", progress=Progress()))
    await entered.wait()
    await c.close()
    with pytest.raises(Cancelled):
        await task


def test_reserve_allocates_a_part_files_blocks_up_front(tmp_path: Path) -> None:
    fd = os.open(tmp_path / "part", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.ftruncate(fd, 8 * MiB)
        assert os.fstat(fd).st_blocks == 0, "ftruncate alone leaves the file sparse"
        reserve(fd, 8 * MiB)
        st = os.fstat(fd)
        assert st.st_blocks * 512 >= 8 * MiB and st.st_size == 8 * MiB
        assert os.pread(fd, 16, 4 * MiB) == bytes(16)
    finally:
        os.close(fd)


def test_reserve_says_when_the_disk_is_full_and_skips_where_it_cannot(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    answers: list[int] = []

    def fake_fallocate(fd: int, mode: int, offset: int, length: int) -> int:
        err = answers.pop(0)
        ctypes.set_errno(err)
        return -1 if err else 0

    monkeypatch.setattr(disk, "_fallocate", fake_fallocate)
    answers[:] = [errno.ENOSPC]
    with pytest.raises(OSError) as full:
        reserve(3, MiB)
    assert full.value.errno == errno.ENOSPC
    answers[:] = [errno.EOPNOTSUPP]
    reserve(3, MiB)  # a file system that cannot allocate ahead: nothing reserved, no error
    answers[:] = [errno.EINTR, 0]
    reserve(3, MiB)
    assert answers == [], "an interrupted call is made again"


# --- who may open a cache file (transfer/cache/acl.py on the test's own file system) ---


async def test_a_files_readers_are_the_union_of_its_live_owners(
    cache: tuple[Cache, Counts],
) -> None:
    c, _ = cache
    inner = FakeObjectStore()
    inner.put("k", blob(2 * MiB))
    e = await c.fetch(
        inner, "k", tenant="t", owner="job-a", progress=Progress(), readers=frozenset({1001})
    )
    assert acl.readers(e.path) == {1001}
    await c.fetch(
        inner, "k", tenant="t", owner="job-b", progress=Progress(), readers=frozenset({1002})
    )
    await c.fetch(
        inner, "k", tenant="t", owner="job-c", progress=Progress(), readers=frozenset({1002, 1003})
    )
    assert acl.readers(e.path) == {1001, 1002, 1003}
    c.unpin_all("job-a")
    assert acl.readers(e.path) == {1002, 1003}
    c.unpin_all("job-c")
    assert acl.readers(e.path) == {1002}, "job-b still grants 1002"
    c.unpin_all("job-b")
    assert acl.readers(e.path) == frozenset()
    assert stat.S_IMODE(e.path.stat().st_mode) == 0o600


async def test_a_download_grants_only_once_it_is_handed_over(cache: tuple[Cache, Counts]) -> None:
    c, _ = cache
    release, reached = asyncio.Event(), asyncio.Event()

    async def gate(key: str, pos: int) -> None:
        if pos >= MiB:
            reached.set()
            await release.wait()

    inner = FakeObjectStore(gate=gate)
    inner.put("k", blob(2 * MiB))
    one = asyncio.create_task(
        c.fetch(inner, "k", tenant="t", owner="j1", progress=Progress(), readers=frozenset({1001}))
    )
    await reached.wait()
    two = asyncio.create_task(
        c.fetch(inner, "k", tenant="t", owner="j2", progress=Progress(), readers=frozenset({1002}))
    )
    part = next(c.config.dir.glob("*.part"))
    assert acl.readers(part) == frozenset() and stat.S_IMODE(part.stat().st_mode) == 0o600
    release.set()
    e1, e2 = await asyncio.gather(one, two)
    assert e1.path == e2.path and acl.readers(e1.path) == {1001, 1002}


async def test_a_failed_second_fetch_keeps_the_owners_earlier_grant(
    cache: tuple[Cache, Counts],
) -> None:
    c, _ = cache
    inner = FakeObjectStore()
    inner.put("k", blob(MiB))
    e = await c.fetch(
        inner, "k", tenant="t", owner="j", progress=Progress(), readers=frozenset({1001})
    )
    meta = await inner.head("k")
    with pytest.raises(ValueError, match="out of range"):
        await c.fetch(
            inner,
            "k",
            tenant="t",
            owner="j",
            progress=Progress(),
            meta=meta,
            readers=frozenset({-5}),
        )
    assert acl.readers(e.path) == {1001}


async def test_close_and_a_restart_strip_every_grant(tmp_path: Path) -> None:
    c, _ = new_cache(tmp_path)
    await c.start()
    inner = FakeObjectStore()
    inner.put("a", blob(MiB, 1))
    inner.put("b", blob(MiB, 2))
    ea = await c.fetch(
        inner, "a", tenant="t", owner="j", progress=Progress(), readers=frozenset({1001})
    )
    eb = await c.fetch(
        inner, "b", tenant="t", owner="j", progress=Progress(), readers=frozenset({1002})
    )
    await c.close()
    assert acl.readers(ea.path) == frozenset() == acl.readers(eb.path)

    # A daemon killed before its close left a grant: the next start takes it away.
    acl.set_readers(ea.path, [1001])
    ea.path.chmod(0o640)  # and an older version made files group-readable
    acl.set_readers(eb.path, [])
    eb.path.chmod(0o640)
    c2, _ = new_cache(tmp_path)
    await c2.start()
    await asyncio.wait([c2._scan])  # type: ignore[list-item]
    for p in (ea.path, eb.path):
        assert acl.readers(p) == frozenset() and stat.S_IMODE(p.stat().st_mode) == 0o600
    assert c2.size_bytes == 2 * MiB, "the entries themselves stay"
    await c2.close()


async def test_an_entry_handed_out_during_the_scan_keeps_its_grant(tmp_path: Path) -> None:
    c, _ = new_cache(tmp_path)
    await c.start()
    inner = FakeObjectStore()
    for k in "abcdefgh":
        inner.put(k, blob(64 * 1024, ord(k)))
        await c.fetch(inner, k, tenant="t", owner="j", progress=Progress())
    await c.close()
    c2, _ = new_cache(tmp_path)
    await c2.start()
    assert c2._scan is not None and not c2._scan.done()
    e = await c2.fetch(
        inner, "h", tenant="t", owner="j2", progress=Progress(), readers=frozenset({1001})
    )
    await asyncio.wait([c2._scan])
    assert acl.readers(e.path) == {1001}
    await c2.close()


async def test_a_revoke_that_fails_removes_the_entry(
    cache: tuple[Cache, Counts], monkeypatch: pytest.MonkeyPatch
) -> None:
    c, _ = cache
    inner = FakeObjectStore()
    inner.put("k", blob(MiB))
    e = await c.fetch(
        inner, "k", tenant="t", owner="j", progress=Progress(), readers=frozenset({1001})
    )

    def broken(file: object, uids: object) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(acl, "set_readers", broken)
    c.unpin_all("j")
    assert not e.path.exists(), "fail closed: the path no longer opens for anyone"
    assert c.size_bytes == 0


async def test_group_sharing_without_acls_refuses_to_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The real file system without ACLs (ramfs) is in tests/integration/test_cache_acl.py.
    monkeypatch.setattr(acl, "supported", lambda d: False)
    engine = Engine(TransferConfig(part_size=MiB))
    group = grp.getgrgid(os.getgid()).gr_name
    shared = Cache(CacheConfig(dir=tmp_path / "c1", group=group, min_free=0), engine, Counts())
    with pytest.raises(acl.AclUnsupported, match=r"\[cache\] group.*mount it with ACLs.*unset"):
        await shared.start()
    alone = Cache(CacheConfig(dir=tmp_path / "c2", min_free=0), engine, Counts())
    await alone.start()  # no group: the files are the daemon's alone, ACLs or not
    inner = FakeObjectStore()
    inner.put("k", blob(MiB))
    e = await alone.fetch(
        inner, "k", tenant="t", owner="j", progress=Progress(), readers=frozenset({1001})
    )
    assert acl.readers(e.path) == frozenset() and stat.S_IMODE(e.path.stat().st_mode) == 0o600
    await alone.close()


# --- failure paths (issue 13) ---


async def test_a_failing_fsync_is_retried_and_does_not_stop_the_syncer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    obs = Counts()
    engine = Engine(TransferConfig(part_size=MiB), obs, sleep=no_sleep)
    cfg = CacheConfig(dir=tmp_path / "cache", max_size=TiB, min_free=0)
    c = Cache(cfg, engine, obs, disk_free=lambda p: TiB, sync_delay=0, sync_retry=0)
    await c.start()
    inner = FakeObjectStore()
    for k in "abc":
        inner.put(k, blob(MiB, ord(k)))
    ids = {k: c.dir.entry_id(inner.endpoint, inner.bucket, k, inner.objects[k].etag) for k in "abc"}
    attempts = {rid: 0 for rid in ids.values()}
    synced: set[str] = set()
    done = asyncio.Event()
    real_fsync, real_write = c.dir.fsync, c.dir.write_record

    def check() -> None:
        if synced == {ids["b"], ids["c"]} and attempts[ids["a"]] == sync.SYNC_ATTEMPTS:
            done.set()  # (fsync runs in a worker thread)

    def fsync(path: Path) -> None:
        rid = path.name.split(".")[0]
        attempts[rid] += 1
        loop.call_soon_threadsafe(check)
        if rid == ids["a"] or (rid == ids["b"] and attempts[rid] == 1):
            raise OSError(errno.EIO, "Input/output error")  # a always, b once
        real_fsync(path)

    def write_record(rec: disk.Record) -> None:
        real_write(rec)
        if rec.synced:
            synced.add(rec.id)
        loop.call_soon_threadsafe(check)  # (records are written by the file worker thread)

    loop = asyncio.get_running_loop()

    monkeypatch.setattr(c.dir, "fsync", fsync)
    monkeypatch.setattr(c.dir, "write_record", write_record)
    for k in "abc":
        await c.fetch(inner, k, tenant="t", owner="j", progress=Progress())
    await asyncio.wait_for(done.wait(), 10)
    for _ in range(5):
        await asyncio.sleep(0)
    assert attempts[ids["a"]] == sync.SYNC_ATTEMPTS, "bounded: a is left unsynced"
    assert attempts[ids["b"]] == 2 and attempts[ids["c"]] == 1
    assert c._syncer is not None and not c._syncer.done()
    monkeypatch.setattr(c.dir, "fsync", real_fsync)
    await c.close()


@pytest.mark.parametrize("length", [0, 16, 33])
async def test_a_key_file_of_the_wrong_length_is_replaced_and_the_entries_dropped(
    tmp_path: Path, length: int
) -> None:
    c, _ = new_cache(tmp_path)
    await c.start()
    inner = FakeObjectStore()
    inner.put("k", blob(MiB))
    await c.fetch(inner, "k", tenant="t", owner="j", progress=Progress())
    await c.close()
    (c.config.dir / ".secret").write_bytes(b"\x01" * length)
    c2, _ = new_cache(tmp_path)
    await c2.start()
    secret = (c2.config.dir / ".secret").read_bytes()
    assert len(secret) == disk.SECRET_BYTES and secret != b"\x01" * length
    assert entries(c2) == [], "names keyed with the lost secret are gone"
    assert c2.size_bytes == 0
    p = Progress()
    await c2.fetch(inner, "k", tenant="t", owner="j", progress=p)
    assert p.bytes_done == MiB and inner.bytes_sent == 2 * MiB, "downloaded again"
    await c2.close()


def test_the_key_file_is_written_atomically_and_durably(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    d = disk.CacheDir(tmp_path / "cache", "boot")
    d.open(None)
    secret = (d.path / ".secret").read_bytes()
    assert len(secret) == disk.SECRET_BYTES
    assert synced == [str(d.path / ".secret.tmp"), str(d.path)], "the file, then the rename"
    assert [p.name for p in d.path.iterdir()] == [".secret"]
    assert stat.S_IMODE((d.path / ".secret").stat().st_mode) == 0o600
    synced.clear()
    again = disk.CacheDir(tmp_path / "cache", "boot")
    again.open(None)
    assert synced == [] and (d.path / ".secret").read_bytes() == secret, "a good one is kept"


def _du_disk(capacity: int) -> Callable[[Path], int]:
    """Free space of a disk that holds only the cache: what its files allocate."""

    def free(path: Path) -> int:
        return capacity - sum(p.stat().st_blocks * 512 for p in path.iterdir())

    return free


@pytest.mark.parametrize("fallocate", [True, False], ids=["fallocate", "no-fallocate"])
async def test_min_free_holds_with_downloads_that_have_not_written_yet(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fallocate: bool
) -> None:
    if not fallocate:  # a file system that cannot allocate ahead
        monkeypatch.setattr(disk, "_fallocate", lambda *a: ctypes.set_errno(errno.EOPNOTSUPP) or -1)
    release = asyncio.Event()
    reached = {k: asyncio.Event() for k in "abc"}

    async def gate(key: str, pos: int) -> None:
        if pos >= MiB:
            reached[key].set()
            await release.wait()

    obs = Counts()
    engine = Engine(TransferConfig(part_size=MiB, concurrency=2), obs, sleep=no_sleep)
    cfg = CacheConfig(dir=tmp_path / "cache", max_size=TiB, min_free=MiB)
    free = _du_disk(MiB + 5 * MiB + 64 * 1024)  # min_free + room for 5 MiB (+ the records)
    c = Cache(cfg, engine, obs, disk_free=free)
    await c.start()
    inner = FakeObjectStore(gate=gate, chunk_size=256 * 1024)
    for k in "abc":
        inner.put(k, blob(2 * MiB, ord(k)))
    a = asyncio.create_task(c.fetch(inner, "a", tenant="t", owner="j", progress=Progress()))
    await reached["a"].wait()
    b = asyncio.create_task(c.fetch(inner, "b", tenant="t", owner="j", progress=Progress()))
    await reached["b"].wait()
    with pytest.raises(InsufficientStorage, match="still write"):  # (a hang if admitted)
        await asyncio.wait_for(c.fetch(inner, "c", tenant="t", owner="j", progress=Progress()), 10)
    release.set()
    await asyncio.gather(a, b)
    assert free(cfg.dir) >= cfg.min_free
    await c.close()


async def test_min_free_holds_under_concurrent_new_fetches(tmp_path: Path) -> None:
    # All three pass the free-space check before any of them has reserved a block.
    c, _ = new_cache(tmp_path, free=MiB + 5 * MiB)
    await c.start()
    await asyncio.wait([c._scan])  # type: ignore[list-item]
    inner = FakeObjectStore()
    metas = []
    for k in "abc":
        inner.put(k, blob(2 * MiB, ord(k)))
        metas.append(await inner.head(k))
    results = await asyncio.gather(
        *(c.fetch(inner, m.key, tenant="t", owner="j", progress=Progress(), meta=m) for m in metas),
        return_exceptions=True,
    )
    assert [type(r).__name__ for r in results] == [
        "CacheEntry",
        "CacheEntry",
        "InsufficientStorage",
    ]
    await c.close()


async def test_more_readers_than_the_file_system_keeps_is_a_clear_refusal(
    cache: tuple[Cache, Counts],
) -> None:
    # 9000 uids are 72 KB of ACL: above any file system's 64 KiB xattr limit
    # (ext4 keeps ~500 entries per file, tmpfs 8187: measured).
    c, _ = cache
    inner = FakeObjectStore()
    inner.put("k", blob(MiB))
    first = frozenset(range(2000, 2010))
    e = await c.fetch(inner, "k", tenant="t", owner="job-a", progress=Progress(), readers=first)
    with pytest.raises(InsufficientStorage, match="cannot name 9010 reader uids"):
        await c.fetch(
            inner,
            "k",
            tenant="t",
            owner="job-b",
            progress=Progress(),
            readers=frozenset(range(10_000, 19_000)),
        )
    assert acl.readers(e.path) == first, "job-a keeps exactly what it had"
    with pytest.raises(InsufficientStorage):  # job-a asking for more: same, nothing lost
        await c.fetch(
            inner,
            "k",
            tenant="t",
            owner="job-a",
            progress=Progress(),
            readers=frozenset(range(20_000, 29_000)),
        )
    assert acl.readers(e.path) == first
    c.unpin_all("job-a")
    assert acl.readers(e.path) == frozenset()


# --- file calls off the event loop (docs/design.md, Cache) ---


async def test_a_downloads_file_calls_run_on_the_file_worker_in_order(tmp_path: Path) -> None:
    c, _ = new_cache(tmp_path, max_size=3 * MiB)  # a sidecar after every range
    await c.start()
    loop_thread = threading.get_ident()
    calls: list[tuple[str, int, object]] = []
    for name in ("write_record", "open_part", "finish", "remove"):
        real = getattr(c.dir, name)

        def wrapped(*args: Any, _real: Any = real, _name: str = name) -> Any:
            state = args[0].state if _name in ("write_record", "finish") else None
            calls.append((_name, threading.get_ident(), state))
            return _real(*args)

        setattr(c.dir, name, wrapped)
    inner = FakeObjectStore()
    inner.put("a", blob(2 * MiB, 1))
    inner.put("b", blob(2 * MiB, 2))
    await c.fetch(inner, "a", tenant="t", owner="j", progress=Progress())
    c.unpin_all("j")
    await c.fetch(inner, "b", tenant="t", owner="j", progress=Progress())  # evicts a
    names = [name for name, _, _ in calls]
    assert {"write_record", "open_part", "finish", "remove"} <= set(names)
    assert all(thread != loop_thread for _, thread, _ in calls), "nothing on the loop"
    first = names[: names.index("finish") + 1]  # the download of a
    assert first[:2] == ["write_record", "open_part"] and first.count("write_record") >= 3
    sidecars = [state for name, _, state in calls[: len(first) - 1] if name == "write_record"]
    assert all(s is disk.EntryState.PARTIAL for s in sidecars), "sidecars land first"
    assert calls[len(first) - 1][2] is disk.EntryState.COMPLETE
    assert entries(c) == sorted(
        f"{c.dir.entry_id(inner.endpoint, inner.bucket, 'b', inner.objects['b'].etag)}.{x}"
        for x in ("data", "json")
    )
    await c.close()


async def test_a_download_cancelled_while_its_part_file_opens_closes_it(tmp_path: Path) -> None:
    c, _ = new_cache(tmp_path)
    await c.start()
    loop = asyncio.get_running_loop()
    entered, release = asyncio.Event(), threading.Event()
    opened: list[int] = []
    real_open = c.dir.open_part

    def open_part(rid: str, size: int) -> tuple[int, bool]:
        loop.call_soon_threadsafe(entered.set)
        release.wait(10)
        fd, allocated = real_open(rid, size)
        opened.append(fd)
        return fd, allocated

    c.dir.open_part = open_part  # type: ignore[method-assign]
    inner = FakeObjectStore()
    inner.put("k", blob(MiB))
    fetch = asyncio.create_task(c.fetch(inner, "k", tenant="t", owner="j", progress=Progress()))
    await entered.wait()
    fetch.cancel()  # the only waiter leaves: the flight is cancelled
    await asyncio.wait([fetch])
    release.set()
    await c.close()  # drains the file worker
    assert len(opened) == 1
    with pytest.raises(OSError) as err:
        os.fstat(opened[0])
    assert err.value.errno == errno.EBADF


async def test_a_failed_download_is_not_restarted_while_its_files_are_removed(
    tmp_path: Path,
) -> None:
    c, _ = new_cache(tmp_path)
    await c.start()
    loop = asyncio.get_running_loop()
    removing, release = asyncio.Event(), threading.Event()
    real_remove = c.dir.remove

    def remove(rid: str) -> None:
        loop.call_soon_threadsafe(removing.set)
        release.wait(10)
        real_remove(rid)

    c.dir.remove = remove  # type: ignore[method-assign]
    inner = FakeObjectStore()
    inner.put("k", blob(4 * MiB))
    a = FailingObjectStore(inner, {2: Fault("source_changed")})
    b = FailingObjectStore(inner)
    t1 = asyncio.create_task(c.fetch(a, "k", tenant="t1", owner="j1", progress=Progress()))
    t2 = asyncio.create_task(c.fetch(b, "k", tenant="t2", owner="j2", progress=Progress()))
    await removing.wait()  # a's download saw SourceChanged; its files are going
    t1.cancel()  # the waiter whose store the flight used leaves meanwhile
    await asyncio.wait([t1])
    release.set()
    with pytest.raises(SourceChanged):
        await t2  # the other waiter gets the outcome, not a resume over removed files
    assert b.gets == [] and entries(c) == [] and c.size_bytes == 0
    await c.close()


async def test_a_cache_file_deleted_behind_the_daemons_back_is_fetched_again(
    cache: tuple[Cache, Counts],
) -> None:
    c, _ = cache
    inner = FakeObjectStore()
    data = blob(2 * MiB + 1)
    inner.put("k", data)
    e = await c.fetch(inner, "k", tenant="t", owner="j1", progress=Progress())
    e.path.unlink()  # an operator or a tmp cleaner
    assert c.lookup(inner, "k", e.etag) is None, "a stream does not take it for complete"
    sent = inner.bytes_sent
    again = await c.fetch(inner, "k", tenant="t", owner="j2", progress=Progress())
    assert again.path.read_bytes() == data
    assert inner.bytes_sent == sent + len(data)
