"""The daemon's own AWS identity, and the trust policy customers put on their roles.

Learned once with sts:GetCallerIdentity at start-up. Not fatal when STS is
down: the first caller that needs it (GET /v1/trust-policy, /healthz) tries
again; concurrent callers share one STS call; while unknown, the trust
policy answers 503 StsUnavailable and /healthz says the daemon is degraded,
with `problem`, why the last try failed (docs/design.md, Socket API).

Credentials that break later (an instance profile detached, keys revoked)
show in the AssumeRole calls of jobs, registrations and refreshes alike:
`OwnCredentials`, the daemon's credential observer in front of the metrics,
notes a failure whose code says STS refused the daemon's own credentials,
and the next AssumeRole that succeeds clears it. No STS call of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime

from s3feed.auth import (
    OWN_CREDENTIALS_CODES,
    AuthError,
    CallerIdentity,
    CredentialObserver,
    StsClient,
    StsUnavailable,
)

log = logging.getLogger("s3feed.identity")


class DaemonIdentity:
    def __init__(self, sts: StsClient) -> None:
        self._sts = sts
        self._identity: CallerIdentity | None = None
        self._inflight: asyncio.Task[CallerIdentity] | None = None
        self.problem: str | None = None  # why the last try to learn it failed
        # STS's code when the last AssumeRole failed on the daemon's own credentials.
        self.refused: str | None = None

    @property
    def known(self) -> CallerIdentity | None:
        return self._identity

    async def get(self) -> CallerIdentity:
        if self._identity is not None:
            return self._identity
        if self._inflight is None or self._inflight.done():
            self._inflight = asyncio.create_task(self._sts.get_caller_identity())
        try:
            self._identity = await asyncio.shield(self._inflight)
        except AuthError as exc:
            raise StsUnavailable(
                f"the daemon could not learn its own AWS identity from STS ({exc.message}); "
                "check the daemon's credentials and [sts] endpoint, then retry"
            ) from None
        log.info("daemon identity learned", extra={"principal": self._identity.arn})
        return self._identity

    async def try_learn(self) -> None:
        try:
            await self.get()
        except StsUnavailable as exc:
            self.problem = exc.message
            log.warning("daemon identity unknown for now", extra={"error": exc.message})
        else:
            self.problem = None

    async def close(self) -> None:
        if self._inflight is not None and not self._inflight.done():
            self._inflight.cancel()
            with contextlib.suppress(asyncio.CancelledError, AuthError):
                await self._inflight


class OwnCredentials:
    """The daemon's CredentialObserver: reports to `inner` (the metrics) and
    tells `identity` when STS refuses, then takes again, the daemon's own
    credentials in an AssumeRole (see the module's note)."""

    def __init__(self, inner: CredentialObserver, identity: DaemonIdentity) -> None:
        self._inner = inner
        self._identity = identity

    def assume_role(self) -> None:
        self._inner.assume_role()

    def assume_role_failed(self, code: str) -> None:
        self._inner.assume_role_failed(code)
        if code in OWN_CREDENTIALS_CODES:
            if self._identity.refused is None:
                log.warning("STS refused the daemon's own credentials", extra={"code": code})
            self._identity.refused = code

    def refreshed(self, at: datetime) -> None:
        self._inner.refreshed(at)

    def refresh_failed(self, code: str) -> None:
        self._inner.refresh_failed(code)

    def expiry_changed(self, session_id: str, expires_at: datetime | None) -> None:
        self._inner.expiry_changed(session_id, expires_at)
        if expires_at is not None and self._identity.refused is not None:
            log.info("STS takes the daemon's own credentials again")
            self._identity.refused = None  # an AssumeRole just succeeded
