"""`RoleSession`: one job's AssumeRole session, kept fresh in the background.

Design note (concurrency):
- `RoleSession.assume` makes the first AssumeRole in the caller's task (the
  job registration answers with its outcome), then starts one refresher
  task per session. `RoleSession.restore` (a job a previous run registered:
  docs/design.md, Restart and upgrade) starts EXPIRED, with no credentials,
  and leaves the first AssumeRole to the refresher. Nothing else runs in
  the background.
- The refresher sleeps (on the injected clock) until `schedule.refresh_at`,
  refreshes, and loops. Failures it retries with capped exponential backoff
  and full jitter while the current credentials are valid, with a last
  attempt at the expiry instant; then the session turns EXPIRED and the
  refresher goes on retrying with the same capped backoff, so that the
  session is ACTIVE again as soon as STS answers (docs/design.md,
  Credentials). A request that needs credentials while there are none asks
  STS itself if nobody did for `min_refresh_interval`. AccessDenied is never
  retried: the session keeps its credentials until they expire, then stays
  EXPIRED and its refresher ends.
- Every STS call goes through one single-flight slot, `_inflight`, a task
  that the refresher and `refresh_now` callers (transfer/ after an S3
  ExpiredToken) await through `asyncio.shield`: 100 concurrent callers cause
  one STS call; a cancelled caller does not cancel the others' refresh.
  Credentials younger than `min_refresh_interval` count as just refreshed.
- `current()` answers the credentials in hand; without working ones it joins
  the in-flight call (or starts one, as above), else raises
  CredentialsExpired.
- `close()` cancels the refresher and the in-flight call, awaits both, and
  drops the credentials; callers still waiting, and any later, see
  SessionClosed with the code the closer gave (CredentialsExpired, or
  ShuttingDown at the end of a drain).
- Memory: one Credentials, a few warnings; nothing grows with time.

Least privilege (docs/design.md, Session policy): a `policy` (auth/policy.py)
is sent on every AssumeRole of the session -- the first, each refresh, the
3600 s fallback. One STS will not take fails the first call; refused at a
refresh, it is not retried, like AccessDenied.

The role, tenant and duration arrive parsed (auth/validate.py `RoleArn`,
`TenantName`, `SessionDuration`); nothing here checks them again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from s3feed.auth.clock import Clock, SystemClock
from s3feed.auth.credentials import Credentials
from s3feed.auth.errors import (
    AssumeRoleDenied,
    CredentialsExpired,
    InvalidInput,
    MaxSessionDurationExceeded,
    SessionClosed,
)
from s3feed.auth.observer import CredentialObserver
from s3feed.auth.policy import MAX_POLICY_CHARS, packed
from s3feed.auth.schedule import backoff_delay, refresh_at
from s3feed.auth.sessionstate import ALLOWED, SessionState, SessionStatus
from s3feed.auth.sts import AssumedRole, StsClient
from s3feed.auth.stserrors import policy_refused
from s3feed.auth.validate import (
    DEFAULT_DURATION,
    RoleArn,
    SessionDuration,
    TenantName,
    session_name_for,
)

log = logging.getLogger("s3feed.auth.session")


class RoleSession:
    """A CredentialSource for one job. Build it with `await RoleSession.assume(...)`."""

    def __init__(
        self,
        sts: StsClient,
        *,
        job_id: str,
        role_arn: RoleArn,
        external_id: TenantName,
        duration: SessionDuration,
        observer: CredentialObserver,
        clock: Clock,
        rng: random.Random,
        backoff_base: float,
        backoff_cap: float,
        min_refresh_interval: float,
        policy: Mapping[str, Any] | None = None,
    ) -> None:
        self._sts = sts
        # Kept as the text sent to STS: the same bytes on every call, and
        # `policy` hands out fresh copies that callers cannot change.
        self._policy_text = packed(policy) if policy is not None else None
        self._job_id = job_id
        self._role_arn = role_arn
        self._external_id = external_id
        self._session_name = session_name_for(job_id)
        self._duration: int = duration  # becomes 3600 after a MaxSessionDuration fallback
        self._observer = observer
        self._clock = clock
        self._rng = rng
        self._backoff = (backoff_base, backoff_cap)
        self._min_refresh_interval = min_refresh_interval
        self._state = SessionState.ACTIVE
        self._creds: Credentials | None = None
        self._received_at = clock.now()
        self._expires_at = clock.now()
        self._refreshes = 0
        self._last_error: str | None = None
        self._denied: AssumeRoleDenied | InvalidInput | None = None
        self._warnings: list[str] = []
        self._next_refresh_at: datetime | None = None
        self._last_attempt_at: datetime | None = None  # when STS was last asked
        self._closed_as: tuple[str, str | None] = ("CredentialsExpired", None)
        self._inflight: asyncio.Task[Credentials] | None = None
        self._refresher: asyncio.Task[None] | None = None

    @classmethod
    async def assume(
        cls,
        sts: StsClient,
        *,
        job_id: str,
        role_arn: RoleArn,
        external_id: TenantName,
        duration: SessionDuration,
        observer: CredentialObserver,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        backoff_base: float = 1.0,
        backoff_cap: float = 60.0,
        min_refresh_interval: float = 5.0,
        policy: Mapping[str, Any] | None = None,
    ) -> RoleSession:
        """Assume the role now (raises AssumeRoleDenied, StsUnavailable,
        SessionPolicyTooLarge), then keep the session fresh in the background
        until `close()`. `policy` (from auth/policy.py) is sent as
        the inline session policy on every AssumeRole of the session."""
        self = cls._build(
            sts,
            job_id=job_id,
            role_arn=role_arn,
            external_id=external_id,
            duration=duration,
            observer=observer,
            clock=clock or SystemClock(),
            rng=rng or random.Random(),
            backoff_base=backoff_base,
            backoff_cap=backoff_cap,
            min_refresh_interval=min_refresh_interval,
            policy=policy,
        )
        self._check_policy_size()
        self._install(await self._assume_with_fallback())
        self._start_refresher()
        return self

    @classmethod
    def restore(
        cls,
        sts: StsClient,
        *,
        job_id: str,
        role_arn: RoleArn,
        external_id: TenantName,
        duration: SessionDuration,
        observer: CredentialObserver,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        backoff_base: float = 1.0,
        backoff_cap: float = 60.0,
        min_refresh_interval: float = 5.0,
        policy: Mapping[str, Any] | None = None,
    ) -> RoleSession:
        """The session of a job a previous run of the daemon registered
        (docs/design.md, Restart and upgrade). Nothing is raised and nothing
        awaited: it starts EXPIRED, and its refresher assumes the role at
        once and retries like a refresh, the failure shown as the status's
        `last_refresh_error`; a request meanwhile joins that call."""
        self = cls._build(
            sts,
            job_id=job_id,
            role_arn=role_arn,
            external_id=external_id,
            duration=duration,
            observer=observer,
            clock=clock,
            rng=rng,
            backoff_base=backoff_base,
            backoff_cap=backoff_cap,
            min_refresh_interval=min_refresh_interval,
            policy=policy,
        )
        self._transition(SessionState.EXPIRED)
        try:
            self._check_policy_size()
        except InvalidInput as exc:  # the same folder will not fit next time either
            self._denied = exc
            self._last_error = str(exc)
        else:
            self._start_refresher()
        return self

    @classmethod
    def _build(
        cls,
        sts: StsClient,
        *,
        job_id: str,
        role_arn: RoleArn,
        external_id: TenantName,
        duration: SessionDuration,
        observer: CredentialObserver,
        clock: Clock | None,
        rng: random.Random | None,
        backoff_base: float,
        backoff_cap: float,
        min_refresh_interval: float,
        policy: Mapping[str, Any] | None,
    ) -> RoleSession:
        return cls(
            sts,
            job_id=job_id,
            role_arn=role_arn,
            external_id=external_id,
            duration=duration,
            observer=observer,
            clock=clock or SystemClock(),
            rng=rng or random.Random(),
            backoff_base=backoff_base,
            backoff_cap=backoff_cap,
            min_refresh_interval=min_refresh_interval,
            policy=policy,
        )

    def _start_refresher(self) -> None:
        self._refresher = asyncio.get_running_loop().create_task(
            self._refresh_forever(), name=f"s3feed-refresh-{self._job_id}"
        )

    # -- CredentialSource ------------------------------------------------------

    async def current(self) -> Credentials:
        if self._state is SessionState.CLOSED:
            raise self._closed_error()
        if self._working(self._clock.now()):
            assert self._creds is not None
            return self._creds
        # None that work: join the STS call in flight, or ask STS now unless
        # it was asked moments ago (docs/design.md, Credentials).
        try:
            return await self._refresh("credentials needed", force=False)
        except (AssumeRoleDenied, InvalidInput, CredentialsExpired):
            pass
        except Exception as exc:  # StsUnavailable, or a bug below us
            log.debug("job %s: refresh failed at expiry: %s", self._job_id, exc)
        raise self._unusable_error()

    async def refresh_now(self, reason: str) -> Credentials:
        return await self._refresh(reason, force=False)

    # -- status and lifetime ---------------------------------------------------

    def status(self) -> SessionStatus:
        return SessionStatus(
            role_arn=self._role_arn.arn,
            session_name=self._session_name,
            expires_at=self._expires_at if self._creds is not None else None,
            granted_duration_seconds=self._duration,
            refreshes=self._refreshes,
            last_refresh_error=self._last_error,
            warnings=tuple(self._warnings),
            expired=not self._working(self._clock.now()),
            next_refresh_at=self._next_refresh_at
            if self._state is not SessionState.CLOSED
            else None,
            policy=self.policy,
        )

    @property
    def policy(self) -> dict[str, Any] | None:
        """The inline session policy every AssumeRole of this session sends (a copy)."""
        if self._policy_text is None:
            return None
        document: dict[str, Any] = json.loads(self._policy_text)
        return document

    @property
    def state(self) -> SessionState:
        return self._state

    async def close(self, *, code: str = "CredentialsExpired", reason: str | None = None) -> None:
        """End the session. Whoever asks for its credentials from now on gets
        SessionClosed with `code` (an API error code) and `reason` as its message."""
        if self._state is SessionState.CLOSED:
            return
        self._closed_as = (code, reason)
        self._transition(SessionState.CLOSED)
        tasks = [t for t in (self._refresher, self._inflight) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._creds = None
        self._observer.expiry_changed(self._job_id, None)

    # -- internals -------------------------------------------------------------

    def _check_policy_size(self) -> None:
        """STS's plaintext limit is known: refuse before the call, as STS would."""
        text = self._policy_text
        if text is not None and len(text) > MAX_POLICY_CHARS:
            raise policy_refused("SessionPolicyTooLarge", None, len(text))

    def _transition(self, to: SessionState) -> None:
        if to not in ALLOWED[self._state]:
            raise RuntimeError(f"session {self._job_id}: {self._state.value} -> {to.value}")
        self._state = to

    def _working(self, now: datetime) -> bool:
        """Credentials in hand that have not run out."""
        return (
            self._state is SessionState.ACTIVE
            and self._creds is not None
            and now < self._expires_at
        )

    def _closed_error(self) -> SessionClosed:
        code, reason = self._closed_as
        return SessionClosed(
            reason or f"job {self._job_id}: its role session for {self._role_arn} was closed",
            code=code,
        )

    def _unusable_error(self) -> CredentialsExpired:
        if self._state is SessionState.CLOSED:
            return self._closed_error()
        return self._expired_error()

    def _expired_error(self) -> CredentialsExpired:
        why = self._last_error or "no refresh was attempted"
        then = (
            "STS is asked again with backoff: retry"
            if self._denied is None
            else "it is not asked again: fix the role, then register the job again"
        )
        if self._creds is None:
            return CredentialsExpired(
                f"job {self._job_id}: no credentials for role {self._role_arn} since the daemon "
                f"started (AssumeRole has not succeeded); last error: {why}; {then}"
            )
        return CredentialsExpired(
            f"job {self._job_id}: the credentials for role {self._role_arn} expired at "
            f"{self._expires_at.isoformat()} with no successful refresh; "
            f"last refresh error: {why}; {then}"
        )

    async def _join(self, task: asyncio.Task[Credentials]) -> Credentials:
        """Wait for the shared STS call without letting our cancellation cancel it."""
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            me = asyncio.current_task()
            if task.cancelled() and me is not None and not me.cancelling():
                raise self._unusable_error() from None  # close() cancelled the call
            raise

    async def _refresh(self, reason: str, *, force: bool) -> Credentials:
        """Join the in-flight STS call or start one. Unless `force`d (the
        refresher), credentials younger than min_refresh_interval are returned
        as they are: a burst of ExpiredToken answers to requests signed with
        the previous credentials must not cause a burst of refreshes. Without
        working credentials, STS is asked unless it was asked less than
        min_refresh_interval ago: requests during an outage do not become a
        storm of STS calls."""
        if self._state is SessionState.CLOSED:
            raise self._closed_error()
        if self._denied is not None:
            raise self._denied
        if self._inflight is None:
            now = self._clock.now()
            if not force and self._working(now):
                if (now - self._received_at).total_seconds() < self._min_refresh_interval:
                    assert self._creds is not None
                    return self._creds
            elif (
                not force
                and self._last_attempt_at is not None
                and (now - self._last_attempt_at).total_seconds() < self._min_refresh_interval
            ):
                raise self._expired_error()
            log.info("job %s: refreshing credentials (%s)", self._job_id, reason)
            self._last_attempt_at = now
            self._inflight = asyncio.get_running_loop().create_task(
                self._refresh_once(), name=f"s3feed-assume-{self._job_id}"
            )
            self._inflight.add_done_callback(self._clear_inflight)
        return await self._join(self._inflight)

    def _clear_inflight(self, task: asyncio.Task[Credentials]) -> None:
        if self._inflight is task:
            self._inflight = None
        if not task.cancelled():
            task.exception()  # retrieved: the joiners got it; no "never retrieved" warning

    def _install(self, assumed: AssumedRole) -> Credentials:
        creds = assumed.credentials
        now = self._clock.now()
        self._creds = creds
        self._received_at = now
        self._expires_at = creds.expiration or now
        self._observer.expiry_changed(self._job_id, self._expires_at)
        return creds

    async def _call_sts(self, duration: int) -> AssumedRole:
        self._observer.assume_role()
        try:
            return await self._sts.assume_role(
                role_arn=self._role_arn.arn,
                session_name=self._session_name,
                external_id=self._external_id,
                duration=duration,
                policy=self._policy_text,
            )
        except Exception as exc:
            self._observer.assume_role_failed(getattr(exc, "sts_code", type(exc).__name__))
            raise

    async def _assume_with_fallback(self) -> AssumedRole:
        try:
            return await self._call_sts(self._duration)
        except MaxSessionDurationExceeded:
            if self._duration <= DEFAULT_DURATION:
                raise
        warning = (
            f"RoleSessionDurationInSeconds {self._duration} exceeds the MaxSessionDuration of "
            f"role {self._role_arn}; the session uses {DEFAULT_DURATION} s instead (raise the "
            "role's maximum session duration for longer sessions)"
        )
        log.warning("job %s: %s", self._job_id, warning)
        self._warnings.append(warning)
        self._duration = DEFAULT_DURATION
        return await self._call_sts(self._duration)

    async def _refresh_once(self) -> Credentials:
        """The body of the single-flight slot: one refresh, bookkept."""
        try:
            assumed = await self._assume_with_fallback()
        except Exception as exc:
            code = getattr(exc, "sts_code", type(exc).__name__)
            self._last_error = str(exc)
            self._observer.refresh_failed(code)
            if isinstance(exc, AssumeRoleDenied | InvalidInput):
                self._denied = exc
            log.warning("job %s: refreshing role %s failed: %s", self._job_id, self._role_arn, exc)
            raise
        if self._state is SessionState.CLOSED:
            raise self._closed_error()
        if self._state is SessionState.EXPIRED:
            self._transition(SessionState.ACTIVE)
            log.info("job %s: credentials for role %s again", self._job_id, self._role_arn)
        first = self._creds is None  # a restored session's first: not a refresh
        creds = self._install(assumed)
        self._last_error = None
        if first:
            log.info(
                "job %s: role assumed, credentials expire at %s", self._job_id, self._expires_at
            )
            return creds
        self._refreshes += 1
        self._observer.refreshed(self._received_at)
        log.info("job %s: credentials refreshed, now expire at %s", self._job_id, self._expires_at)
        return creds

    async def _refresh_forever(self) -> None:
        try:
            while self._state is not SessionState.CLOSED:
                if self._working(self._clock.now()):
                    self._next_refresh_at = refresh_at(
                        received_at=self._received_at,
                        expires_at=self._expires_at,
                        session_seconds=self._duration,
                        rng=self._rng,
                    )
                    await self._clock.sleep_until(self._next_refresh_at)
                if not await self._refresh_with_retries():
                    self._next_refresh_at = None
                    return  # refused, and nothing left to use: never retried
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug; keep the job's error visible rather than die silently
            log.exception("job %s: credential refresher stopped", self._job_id)
            self._last_error = self._last_error or "the credential refresher stopped (daemon bug)"

    async def _refresh_with_retries(self) -> bool:
        """Refresh until it succeeds, someone else's refresh lands, or the role
        refuses with nothing left to use (-> False)."""
        held = self._creds
        failures = 0
        while self._state is not SessionState.CLOSED and self._creds is held:
            if self._denied is None:
                try:
                    await self._refresh("scheduled", force=True)
                    return True
                except Exception as exc:
                    if not isinstance(exc, AssumeRoleDenied | InvalidInput):
                        log.debug("job %s: will retry: %s", self._job_id, exc)
            now = self._clock.now()
            delay = backoff_delay(failures, self._rng, base=self._backoff[0], cap=self._backoff[1])
            if self._working(now):
                if self._denied is not None:
                    await self._clock.sleep_until(self._expires_at)
                    continue
                # The last attempt is at the expiry instant, at the latest.
                wake = min(now + timedelta(seconds=delay), self._expires_at)
            else:
                self._expire()
                if self._denied is not None:
                    return False
                wake = now + timedelta(seconds=delay)  # after an outage: as soon as STS answers
            failures += 1
            self._next_refresh_at = wake
            await self._clock.sleep_until(wake)
        return True

    def _expire(self) -> None:
        if self._state is SessionState.ACTIVE:
            self._transition(SessionState.EXPIRED)
            log.error("%s", self._expired_error().message)
