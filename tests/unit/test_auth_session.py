"""RoleSession driven by a FakeClock and a FakeSts: 12-hour sessions in milliseconds."""

from __future__ import annotations

import asyncio
import copy
import logging
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import pairwise
from types import SimpleNamespace
from typing import Any

import pytest

from s3feed.auth.clock import FakeClock, settle
from s3feed.auth.errors import (
    AssumeRoleDenied,
    CredentialsExpired,
    MaxSessionDurationExceeded,
    SessionClosed,
    SessionPolicyTooLarge,
    StsUnavailable,
)
from s3feed.auth.policy import job_policy, packed
from s3feed.auth.schedule import refresh_window
from s3feed.auth.session import RoleSession
from s3feed.auth.sessionstate import SessionState
from s3feed.auth.validate import parse_role_arn
from tests.fakes.sts import FakeSts

ROLE = "arn:aws:iam::272758771130:role/acme-media-reader"
ROLE_ARN = parse_role_arn(ROLE)
TENANT = "acme-films"


@dataclass
class RecordingObserver:
    assume_calls: int = 0
    assume_failures: list[str] = field(default_factory=list)
    refreshes: list[datetime] = field(default_factory=list)
    refresh_failures: list[str] = field(default_factory=list)
    expiries: list[tuple[str, datetime | None]] = field(default_factory=list)

    def assume_role(self) -> None:
        self.assume_calls += 1

    def assume_role_failed(self, code: str) -> None:
        self.assume_failures.append(code)

    def refreshed(self, at: datetime) -> None:
        self.refreshes.append(at)

    def refresh_failed(self, code: str) -> None:
        self.refresh_failures.append(code)

    def expiry_changed(self, session_id: str, expires_at: datetime | None) -> None:
        self.expiries.append((session_id, expires_at))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sts(clock: FakeClock) -> FakeSts:
    return FakeSts(clock)


@pytest.fixture
def observer() -> RecordingObserver:
    return RecordingObserver()


Opener = Callable[..., Any]


@pytest.fixture
async def open_session(
    sts: FakeSts, clock: FakeClock, observer: RecordingObserver
) -> AsyncIterator[Opener]:
    opened: list[RoleSession] = []

    async def open_(duration: int | None = 3600, **kw: Any) -> RoleSession:
        session = await RoleSession.assume(
            sts,
            job_id=kw.pop("job_id", "job-1"),
            role_arn=kw.pop("role_arn", ROLE_ARN),
            external_id=kw.pop("external_id", TENANT),
            duration=duration,  # type: ignore[arg-type]
            observer=observer,
            clock=clock,
            rng=random.Random(7),
            **kw,
        )
        opened.append(session)
        return session

    yield open_
    for session in opened:
        await session.close()
    assert clock.sleepers == 0, "a closed session left a task sleeping"


async def run_until_calls(clock: FakeClock, sts: FakeSts, n: int, limit: int = 10_000) -> None:
    """Jump from deadline to deadline until STS has seen `n` calls."""
    for _ in range(limit):
        if len(sts.calls) >= n:
            return
        assert await clock.run_to_next() is not None, "nobody is sleeping: the refresher died"
    raise AssertionError(f"only {len(sts.calls)} STS calls")


# -- the schedule, many cycles --------------------------------------------------


@pytest.mark.parametrize("length", [900, 3600, 43200])
async def test_refresh_cycles_stay_inside_the_policy_window(
    length: int, open_session: Opener, sts: FakeSts, clock: FakeClock, observer: RecordingObserver
) -> None:
    started = clock.now()
    session = await open_session(length)
    window = refresh_window(length)
    cycles = 60
    await run_until_calls(clock, sts, cycles + 1)
    # Up to 60 x 12 h of session time went by on the fake clock (a real sleep
    # would have hung the test instead).
    assert clock.now() - started >= timedelta(seconds=cycles * (length - 1.1 * window))

    for before, after, call in zip(sts.issued, sts.issued[1:], sts.calls[1:], strict=False):
        assert before.expiration is not None
        lead = (before.expiration - call.at).total_seconds()
        assert window <= lead <= 1.1 * window, (length, lead)
        assert call.duration == length
        assert after.expiration == call.at + timedelta(seconds=length)
    leads = {
        (c.expiration - n.at).total_seconds()  # type: ignore[operator]
        for c, n in zip(sts.issued, sts.calls[1:], strict=False)
    }
    assert len(leads) > cycles // 2, "no jitter"

    status = session.status()
    assert status.refreshes == cycles
    assert status.granted_duration_seconds == length
    assert status.expires_at == sts.issued[-1].expiration
    assert not status.expired and status.last_refresh_error is None
    assert observer.assume_calls == cycles + 1 and len(observer.refreshes) == cycles
    assert observer.expiries[-1] == ("job-1", sts.issued[-1].expiration)
    assert await session.current() == sts.issued[-1]


