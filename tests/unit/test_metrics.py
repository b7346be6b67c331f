"""daemon/metrics.py: names, zero series from the start, the earliest-expiry gauge."""

from __future__ import annotations

from datetime import UTC, datetime

from prometheus_client import CollectorRegistry, generate_latest

from s3feed.daemon.metrics import Metrics
from s3feed.transfer.config import MiB, TransferConfig
from s3feed.transfer.engine import Engine
from s3feed.transfer.stream import ObjectStream
from tests.fakes.store import FakeObjectStore


def _text(metrics: Metrics) -> str:
    return generate_latest(metrics.registry).decode()


def test_series_exist_at_zero_from_the_start() -> None:
    text = _text(Metrics(CollectorRegistry(), "1.2.3"))
    assert 's3feed_build_info{version="1.2.3"} 1.0' in text
    assert 's3feed_transfers_total{mode="stream",outcome="failed"} 0.0' in text
    assert 's3feed_range_retries_total{reason="stall"} 0.0' in text
    assert 's3feed_s3_requests_total{op="GetObject"} 0.0' in text
    assert "s3feed_assume_role_total 0.0" in text
    assert "process_resident_memory_bytes" in text


def _value(metrics: Metrics, name: str) -> float | None:
    for line in _text(metrics).splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def test_earliest_expiry_is_absent_without_jobs_and_the_minimum_with() -> None:
    metrics = Metrics(CollectorRegistry(), "0")
    name = "s3feed_credentials_earliest_expiry_timestamp_seconds"
    one, noon = (datetime(2026, 11, 28, h, 0, tzinfo=UTC) for h in (13, 12))
    assert name not in _text(metrics)
    metrics.expiry_changed("a", one)
    metrics.expiry_changed("b", noon)
    assert _value(metrics, name) == noon.timestamp()
    metrics.expiry_changed("b", None)
    assert _value(metrics, name) == one.timestamp()
    metrics.expiry_changed("a", None)
    assert name not in _text(metrics)


def test_observers_move_the_right_series() -> None:
    metrics = Metrics(CollectorRegistry(), "0")
    metrics.assume_role()
    metrics.assume_role_failed("AccessDenied")
    metrics.bytes_received("acme-films", 100)
    metrics.transfer_started("cache")
    metrics.transfer_finished("cache", "success", 1.5)
    metrics.range_retry("throttled")
    text = _text(metrics)
    assert "s3feed_assume_role_total 1.0" in text
    assert 's3feed_assume_role_failures_total{code="AccessDenied"} 1.0' in text
    assert 's3feed_received_bytes_total{tenant="acme-films"} 100.0' in text
    assert 's3feed_transfers_active{mode="cache"} 0.0' in text
    assert 's3feed_transfers_total{mode="cache",outcome="success"} 1.0' in text
    assert 's3feed_range_retries_total{reason="throttled"} 1.0' in text


async def test_stream_memory_budget_and_use() -> None:
    metrics = Metrics(CollectorRegistry(), "0")
    engine = Engine(TransferConfig(part_size=MiB, stream_memory=64 * MiB), metrics)
    assert _value(metrics, "s3feed_stream_memory_budget_bytes") == 64 * MiB
    assert _value(metrics, "s3feed_stream_memory_used_bytes") == 0
    store = FakeObjectStore()
    store.put("k", b"x" * (3 * MiB))
    async with ObjectStream(engine, store, "k", tenant="t") as s:
        await anext(aiter(s))
        assert _value(metrics, "s3feed_stream_memory_used_bytes") == MiB  # a part, at first
    assert _value(metrics, "s3feed_stream_memory_used_bytes") == 0


async def test_the_learned_link_rate_and_gets_wanted() -> None:
    metrics = Metrics(CollectorRegistry(), "0")
    engine = Engine(TransferConfig(part_size=MiB, global_concurrency=16), metrics)
    assert _value(metrics, "s3feed_range_gets_wanted") == 0  # nothing learned yet
    engine.link.sample(20 * 10**6, 1.0, 1)  # as if a slow link's GET had been seen
    store = FakeObjectStore()
    store.put("k", b"x" * (3 * MiB))
    async with ObjectStream(engine, store, "k", tenant="t") as s:
        async for _ in s:
            pass
    rate = engine.link.per_connection
    assert rate is not None and rate >= 20 * 10**6
    assert _value(metrics, "s3feed_range_connection_rate_bytes_per_second") == rate
    assert _value(metrics, "s3feed_range_gets_wanted") == engine.inflight()
