"""The refresh policy of docs/design.md (Credentials) as pure functions (auth/schedule.py)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from s3feed.auth.schedule import backoff_delay, refresh_at, refresh_window

T0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("length", "window"),
    [
        (900, 300),
        (1200, 300),  # L <= 20 min
        (1201, 900),
        (3600, 900),
        (5399, 900),  # L < 90 min
        (5400, 3600),
        (7200, 3600),
        (43200, 3600),
    ],
)
def test_window_by_session_length(length: int, window: int) -> None:
    assert refresh_window(length) == window


class EdgeRandom(random.Random):
    """uniform() answers one end of its range."""

    def __init__(self, high: bool) -> None:
        super().__init__(0)
        self.high = high

    def uniform(self, a: float, b: float) -> float:
        return b if self.high else a


@pytest.mark.parametrize(
    ("length", "earliest", "latest"),
    [(900, 900 - 330, 900 - 300), (3600, 3600 - 990, 3600 - 900), (43200, 43200 - 3960, 39600)],
)
def test_refresh_at_window_edges(length: int, earliest: int, latest: int) -> None:
    expires = T0 + timedelta(seconds=length)
    late = refresh_at(
        received_at=T0, expires_at=expires, session_seconds=length, rng=EdgeRandom(False)
    )
    early = refresh_at(
        received_at=T0, expires_at=expires, session_seconds=length, rng=EdgeRandom(True)
    )
    assert late == T0 + timedelta(seconds=latest)
    assert early == T0 + timedelta(seconds=earliest)


@pytest.mark.parametrize("life", [1, 60, 120, 600])
def test_short_lived_credentials_refresh_at_half_life(life: int) -> None:
    """Asked for an hour, got `life` seconds: refresh at half of what we got."""
    expires = T0 + timedelta(seconds=life)
    when = refresh_at(
        received_at=T0, expires_at=expires, session_seconds=3600, rng=random.Random(1)
    )
    assert when == T0 + timedelta(seconds=life / 2)


def test_already_expired_credentials_refresh_at_once() -> None:
    when = refresh_at(
        received_at=T0,
        expires_at=T0 - timedelta(seconds=10),
        session_seconds=900,
        rng=random.Random(),
    )
    assert when <= T0


@given(
    length=st.integers(900, 43200),
    life_fraction=st.floats(0.001, 1.0),
    seed=st.integers(0, 2**32),
)
def test_never_in_first_half_and_never_later_than_the_window(
    length: int, life_fraction: float, seed: int
) -> None:
    life = length * life_fraction
    expires = T0 + timedelta(seconds=life)
    when = refresh_at(
        received_at=T0, expires_at=expires, session_seconds=length, rng=random.Random(seed)
    )
    window = refresh_window(length)
    half_life = T0 + (expires - T0) / 2
    assert when >= half_life
    assert when <= max(expires - timedelta(seconds=window), half_life)
    assert when < expires


@given(attempt=st.integers(0, 200), seed=st.integers(0, 2**32))
def test_backoff_is_full_jitter_capped(attempt: int, seed: int) -> None:
    delay = backoff_delay(attempt, random.Random(seed), base=1.0, cap=60.0)
    assert 0.0 <= delay <= min(60.0, 2.0**attempt)


def test_backoff_grows_until_the_cap() -> None:
    high = EdgeRandom(True)
    assert [backoff_delay(n, high) for n in range(8)] == [1, 2, 4, 8, 16, 32, 60, 60]
    with pytest.raises(ValueError):
        backoff_delay(-1, high)