async def test_credentials_with_less_life_than_asked_refresh_at_half_life(
    open_session: Opener, sts: FakeSts, clock: FakeClock
) -> None:
    sts.lifetime = 60  # e.g. a proxy rewriting Expiration; asked for an hour
    await open_session(3600)
    await run_until_calls(clock, sts, 21)
    gaps = [(b.at - a.at).total_seconds() for a, b in pairwise(sts.calls)]
    assert gaps == [30.0] * 20


async def test_life_shrinking_mid_session_is_followed(
    open_session: Opener, sts: FakeSts, clock: FakeClock
) -> None:
    session = await open_session(900)
    sts.lifetime = 100
    await run_until_calls(clock, sts, 4)
    gaps = [(b.at - a.at).total_seconds() for a, b in pairwise(sts.calls)]
    assert 570 <= gaps[0] <= 600 and gaps[1:] == [50.0, 50.0]
    assert await session.current() == sts.issued[-1]


# -- single flight ----------------------------------------------------------------


async def test_hundred_concurrent_callers_make_one_sts_call(
    open_session: Opener, sts: FakeSts, clock: FakeClock
) -> None:
    session = await open_session(3600)
    old = sts.issued[0]
    await clock.advance(60)
    sts.gate = asyncio.Event()
    refreshers = [asyncio.create_task(session.refresh_now(f"ExpiredToken {i}")) for i in range(100)]
    readers = [asyncio.create_task(session.current()) for _ in range(100)]
    await settle()
    assert len(sts.calls) == 2
    assert all(r.done() and r.result() is old for r in readers)  # valid creds: no waiting
    sts.gate.set()
    results = await asyncio.gather(*refreshers)
    assert len(sts.calls) == 2
    assert all(r is sts.issued[1] for r in results)
    assert session.status().refreshes == 1


async def test_readers_after_expiry_join_the_refresh_in_flight(
    open_session: Opener, sts: FakeSts, clock: FakeClock
) -> None:
    session = await open_session(900)
    sts.gate = asyncio.Event()
    expiry = sts.issued[0].expiration
    assert expiry is not None
    await clock.advance_to(expiry)  # refresher started its call at ~570 s; still waiting
    assert len(sts.calls) == 2
    readers = [asyncio.create_task(session.current()) for _ in range(100)]
    await settle()
    assert not any(r.done() for r in readers)
    sts.gate.set()
    assert {id(c) for c in await asyncio.gather(*readers)} == {id(sts.issued[1])}
    assert len(sts.calls) == 2


async def test_a_cancelled_caller_does_not_cancel_the_shared_refresh(
    open_session: Opener, sts: FakeSts, clock: FakeClock
) -> None:
    session = await open_session(3600)
    await clock.advance(60)
    sts.gate = asyncio.Event()
    first = asyncio.create_task(session.refresh_now("a"))
    second = asyncio.create_task(session.refresh_now("b"))
    await settle()
    first.cancel()
    await settle()
    sts.gate.set()
    assert await second is sts.issued[1]
    assert first.cancelled()
    assert len(sts.calls) == 2


async def test_refresh_now_right_after_a_refresh_reuses_it(
    open_session: Opener, sts: FakeSts, clock: FakeClock
) -> None:
    session = await open_session(3600)
    await clock.advance(60)
    fresh = await session.refresh_now("ExpiredToken")
    await clock.advance(1)
    assert await session.refresh_now("ExpiredToken from a range signed before") is fresh
    assert len(sts.calls) == 2


# -- failures -------------------------------------------------------------------


