"""Waiters of one cache download that come and go: the one that leaves takes
only its own progress with it, and one that joins a download already moving
is moving at once (a fetch without wait answers then, not at the next bytes)."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

from test_cache import blob, new_cache, sha

from s3feed.transfer.config import MiB
from s3feed.transfer.progress import Progress
from tests.fakes.store import FailingObjectStore, FakeObjectStore


async def test_the_second_waiter_leaving_keeps_the_firsts_progress(tmp_path: Path) -> None:
    c, _ = new_cache(tmp_path)
    await c.start()
    release = asyncio.Event()
    holding = asyncio.Event()

    async def gate(key: str, pos: int) -> None:
        if pos > 0:
            holding.set()
            await release.wait()

    inner = FakeObjectStore(gate=gate, rng=random.Random(3))
    data = blob(4 * MiB, seed=7)
    inner.put("k", data)
    try:
        p1, p2 = Progress(), Progress()
        t1 = asyncio.create_task(
            c.fetch(FailingObjectStore(inner), "k", tenant="t", owner="j1", progress=p1)
        )
        await holding.wait()
        await p1.moving.wait()
        t2 = asyncio.create_task(
            c.fetch(FailingObjectStore(inner), "k", tenant="t", owner="j2", progress=p2)
        )
        async with asyncio.timeout(10):
            await p2.moving.wait()  # joined a moving download: moving already
        assert p1 == p2  # field by field: why leaving must remove by identity
        t2.cancel()
        await asyncio.wait([t2])
        assert t2.cancelled()
        release.set()
        entry = await t1  # before the fix: ValueError (p1 had been removed for p2)
        assert sha(entry.path.read_bytes()) == sha(data)
        assert p1.bytes_done == len(data) and p1.finished is not None
        assert p2.bytes_done < len(data)  # gone: no longer told
    finally:
        await c.close()


async def test_a_fetch_competes_as_the_transfer_it_joined_before_its_head(tmp_path: Path) -> None:
    """Cache.fetch(transfer=): the download it starts holds its GET slots as
    that owner (joined by the API before the job's HEAD, docs/design.md,
    Transfers: In flight); a second fetch of the same entry, and one that
    finds it complete, leave their joins at once: they download nothing, so
    they must not keep a share of the slots free."""
    c, _ = new_cache(tmp_path)
    await c.start()
    limiter = c.engine.limiter
    release = asyncio.Event()
    holding = asyncio.Event()

    async def gate(key: str, pos: int) -> None:
        holding.set()
        await release.wait()

    store = FakeObjectStore(gate=gate, rng=random.Random(3))
    data = blob(4 * MiB, seed=8)
    store.put("k", data)
    first, second = limiter.join(object()), limiter.join(object())
    try:
        t1 = asyncio.create_task(
            c.fetch(store, "k", tenant="t", owner="j1", progress=Progress(), transfer=first)
        )
        await holding.wait()
        assert first.owner in limiter._held  # the download's GETs are the first fetch's
        t2 = asyncio.create_task(
            c.fetch(store, "k", tenant="t", owner="j2", progress=Progress(), transfer=second)
        )
        async with asyncio.timeout(10):
            while second.owner in limiter._joined:
                await asyncio.sleep(0)
        assert first.owner in limiter._joined
        release.set()
        await asyncio.gather(t1, t2)
        first.leave()  # what the job's fetch task does when it ends
        assert not limiter._joined and not limiter._held
        third = limiter.join(object())
        entry = await c.fetch(
            store, "k", tenant="t", owner="j3", progress=Progress(), transfer=third
        )
        assert sha(entry.path.read_bytes()) == sha(data)
        assert not limiter._joined  # complete: left at once
    finally:
        release.set()
        await c.close()
