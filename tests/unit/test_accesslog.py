"""daemon/api/accesslog.py: the malformed-request limit, on a fake clock."""

from __future__ import annotations

from s3feed.daemon.api.accesslog import MalformedLimit


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_is_logged_then_held_back_then_summarised() -> None:
    clock = Clock()
    limit = MalformedLimit(burst=3, window=60.0, clock=clock)
    assert [limit.admit() for _ in range(5)] == [0, 0, 0, None, None]
    clock.now += 59.9
    assert limit.admit() is None  # still the same window
    clock.now += 0.1
    assert limit.admit() == 3  # the first of a new window says how many were held back
    assert [limit.admit() for _ in range(3)] == [0, 0, None]