async def test_old_credentials_serve_while_refresh_fails_then_recover(
    open_session: Opener, sts: FakeSts, clock: FakeClock, observer: RecordingObserver
) -> None:
    session = await open_session(3600)
    old = sts.issued[0]
    assert old.expiration is not None
    sts.fail_always(FakeSts.throttling())
    await run_until_calls(clock, sts, 8)
    assert await session.current() is old
    status = session.status()
    assert status.last_refresh_error is not None and "Throttling" in status.last_refresh_error
    assert not status.expired and status.refreshes == 0
    retry_gaps = [(b.at - a.at).total_seconds() for a, b in pairwise(sts.calls[1:])]
    assert all(0 <= g <= 60 for g in retry_gaps)
    assert all(c.at < old.expiration for c in sts.calls)
    assert observer.refresh_failures == ["Throttling"] * 7

    sts.fail_always(None)
    await run_until_calls(clock, sts, 9)
    assert await session.current() is sts.issued[1]
    assert session.status().last_refresh_error is None
    assert session.status().refreshes == 1


@pytest.mark.parametrize("error", [FakeSts.server_error(), FakeSts.network_error()])
async def test_expiry_during_an_outage_then_new_credentials_once_sts_answers(
    error: StsUnavailable, open_session: Opener, sts: FakeSts, clock: FakeClock
) -> None:
    """docs/design.md, Credentials: an outage longer than the credentials' life
    leaves the session EXPIRED (requests get CredentialsExpired, 503), the
    refresher goes on with capped backoff, and the first answer of STS makes
    it ACTIVE again: nothing registers the job again."""
    session = await open_session(900, job_id="enc-42")
    expiry = sts.issued[0].expiration
    assert expiry is not None
    sts.fail_always(error)
    await clock.advance_to(expiry - timedelta(seconds=1))
    assert await session.current() is sts.issued[0]
    await clock.advance_to(expiry)
    assert sts.calls[-1].at == expiry  # one last try at the expiry instant
    assert session.state is SessionState.EXPIRED
    with pytest.raises(CredentialsExpired) as info:
        await session.current()
    message = info.value.message
    assert "enc-42" in message and ROLE in message and error.message in message
    assert "retry" in message
    with pytest.raises(CredentialsExpired):  # STS was asked at this instant: not again
        await session.refresh_now("ExpiredToken")
    assert sts.calls[-1].at == expiry
    await clock.advance(3600)
    outage = [c for c in sts.calls if c.at > expiry]
    assert len(outage) >= 60, "the refresher goes on asking while STS is down"
    gaps = [
        (b.at - a.at).total_seconds() for a, b in pairwise([sts.calls[-len(outage) - 1], *outage])
    ]
    assert max(gaps) <= 60
    assert session.status().expired and session.status().refreshes == 0

    sts.fail_always(None)
    calls = len(sts.calls)
    await run_until_calls(clock, sts, calls + 1)
    assert session.state is SessionState.ACTIVE
    assert await session.current() is sts.issued[-1]
    status = session.status()
    assert not status.expired and status.refreshes == 1 and status.last_refresh_error is None
    assert clock.sleepers == 1, "the refresher sleeps until the next scheduled refresh"


async def test_a_request_during_an_outage_asks_sts_itself_at_most_every_5_s(
    open_session: Opener, sts: FakeSts, clock: FakeClock
) -> None:
    """Once STS answers again, a request that needs credentials gets them at
    once, not after the refresher's backoff (up to 60 s)."""
    session = await open_session(900)
    expiry = sts.issued[0].expiration
    assert expiry is not None
    sts.fail_always(FakeSts.throttling())
    await clock.advance_to(expiry + timedelta(seconds=600))  # backoff near its cap now
    await run_until_calls(clock, sts, len(sts.calls) + 1)  # the refresher asks, STS fails
    sts.fail_always(None)
    last = sts.calls[-1].at
    assert clock.now() == last
    calls = len(sts.calls)
    with pytest.raises(CredentialsExpired):  # STS was asked this instant: not again yet
        await session.current()
    assert len(sts.calls) == calls
    wake = session.status().next_refresh_at
    asked_at = last + timedelta(seconds=5)
    assert wake is not None and wake > asked_at, "the refresher would not have asked by then"
    await clock.advance_to(asked_at)
    assert await session.current() is sts.issued[-1]
    assert len(sts.calls) == calls + 1 and sts.calls[-1].at == asked_at
    assert session.state is SessionState.ACTIVE


