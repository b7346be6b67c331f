"""Reads at any offset through the cache (transfer/cache/reads.py), with the fakes:
partial entries, read-ahead, pieces owned by their reader, completion and its check."""

from __future__ import annotations

import asyncio
import gc
import json
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from s3feed.transfer.cache.cache import Cache
from s3feed.transfer.cache.disk import EntryState, Record
from s3feed.transfer.cache.reads import FIRST_PIECE, OpenEntry
from s3feed.transfer.config import CacheConfig, MiB, TransferConfig
from s3feed.transfer.engine import Engine
from s3feed.transfer.errors import ChecksumMismatch
from s3feed.transfer.objectserver import ObjectServer
from s3feed.transfer.observer import NullTransferObserver
from s3feed.transfer.progress import Progress
from tests.fakes.store import FailingObjectStore, FakeObjectStore

PART = 4 * MiB


class Reads(NullTransferObserver):
    def __init__(self) -> None:
        self.read: dict[str, int] = {"cache": 0, "s3": 0}
        self.size = 0

    def read_bytes(self, source: str, n: int) -> None:
        self.read[source] += n

    def cache_size(self, size_bytes: int, capacity_bytes: int) -> None:
        self.size = size_bytes


async def no_sleep(d: float) -> None:
    await asyncio.sleep(0)


def new_server(path: Path, max_size: int = 1 << 40) -> tuple[ObjectServer, Reads]:
    obs = Reads()
    config = TransferConfig(part_size=PART, concurrency=2, stream_window=3 * PART)
    engine = Engine(config, obs, sleep=no_sleep)
    cache = Cache(CacheConfig(dir=path / "cache", max_size=max_size, min_free=0), engine, obs)
    return ObjectServer(engine, cache, obs), obs


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[ObjectServer, Reads]]:
    server, obs = new_server(tmp_path)
    await server.cache.start()
    yield server, obs
    await server.cache.close()


