"""daemon/api/limits.py: each per-uid limit at its edge, with a hand-driven clock."""

from __future__ import annotations

import pytest

from s3feed.daemon.api.limits import UidLimits
from s3feed.daemon.config import LimitsConfig
from s3feed.daemon.errors import ApiError


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def limits(**config: int) -> tuple[UidLimits, Clock]:
    clock = Clock()
    return UidLimits(LimitsConfig(**config), monotonic=clock), clock


def refused(exc: pytest.ExceptionInfo[ApiError], key: str, value: int) -> None:
    assert exc.value.code == "LimitExceeded"
    assert f"[limits] {key} = {value}" in exc.value.message


def test_connections_at_the_edge() -> None:
    lim, _ = limits(connections_per_uid=3)
    refusals: list[str] = []
    lim._refused = refusals.append
    for _ in range(3):
        lim.open_connection(1000)
    with pytest.raises(ApiError) as exc:
        lim.open_connection(1000)
    refused(exc, "connections_per_uid", 3)
    assert "Retry-After" not in exc.value.headers
    assert refusals == ["connections_per_uid"]
    lim.open_connection(1001)  # another uid has its own count
    lim.open_connection(0)  # root too
    lim.close_connection(1000)
    lim.open_connection(1000)
    assert lim.usage(1000) == (3, 0, 0)


def test_streams_at_the_edge_and_released_on_error() -> None:
    lim, _ = limits(streams_per_uid=2)
    with lim.stream(7), lim.stream(7):
        with pytest.raises(ApiError) as exc, lim.stream(7):
            pass
        refused(exc, "streams_per_uid", 2)
        with lim.stream(8):
            assert lim.usage(8) == (0, 1, 0)
    assert lim.usage(7) == (0, 0, 0)
    with pytest.raises(OSError), lim.stream(7):
        raise OSError("the client went away")
    with lim.stream(7), lim.stream(7):
        assert lim.usage(7) == (0, 2, 0)


def test_jobs_count_live_ones_and_registrations_in_flight() -> None:
    lim, _ = limits(jobs_per_uid=3)
    with lim.job_creation(5, live_jobs=1), lim.job_creation(5, live_jobs=1):
        with pytest.raises(ApiError) as exc, lim.job_creation(5, live_jobs=1):
            pass
        refused(exc, "jobs_per_uid", 3)
    with pytest.raises(ApiError), lim.job_creation(5, live_jobs=3):
        pass
    with lim.job_creation(5, live_jobs=2):  # one was deleted
        pass


def test_creation_rate_is_a_bucket_refilled_over_a_minute() -> None:
    lim, clock = limits(job_creates_per_minute_per_uid=4)
    for _ in range(4):
        with lim.job_creation(9, live_jobs=0):
            pass
    with pytest.raises(ApiError) as exc, lim.job_creation(9, live_jobs=0):
        pass
    refused(exc, "job_creates_per_minute_per_uid", 4)
    assert exc.value.headers["Retry-After"] == "15"  # one token per 60/4 s
    with lim.job_creation(10, live_jobs=0):  # another uid's bucket is full
        pass
    clock.now += 14.0
    with pytest.raises(ApiError) as exc, lim.job_creation(9, live_jobs=0):
        pass
    assert exc.value.headers["Retry-After"] == "1"
    clock.now += 1.0
    with lim.job_creation(9, live_jobs=0):
        pass
    clock.now += 3600.0  # refilled to the brim, not beyond
    for _ in range(4):
        with lim.job_creation(9, live_jobs=0):
            pass
    with pytest.raises(ApiError), lim.job_creation(9, live_jobs=0):
        pass


def test_a_refusal_by_count_costs_no_token() -> None:
    lim, _ = limits(jobs_per_uid=1, job_creates_per_minute_per_uid=2)
    for _ in range(5):
        with pytest.raises(ApiError) as exc, lim.job_creation(3, live_jobs=1):
            pass
        refused(exc, "jobs_per_uid", 1)
    for _ in range(2):
        with lim.job_creation(3, live_jobs=0):
            pass


def test_idle_uids_are_forgotten() -> None:
    lim, clock = limits(job_creates_per_minute_per_uid=1)
    for uid in range(100):
        lim.open_connection(uid)
        lim.close_connection(uid)
        with lim.job_creation(uid, live_jobs=0):
            pass
    assert not lim._usage
    clock.now += 61.0
    with lim.job_creation(100, live_jobs=0):
        pass
    assert len(lim._buckets) == 1


def test_uploads_at_the_edge_and_released_on_error() -> None:
    lim, _ = limits(uploads_per_uid=2, streams_per_uid=1)
    refusals: list[str] = []
    lim._refused = refusals.append
    with lim.upload(7), lim.upload(7):
        with pytest.raises(ApiError) as exc, lim.upload(7):
            pass
        refused(exc, "uploads_per_uid", 2)
        assert "Retry-After" not in exc.value.headers
        assert refusals == ["uploads_per_uid"]
        with lim.stream(7):  # streams are counted apart
            assert (lim.usage(7), lim.uploads(7)) == ((0, 1, 0), 2)
        with lim.upload(8):  # another uid has its own count
            assert lim.uploads(8) == 1
    assert lim.uploads(7) == 0
    with pytest.raises(OSError), lim.upload(7):
        raise OSError("the client went away")
    assert lim.uploads(7) == 0 and not lim._usage
    with lim.upload(7), lim.upload(7):
        assert lim.uploads(7) == 2