async def test_access_denied_on_refresh_is_not_retried(
    open_session: Opener, sts: FakeSts, clock: FakeClock, observer: RecordingObserver
) -> None:
    session = await open_session(3600)
    old = sts.issued[0]
    assert old.expiration is not None
    sts.fail_always(sts.access_denied(ROLE, TENANT))
    await clock.advance_to(old.expiration - timedelta(seconds=1))
    assert len(sts.calls) == 2
    assert await session.current() is old
    with pytest.raises(AssumeRoleDenied):
        await session.refresh_now("ExpiredToken")
    assert len(sts.calls) == 2
    assert observer.refresh_failures == ["AccessDenied"]
    await clock.advance_to(old.expiration)
    with pytest.raises(CredentialsExpired, match="AccessDenied"):
        await session.current()
    await clock.advance(3600)
    assert len(sts.calls) == 2
    assert clock.sleepers == 0, "a refused session's refresher ends once nothing is left"


async def test_first_assume_denied_raises_and_leaves_nothing_running(
    sts: FakeSts, clock: FakeClock, observer: RecordingObserver
) -> None:
    sts.trusted_external_ids[ROLE] = "someone-else"
    with pytest.raises(AssumeRoleDenied) as info:
        await RoleSession.assume(
            sts,
            job_id="j",
            role_arn=ROLE_ARN,
            external_id=TENANT,
            duration=900,
            observer=observer,
            clock=clock,
        )
    message = info.value.message
    assert ROLE in message and repr(TENANT) in message and sts.identity.arn in message
    assert "trust-policy?TenantName=acme-films" in message
    assert observer.assume_failures == ["AccessDenied"]
    assert clock.sleepers == 0


async def test_the_parsed_role_is_sent_and_shown_as_the_arn_given(
    open_session: Opener, sts: FakeSts
) -> None:
    # The role, tenant and duration arrive parsed (auth/validate.py; its tests
    # refuse what STS would); the session sends them as they are.
    path_role = parse_role_arn("arn:aws:iam::272758771130:role/media/acme-reader")
    session = await open_session(900, role_arn=path_role)
    (call,) = sts.calls
    assert (call.role_arn, call.external_id, call.duration) == (path_role.arn, TENANT, 900)
    assert session.status().role_arn == path_role.arn


# -- duration fallback ---------------------------------------------------------


async def test_duration_above_role_maximum_falls_back_to_3600_with_a_warning(
    open_session: Opener, sts: FakeSts, clock: FakeClock
) -> None:
    sts.max_session_duration = 3600
    session = await open_session(43200)
    assert [c.duration for c in sts.calls] == [43200, 3600]
    status = session.status()
    assert status.granted_duration_seconds == 3600
    assert len(status.warnings) == 1 and "MaxSessionDuration" in status.warnings[0]
    assert "43200" in status.warnings[0] and "3600" in status.warnings[0]
    await run_until_calls(clock, sts, 5)
    assert [c.duration for c in sts.calls[2:]] == [3600] * 3  # refreshes ask for the fallback
    assert session.status().warnings == status.warnings


async def test_no_fallback_when_3600_or_less_was_asked(open_session: Opener, sts: FakeSts) -> None:
    sts.max_session_duration = 1800  # not possible on AWS, but the rule must hold
    with pytest.raises(MaxSessionDurationExceeded):
        await open_session(3600)
    assert len(sts.calls) == 1


# -- the session policy ------------------------------------------------------------


def folder_policy(prefix: str, bucket: str = "media") -> dict[str, Any]:
    folder = SimpleNamespace(partition="aws", bucket=bucket, prefix=prefix, region="us-east-1")
    return job_policy(folder)


POLICY = folder_policy("shows/")