def blob(n: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(n)


async def read(
    server: ObjectServer,
    store: FakeObjectStore | FailingObjectStore,
    key: str,
    first: int,
    last: int,
    *,
    through_cache: bool = True,
    stop_after: int | None = None,
) -> tuple[str, bytes]:
    delivery = await server.open(
        store,
        key,
        tenant="t",
        choose_range=lambda meta: (first, min(last, meta.size - 1)),
        through_cache=through_cache,
    )
    out = bytearray()
    async with delivery:
        async for chunk in delivery:
            out += chunk
            if stop_after is not None and len(out) >= stop_after:
                break
    return delivery.source, bytes(out)


def entry_record(server: ObjectServer) -> dict[str, object]:
    [path] = [p for p in server.cache.config.dir.iterdir() if p.suffix == ".json"]
    record: dict[str, object] = json.loads(path.read_bytes())
    return record


async def test_probe_two_passes_then_fetch_make_s3_send_the_object_once(
    served: tuple[ObjectServer, Reads],
) -> None:
    """ffprobe (head, then the index at the end), two encodes, then a fetch."""
    server, obs = served
    inner = FakeObjectStore()
    data = blob(10 * PART + 12345)
    inner.put("movie.mp4", data, part_size=PART, checksum="CRC32")
    size = len(data)

    assert await read(server, inner, "movie.mp4", 0, 64 * 1024 - 1) == ("s3", data[: 64 * 1024])
    tail = (size - 300_000, size - 1)
    assert (await read(server, inner, "movie.mp4", *tail))[1] == data[tail[0] :]
    assert (await read(server, inner, "movie.mp4", 0, size - 1))[1] == data  # pass 1
    sent = inner.bytes_sent
    assert size <= sent <= 1.1 * size, "a byte is fetched again only if its piece was cut short"
    source, again = await read(server, inner, "movie.mp4", 0, size - 1)  # pass 2
    assert (source, again, inner.bytes_sent) == ("cache", data, sent)

    auth = await server.authorise(inner, "movie.mp4")
    entry = await server.fetch(
        auth, tenant="t", owner="job", readers=frozenset(), progress=Progress()
    )
    assert inner.bytes_sent == sent, "the reads completed the entry: the fetch answers at once"
    assert entry.path.read_bytes() == data and entry.verified == ("CRC32-COMPOSITE",)
    assert obs.read["s3"] + obs.read["cache"] == 64 * 1024 + 300_000 + 2 * size
    assert obs.read["cache"] >= size, "the second pass came from the cache"


async def test_any_range_is_the_objects_bytes(served: tuple[ObjectServer, Reads]) -> None:
    server, _ = served
    inner = FakeObjectStore(rng=random.Random(3))
    data = blob(3 * PART + 777, seed=2)
    inner.put("k", data, checksum="CRC32C")
    rng = random.Random(4)
    for _ in range(40):
        first = rng.randrange(len(data))
        last = min(len(data) - 1, first + rng.choice([0, 1, 1000, MiB, 2 * PART]))
        assert (await read(server, inner, "k", first, last))[1] == data[first : last + 1]
    assert inner.bytes_sent <= 1.5 * len(data)


async def test_read_ahead_starts_small_and_grows_while_the_reader_waits(
    served: tuple[ObjectServer, Reads],
) -> None:
    server, _ = served
    inner = FakeObjectStore()
    data = blob(8 * PART)
    inner.put("k", data)
    store = FailingObjectStore(inner)
    assert (await read(server, store, "k", 0, len(data) - 1))[1] == data
    sizes = [c.end - c.start + 1 for c in store.gets if c.start is not None and c.end is not None]
    assert sizes[0] == FIRST_PIECE, "the first GET is small: S3 answers it sooner"
    assert max(sizes) == PART and sizes.index(PART) > 1, "pieces grow to a part"
    assert sum(sizes) == len(data)
    starts = [c.start for c in store.gets]
    assert starts == sorted(starts), "in order: each byte once"


async def test_a_seek_starts_over_small_and_the_reader_that_left_keeps_what_landed(
    served: tuple[ObjectServer, Reads],
) -> None:
    server, _ = served
    inner = FakeObjectStore()
    data = blob(8 * PART, seed=5)
    inner.put("k", data)
    store = FailingObjectStore(inner)
    # ffmpeg: an open-ended read closed early, then a new connection further on.
    _, got = await read(server, store, "k", 0, len(data) - 1, stop_after=2 * MiB)
    assert got[: 2 * MiB] == data[: 2 * MiB]
    after_first = len(store.gets)
    assert inner.bytes_sent < 4 * PART, "leaving cancels the read-ahead"
    seek = 6 * PART + 5
    assert (await read(server, store, "k", seek, len(data) - 1))[1] == data[seek:]
    assert store.gets[after_first].start == seek
    assert store.gets[after_first].end == seek + FIRST_PIECE - 1
    present = entry_record(server)["Ranges"]
    assert isinstance(present, list) and present[0][0] == 0 and present[-1][1] == len(data) - 1
    sent = inner.bytes_sent
    # What the first read left is not fetched again.
    assert (await read(server, store, "k", 0, MiB))[1] == data[: MiB + 1]
    assert inner.bytes_sent == sent


async def test_readers_of_one_entry_share_its_pieces(served: tuple[ObjectServer, Reads]) -> None:
    server, _ = served
    release = asyncio.Event()

    async def gate(key: str, pos: int) -> None:
        await release.wait()

    inner = FakeObjectStore(gate=gate)
    data = blob(4 * PART, seed=6)
    inner.put("k", data)
    a = asyncio.create_task(read(server, inner, "k", 0, len(data) - 1))
    b = asyncio.create_task(read(server, inner, "k", 0, len(data) - 1))
    await asyncio.sleep(0)
    release.set()
    assert [r[1] for r in await asyncio.gather(a, b)] == [data, data]
    assert inner.bytes_sent <= len(data) + FIRST_PIECE


async def test_a_waiting_reader_fetches_what_a_leaving_readers_piece_did_not(
    served: tuple[ObjectServer, Reads],
) -> None:
    server, _ = served
    first_gets = asyncio.Event()
    hold = asyncio.Event()

    async def gate(key: str, pos: int) -> None:
        if pos >= 256 * 1024:
            first_gets.set()
            await hold.wait()

    inner = FakeObjectStore(gate=gate, chunk_size=64 * 1024)
    data = blob(2 * PART, seed=7)
    inner.put("k", data)
    leaver = asyncio.create_task(read(server, inner, "k", 0, len(data) - 1))
    await first_gets.wait()  # the leaver's first piece is a quarter in
    stayer = asyncio.create_task(read(server, inner, "k", 0, len(data) - 1))
    await asyncio.sleep(0)
    leaver.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leaver
    hold.set()
    assert (await stayer)[1] == data
    assert inner.bytes_sent <= len(data) + 64 * 1024, "the landed quarter was kept"


async def test_a_partial_entry_survives_a_restart(tmp_path: Path) -> None:
    inner = FakeObjectStore()
    data = blob(4 * PART, seed=8)
    inner.put("k", data)
    server, _ = new_server(tmp_path)
    await server.cache.start()
    await read(server, inner, "k", PART, 2 * PART - 1)
    await server.cache.close()
    sent = inner.bytes_sent

    again, _ = new_server(tmp_path)
    await again.cache.start()
    try:
        assert (await read(again, inner, "k", PART, 2 * PART - 1))[1] == data[PART : 2 * PART]
        assert inner.bytes_sent == sent
        # A stream (not a URL read) uses the present bytes too.
        source, whole = await read(again, inner, "k", 0, len(data) - 1, through_cache=False)
        assert (source, whole) == ("mixed", data)
        assert inner.bytes_sent == sent + 3 * PART
    finally:
        await again.cache.close()


async def test_the_start_scan_leaves_an_entry_a_read_is_opening(tmp_path: Path) -> None:
    """The scan of a restart runs beside the first reads: one that reaches the
    directory while a read writes its entry's record must not take that
    record (or its tmp file) for an orphan's."""
    inner = FakeObjectStore()
    data = blob(2 * PART, seed=9)
    inner.put("k", data)
    server, _ = new_server(tmp_path)
    cache = server.cache
    await cache.start()
    write_record = cache.dir.write_record
    scanned: list[list[str]] = []

    def write_with_a_scan_beside(rec: Record) -> None:
        tmp = cache.dir.path / f"{rec.id}.json.tmp"
        tmp.write_bytes(b"{}")  # the moment between the tmp file and its rename
        scanned.append([r.id for r in cache.dir.scan(cache._busy)])
        assert tmp.exists(), "the scan removed the tmp file of a record being written"
        write_record(rec)
        scanned.append([r.id for r in cache.dir.scan(cache._busy)])

    cache.dir.write_record = write_with_a_scan_beside  # type: ignore[method-assign]
    try:
        assert (await read(server, inner, "k", 0, PART - 1))[1] == data[:PART]
        assert scanned[:2] == [[], []], "the entry being opened was left to its reader"
    finally:
        cache.dir.write_record = write_record  # type: ignore[method-assign]
        await cache.close()


async def test_a_partial_entry_counts_its_present_bytes_and_evicts_older_ones(
    tmp_path: Path,
) -> None:
    server, obs = new_server(tmp_path, max_size=3 * PART)
    await server.cache.start()
    try:
        inner = FakeObjectStore()
        for k in ("a", "b"):
            inner.put(k, blob(8 * PART, seed=ord(k)))
        await read(server, inner, "a", 0, PART - 1)
        assert server.cache.size_bytes == PART and obs.size == PART
        await read(server, inner, "b", 0, 2 * PART - 1)
        assert server.cache.size_bytes == 3 * PART
        await read(server, inner, "b", 2 * PART, 3 * PART - 1)  # "a" makes room
        assert server.cache.size_bytes == 3 * PART
        assert len([p for p in server.cache.config.dir.iterdir() if p.suffix == ".json"]) == 1
    finally:
        await server.cache.close()


async def test_a_wrong_checksum_fails_the_whole_read_before_its_last_bytes(
    served: tuple[ObjectServer, Reads],
) -> None:
    server, _ = served
    inner = FakeObjectStore()
    data = blob(3 * PART, seed=9)
    inner.put("k", data, checksum="CRC32")
    inner.objects["k"].data = data[:-1] + b"\x00"  # S3 says one CRC, sends other bytes
    got = bytearray()
    with pytest.raises(ChecksumMismatch):
        delivery = await server.open(
            inner, "k", tenant="t", choose_range=lambda meta: None, through_cache=True
        )
        async with delivery:
            async for chunk in delivery:
                got += chunk
    assert len(got) < len(data)
    assert [p for p in server.cache.config.dir.iterdir() if p.name != ".secret"] == []


async def test_a_fetch_during_reads_skips_what_they_brought(
    served: tuple[ObjectServer, Reads],
) -> None:
    server, _ = served
    inner = FakeObjectStore()
    data = blob(6 * PART, seed=10)
    inner.put("k", data, part_size=PART, checksum="CRC32")
    await read(server, inner, "k", 2 * PART, 4 * PART - 1)
    sent = inner.bytes_sent
    auth = await server.authorise(inner, "k")
    entry = await server.fetch(
        auth, tenant="t", owner="j", readers=frozenset(), progress=Progress()
    )
    assert entry.path.read_bytes() == data and entry.verified == ("CRC32-COMPOSITE",)
    assert inner.bytes_sent == sent + 4 * PART
    rec = server.cache._entries[entry.path.stem]
    assert rec.state is EntryState.COMPLETE


async def test_a_piece_cancelled_before_it_ran_does_not_hold_up_other_readers(
    served: tuple[ObjectServer, Reads],
) -> None:
    """A reader that leaves right after starting its read-ahead cancels pieces
    whose tasks never ran; another reader of those bytes fetches them itself."""
    server, _ = served
    inner = FakeObjectStore()
    data = blob(3 * PART, seed=11)
    inner.put("k", data)
    meta = await inner.head("k")
    stayer = await server.cache.open_reader(inner, meta, tenant="t")
    leaver = await server.cache.open_reader(inner, meta, tenant="t")
    assert stayer is not None and leaver is not None and stayer.entry is leaver.entry
    await leaver._schedule(0, 2 * PART - 1, len(data) - 1)  # pieces created, not yet run
    await leaver.close()
    got = bytearray()

    async def take() -> None:
        async for chunk in stayer.chunks(0, len(data) - 1):
            got.extend(chunk)

    await asyncio.wait_for(take(), 10)
    await stayer.close()
    assert got == data


class Checks:
    """What each completion check of a read's entry verified and read back
    from the part file (OpenEntry.verify, wrapped)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.done: list[tuple[list[str], int]] = []
        verify = OpenEntry.verify

        async def counted(
            entry: OpenEntry, parts: list[tuple[int, int]] | None, exact: bool
        ) -> list[str]:
            try:
                verified = await verify(entry, parts, exact)
            except ChecksumMismatch:
                self.done.append((["mismatch"], entry.reread))
                raise
            self.done.append((verified, entry.reread))
            return verified

        monkeypatch.setattr(OpenEntry, "verify", counted)


async def ffprobe_then_remux(server: ObjectServer, store: FakeObjectStore, key: str) -> bytes:
    """ffmpeg's way with a moov-at-end MP4: the head on a read closed early,
    the index at the end, then everything on a new connection."""
    size = len(store.objects[key].data)
    await read(server, store, key, 0, size - 1, stop_after=MiB + 1)
    await read(server, store, key, size - 300_000, size - 1)
    return (await read(server, store, key, 0, size - 1))[1]


@pytest.mark.parametrize(
    ("checksum", "part_size", "verified"),
    [
        ("CRC32", None, ["CRC32"]),
        ("CRC32C", PART, ["CRC32C-COMPOSITE"]),
        (None, PART, []),  # a multipart ETag and no checksum: nothing to check
    ],
)
async def test_completion_reads_back_nothing_the_pieces_hashed_as_they_landed(
    served: tuple[ObjectServer, Reads],
    monkeypatch: pytest.MonkeyPatch,
    checksum: str | None,
    part_size: int | None,
    verified: list[str],
) -> None:
    """Readers come and go (a cut piece, a reconnect after each seek): the
    CRCs of what they fetched outlive them, and completion reads no byte back."""
    server, _ = served
    checks = Checks(monkeypatch)
    inner = FakeObjectStore(rng=random.Random(12))
    data = blob(5 * PART + 4321, seed=12)
    inner.put("k", data, part_size=part_size, checksum=checksum)
    assert await ffprobe_then_remux(server, inner, "k") == data
    assert checks.done == [(verified, 0)]


async def test_an_md5_etag_is_hashed_behind_the_landed_bytes(
    served: tuple[ObjectServer, Reads], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, _ = served
    checks = Checks(monkeypatch)
    inner = FakeObjectStore()
    data = blob(3 * PART + 99, seed=13)
    inner.put("k", data)  # one part, no checksum: the ETag is its MD5
    assert await ffprobe_then_remux(server, inner, "k") == data
    [(kinds, reread)] = checks.done
    assert kinds == ["MD5"] and reread < len(data)
    rec = next(iter(server.cache._entries.values()))
    assert rec.state is EntryState.COMPLETE and rec.verified == ("MD5",)


async def test_a_wrong_md5_fails_the_read_and_drops_the_entry(
    served: tuple[ObjectServer, Reads], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, _ = served
    checks = Checks(monkeypatch)
    inner = FakeObjectStore()
    data = blob(2 * PART, seed=14)
    inner.put("k", data)
    inner.objects["k"].data = data[:PART] + b"\xff" + data[PART + 1 :]  # S3 sends other bytes
    with pytest.raises(ChecksumMismatch):
        await read(server, inner, "k", 0, len(data) - 1)
    assert [k for k, _ in checks.done] == [["mismatch"]]
    assert [p for p in server.cache.config.dir.iterdir() if p.name != ".secret"] == []


async def test_a_corrupt_byte_in_one_part_from_s3_fails_a_composite_check(
    served: tuple[ObjectServer, Reads],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server, _ = served
    checks = Checks(monkeypatch)
    inner = FakeObjectStore()
    data = blob(4 * PART, seed=15)
    inner.put("k", data, part_size=PART, checksum="CRC32C")
    bad = 2 * PART + 12345
    inner.objects["k"].data = data[:bad] + bytes([data[bad] ^ 1]) + data[bad + 1 :]
    with pytest.raises(ChecksumMismatch):
        await ffprobe_then_remux(server, inner, "k")
    assert checks.done == [(["mismatch"], 0)], "found from the pieces' CRCs, nothing read back"
    await asyncio.sleep(0)  # the pieces' done callbacks
    gc.collect()
    unretrieved = [r for r in caplog.records if "never retrieved" in r.getMessage()]
    assert unretrieved == [], "a failed piece nobody waited for is not logged as an error"


async def test_an_sse_kms_etag_is_not_taken_for_an_md5(
    served: tuple[ObjectServer, Reads], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, _ = served
    checks = Checks(monkeypatch)
    inner = FakeObjectStore()
    data = blob(2 * PART + 5, seed=16)
    inner.put("k", data, etag='"0123456789abcdef0123456789abcdef"', encryption="aws:kms")
    assert (await read(server, inner, "k", 0, len(data) - 1))[1] == data
    assert checks.done == [([], 0)]
    rec = next(iter(server.cache._entries.values()))
    assert rec.state is EntryState.COMPLETE


@pytest.mark.parametrize("corrupt", [False, True])
async def test_after_a_restart_only_the_part_that_landed_before_is_read_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, corrupt: bool
) -> None:
    checks = Checks(monkeypatch)
    inner = FakeObjectStore()
    data = blob(4 * PART, seed=17)
    etag = inner.put("k", data, part_size=PART, checksum="CRC32C")
    server, _ = new_server(tmp_path)
    await server.cache.start()
    await read(server, inner, "k", PART, 2 * PART - 1)
    rid = server.cache.dir.entry_id(inner.endpoint, inner.bucket, "k", etag)
    part_file = server.cache.dir.part_path(rid)
    await server.cache.close()
    if corrupt:  # the disk changed a byte while the daemon was down
        with part_file.open("r+b") as f:
            f.seek(PART + 77)
            byte = f.read(1)
            f.seek(PART + 77)
            f.write(bytes([byte[0] ^ 0x40]))

    again, _ = new_server(tmp_path)
    await again.cache.start()
    try:
        if corrupt:
            with pytest.raises(ChecksumMismatch):
                await read(again, inner, "k", 0, len(data) - 1)
            assert checks.done == [(["mismatch"], PART)]
        else:
            assert (await read(again, inner, "k", 0, len(data) - 1))[1] == data
            assert checks.done == [(["CRC32C-COMPOSITE"], PART)]
    finally:
        await again.cache.close()


async def test_a_reader_takes_a_pieces_bytes_as_they_land(
    served: tuple[ObjectServer, Reads],
) -> None:
    """A piece in flight hands its reader what it has written, a chunk at a
    time, before the whole GET is in."""
    server, _ = served
    hold = asyncio.Event()
    held = asyncio.Event()

    async def gate(key: str, pos: int) -> None:
        if pos >= MiB + 512 * 1024:
            held.set()
            await hold.wait()

    inner = FakeObjectStore(gate=gate)
    data = blob(2 * PART, seed=18)
    inner.put("k", data)
    meta = await inner.head("k")
    reader = await server.cache.open_reader(inner, meta, tenant="t")
    assert reader is not None
    reader._grow()
    reader._grow()  # a depth of 4 MiB: the first piece is 2 MiB
    got = bytearray()
    one_chunk = asyncio.Event()

    async def take() -> None:
        async for chunk in reader.chunks(0, len(data) - 1):
            got.extend(chunk)
            one_chunk.set()

    taking = asyncio.create_task(take())
    await held.wait()
    await asyncio.wait_for(one_chunk.wait(), 60)  # without streaming: never, the GET is held
    [piece] = [p for p in reader.entry.pieces if p.start == 0]
    assert piece.end == 2 * MiB - 1 and piece.task is not None and not piece.task.done()
    assert bytes(got) == data[:MiB], "the landed first MiB went out while its GET was held"
    hold.set()
    await taking
    await reader.close()
    assert got == data
