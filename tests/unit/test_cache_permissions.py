"""Cache files an encoder of another uid can open, and nothing more."""

from __future__ import annotations

import grp
import os
import stat
from pathlib import Path

from s3feed.transfer.cache.cache import Cache
from s3feed.transfer.config import CacheConfig, MiB, TransferConfig
from s3feed.transfer.engine import Engine
from s3feed.transfer.observer import NullTransferObserver
from s3feed.transfer.progress import Progress
from tests.fakes.store import FakeObjectStore


def _cache(path: Path, group: str | None) -> Cache:
    engine = Engine(TransferConfig(part_size=MiB))
    config = CacheConfig(dir=path, max_size=64 * MiB, min_free=0, group=group)
    return Cache(config, engine, NullTransferObserver(), disk_free=lambda _: 1 << 40)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_with_a_group_the_directory_is_traverse_only_and_files_are_0600(
    tmp_path: Path,
) -> None:
    group = grp.getgrgid(os.getgid()).gr_name
    cache = _cache(tmp_path / "cache", group)
    await cache.start()
    store = FakeObjectStore()
    store.put("k", b"x" * (2 * MiB))
    entry = await cache.fetch(store, "k", tenant="t", owner="j", progress=Progress())
    assert _mode(cache.config.dir) == 0o710, "traverse-only for the group"
    assert _mode(entry.path) == 0o600, "the group reads nothing without a job's grant"
    await cache.close()
    for f in cache.config.dir.iterdir():
        assert _mode(f) == 0o600, f.name


async def test_without_a_group_everything_is_the_daemons(tmp_path: Path) -> None:
    cache = _cache(tmp_path / "cache", None)
    await cache.start()
    store = FakeObjectStore()
    store.put("k", b"y" * 10)
    entry = await cache.fetch(store, "k", tenant="t", owner="j", progress=Progress())
    await cache.close()
    assert _mode(cache.config.dir) == 0o700
    assert _mode(entry.path) == 0o600


async def test_entry_names_cannot_be_computed_from_bucket_key_and_etag(tmp_path: Path) -> None:
    a, b = _cache(tmp_path / "a", None), _cache(tmp_path / "b", None)
    await a.start()
    await b.start()
    name_a = a.dir.entry_id("fake://", "b", "k", '"etag"')
    name_b = b.dir.entry_id("fake://", "b", "k", '"etag"')
    assert name_a != name_b, "each cache keys its names with its own secret"
    restarted = _cache(tmp_path / "a", None)
    await restarted.start()
    assert restarted.dir.entry_id("fake://", "b", "k", '"etag"') == name_a, "stable across restarts"
    for c in (a, b, restarted):
        await c.close()