async def test_the_policy_goes_with_the_first_call_every_refresh_and_the_fallback(
    open_session: Opener, sts: FakeSts, clock: FakeClock, observer: RecordingObserver
) -> None:
    sts.max_session_duration = 3600
    session = await open_session(43200, policy=POLICY)
    assert [c.duration for c in sts.calls] == [43200, 3600]  # refused, then the fallback
    await run_until_calls(clock, sts, 5)
    await session.refresh_now("ExpiredToken")  # young credentials: no call...
    await clock.advance(30)
    await session.refresh_now("ExpiredToken")  # ...an on-demand refresh: one more
    assert len(sts.calls) == 6 and observer.refreshes
    assert [c.policy for c in sts.calls] == [packed(POLICY)] * 6


async def test_the_policy_shows_in_the_status_and_cannot_be_changed_from_outside(
    open_session: Opener, sts: FakeSts
) -> None:
    given = folder_policy("shows/")
    expected = copy.deepcopy(given)
    session = await open_session(900, policy=given)
    assert session.policy == expected and session.status().policy == expected
    given["Statement"].clear()  # the caller's dict is not the session's
    shown = session.policy
    assert shown is not None
    shown["Statement"].clear()  # nor is what it hands out
    assert session.policy == expected and session.status().policy == expected
    assert sts.calls[0].policy == packed(expected)


async def test_without_a_policy_none_is_sent(open_session: Opener, sts: FakeSts) -> None:
    session = await open_session(900)
    assert sts.calls[0].policy is None
    assert session.policy is None and session.status().policy is None


async def test_a_policy_over_the_sts_limit_is_refused_before_any_call(
    sts: FakeSts, clock: FakeClock, observer: RecordingObserver
) -> None:
    folder = "f" * 899 + "/"
    with pytest.raises(SessionPolicyTooLarge) as info:
        await RoleSession.assume(
            sts,
            job_id="j",
            role_arn=ROLE_ARN,
            external_id=TENANT,
            duration=900,
            observer=observer,
            clock=clock,
            policy=folder_policy(folder),
        )
    assert info.value.code == "SessionPolicyTooLarge"
    assert "shorter folder" in info.value.message and "not sent" in info.value.message
    assert folder not in info.value.message
    assert sts.calls == [] and observer.assume_calls == 0 and clock.sleepers == 0


@pytest.mark.parametrize(
    ("policy", "sts_code", "said"),
    [
        (
            folder_policy("x" * 300 + "/", bucket="m"),
            "PackedPolicyTooLarge",
            "Packed policy consumes",
        ),
        (
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow"}]},
            "MalformedPolicyDocument",
            "malformed",
        ),
    ],
)
async def test_sts_refusing_the_policy_is_a_clear_error_and_nothing_runs(
    policy: dict[str, Any],
    sts_code: str,
    said: str,
    sts: FakeSts,
    clock: FakeClock,
    observer: RecordingObserver,
) -> None:
    sts.packed_policy_limit = 200
    with pytest.raises(SessionPolicyTooLarge) as info:
        await RoleSession.assume(
            sts,
            job_id="j",
            role_arn=ROLE_ARN,
            external_id=TENANT,
            duration=900,
            observer=observer,
            clock=clock,
            policy=policy,
        )
    assert said in info.value.message and "STS said" in info.value.message
    assert info.value.sts_code == sts_code
    assert observer.assume_failures == [sts_code]
    assert len(sts.calls) == 1 and clock.sleepers == 0


async def test_a_policy_refused_on_refresh_is_not_retried(
    open_session: Opener, sts: FakeSts, clock: FakeClock, observer: RecordingObserver
) -> None:
    session = await open_session(3600, policy=POLICY)
    old = sts.issued[0]
    assert old.expiration is not None
    sts.packed_policy_limit = 10  # STS's packed budget shrank (session tags, a new format)
    await clock.advance_to(old.expiration - timedelta(seconds=1))
    assert len(sts.calls) == 2
    assert observer.refresh_failures == ["PackedPolicyTooLarge"]
    assert await session.current() is old
    with pytest.raises(SessionPolicyTooLarge):
        await session.refresh_now("ExpiredToken")
    await clock.advance_to(old.expiration)
    with pytest.raises(CredentialsExpired, match="too large for STS"):
        await session.current()
    assert len(sts.calls) == 2


# -- closing, secrets -------------------------------------------------------------


