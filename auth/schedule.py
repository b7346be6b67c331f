"""When to refresh a role session, and how long to back off after a failure.

Pure functions of their inputs (time and a random source passed in), so the
policy of docs/design.md (Credentials) is tested directly, without a session:

- L = the session length that was granted (DurationSeconds after any
  fallback). Refresh window A = 5 min if L <= 20 min, 15 min if L < 90 min,
  else 60 min.
- Refresh at expiry - A - random(0, 0.1 A): the jitter spreads the refreshes
  of jobs registered together.
- Never in the first half of the credentials' actual remaining life, counted
  from when they arrived: credentials can come with much less life than
  asked (a proxy, a clock skew, a chained role), and then the session
  refreshes at half-life instead of at once and in a loop.

botocore's own fixed windows (refresh 15 min before expiry, mandatory at 10)
would make a 900 s session refresh on every request; this is why the
session refreshes itself and hands botocore fresh credentials.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta

MINUTE = 60.0


def refresh_window(session_seconds: float) -> float:
    """A, in seconds, for a session of `session_seconds`."""
    if session_seconds <= 20 * MINUTE:
        return 5 * MINUTE
    if session_seconds < 90 * MINUTE:
        return 15 * MINUTE
    return 60 * MINUTE


def refresh_at(
    *,
    received_at: datetime,
    expires_at: datetime,
    session_seconds: float,
    rng: random.Random,
) -> datetime:
    """When to refresh credentials that arrived at `received_at`.

    The result is within [expires_at - 1.1 A, expires_at - A] unless that is
    before the half-life point received_at + (expires_at - received_at) / 2,
    in which case it is the half-life point.
    """
    window = refresh_window(session_seconds)
    jitter = rng.uniform(0.0, 0.1 * window)
    planned = expires_at - timedelta(seconds=window + jitter)
    half_life = received_at + (expires_at - received_at) / 2
    return max(planned, half_life)


def backoff_delay(
    attempt: int,
    rng: random.Random,
    *,
    base: float = 1.0,
    cap: float = 60.0,
) -> float:
    """Capped exponential backoff with full jitter: uniform(0, min(cap, base * 2**attempt)).

    `attempt` counts failures so far, from 0.
    """
    if attempt < 0:
        raise ValueError("attempt counts from 0")
    ceiling = min(cap, base * 2.0 ** min(attempt, 62))
    return rng.uniform(0.0, ceiling)
