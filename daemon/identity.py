"""The daemon's own AWS identity, and the trust policy customers put on their roles.

Learned once with sts:GetCallerIdentity at start-up. Not fatal when STS is
down: the first caller that needs it (GET /v1/trust-policy, /healthz) tries
again; concurrent callers share one STS call; while unknown, the trust
policy answers 503 StsUnavailable and /healthz says the daemon is degraded,
with `problem`, why the last try failed (docs/design.md, Socket API).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from s3feed.auth import AuthError, CallerIdentity, StsClient, StsUnavailable

log = logging.getLogger("s3feed.identity")


class DaemonIdentity:
    def __init__(self, sts: StsClient) -> None:
        self._sts = sts
        self._identity: CallerIdentity | None = None
        self._inflight: asyncio.Task[CallerIdentity] | None = None
        self.problem: str | None = None  # why the last try to learn it failed

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