async def test_close_stops_everything_and_waiting_callers_get_a_clear_error(
    open_session: Opener, sts: FakeSts, clock: FakeClock, observer: RecordingObserver
) -> None:
    session = await open_session(3600)
    await clock.advance(60)
    sts.gate = asyncio.Event()
    waiting = asyncio.create_task(session.refresh_now("ExpiredToken"))
    await settle()
    await session.close()
    with pytest.raises(CredentialsExpired, match="closed"):
        await waiting
    with pytest.raises(CredentialsExpired, match="closed"):
        await session.current()
    assert session.status().expires_at is None and session.status().expired
    assert observer.expiries[-1] == ("job-1", None)
    await session.close()
    assert clock.sleepers == 0


async def test_close_with_a_reason_gives_its_code_to_every_caller(
    open_session: Opener, sts: FakeSts, clock: FakeClock
) -> None:
    session = await open_session(3600)
    await clock.advance(60)
    sts.gate = asyncio.Event()
    waiting = asyncio.create_task(session.refresh_now("ExpiredToken"))
    await settle()
    await session.close(code="ShuttingDown", reason="the daemon is shutting down")
    for call in (waiting, session.current()):
        with pytest.raises(SessionClosed, match="shutting down") as info:
            await call
        assert info.value.code == "ShuttingDown"


# -- a session restored at start (docs/design.md, Restart and upgrade) -------------


def restore(sts: FakeSts, clock: FakeClock, observer: RecordingObserver) -> RoleSession:
    return RoleSession.restore(
        sts,
        job_id="job-r",
        role_arn=ROLE_ARN,
        external_id=TENANT,
        duration=900,  # type: ignore[arg-type]
        observer=observer,
        clock=clock,
        rng=random.Random(7),
    )


async def test_a_restored_session_assumes_the_role_in_the_background(
    sts: FakeSts, clock: FakeClock, observer: RecordingObserver
) -> None:
    session = restore(sts, clock, observer)
    assert session.state is SessionState.EXPIRED and not sts.calls
    await settle()
    assert len(sts.calls) == 1 and session.state is SessionState.ACTIVE
    assert await session.current() is sts.issued[0]
    status = session.status()
    assert status.expires_at == sts.issued[0].expiration
    assert status.refreshes == 0 and not observer.refreshes, "assumed again, not refreshed"
    await session.close()
    assert clock.sleepers == 0


async def test_a_restored_session_sts_cannot_serve_is_retried_like_a_refresh(
    sts: FakeSts, clock: FakeClock, observer: RecordingObserver
) -> None:
    sts.fail_always(FakeSts.server_error())
    session = restore(sts, clock, observer)
    await settle()
    status = session.status()
    assert status.expired and status.last_refresh_error is not None
    assert "InternalFailure" in status.last_refresh_error
    with pytest.raises(CredentialsExpired, match="since the daemon started"):
        await session.current()
    await run_until_calls(clock, sts, 5)
    sts.fail_always(None)
    await run_until_calls(clock, sts, 6)
    assert await session.current() is sts.issued[0]
    assert session.status().last_refresh_error is None
    await session.close()
    assert clock.sleepers == 0


async def test_a_restored_session_the_role_refuses_is_not_retried(
    sts: FakeSts, clock: FakeClock, observer: RecordingObserver
) -> None:
    sts.trusted_external_ids[ROLE] = "someone-else"
    session = restore(sts, clock, observer)
    await settle()
    assert "AccessDenied" in (session.status().last_refresh_error or "")
    assert clock.sleepers == 0 and len(sts.calls) == 1
    with pytest.raises(CredentialsExpired, match="not asked again"):
        await session.current()
    assert len(sts.calls) == 1
    await session.close()


async def test_no_secret_in_status_logs_or_errors(
    open_session: Opener, sts: FakeSts, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    session = await open_session(900)
    await run_until_calls(clock, sts, 4)
    sts.fail_always(FakeSts.throttling())
    await clock.advance(3600)
    texts = [caplog.text, repr(session.status()), str(session.status())]
    texts += [repr(c) + str(c) for c in sts.issued]
    try:
        await session.current()
    except CredentialsExpired as exc:
        texts.append(str(exc))
    assert sts.secrets
    for secret in sts.secrets:
        assert all(secret not in text for text in texts)
