"""The one seam between auth/ and STS, and its aiobotocore implementation.

`StsClient` is what role sessions call; `AioStsClient` is the real one and
`FakeSts` (tests/fakes/sts.py) the unit-test one. botocore errors become our
errors in one place, `translate` (auth/stserrors.py), so the rest of auth/
sees only AssumeRoleDenied, MaxSessionDurationExceeded, SessionPolicyTooLarge
and StsUnavailable.

Design note (concurrency):
- One long-lived botocore client serves every job's AssumeRole calls
  concurrently (aiobotocore pools connections); each call runs in the
  caller's task and is cancelled with it.
- botocore retries at most `max_attempts` - 1 times (standard mode): the
  session's refresher owns the retry policy; botocore only smooths a blip
  on the synchronous first AssumeRole of a job registration.
- ExpiredToken on *our own* credentials: the caller that sees it reloads
  the credentials by building a fresh session + client (under a lock, once
  per client generation, so a burst of failing callers reloads once) and
  retries its call once. The old client is closed when its last in-flight
  call returns, never under a running request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from s3feed.auth.config import StsConfig
from s3feed.auth.credentials import Credentials
from s3feed.auth.errors import AssumeRoleDenied, AuthError, StsUnavailable
from s3feed.auth.stserrors import OwnCredentialsExpired, denied, translate

log = logging.getLogger("s3feed.auth.sts")


@dataclass(frozen=True)
class AssumedRole:
    credentials: Credentials
    assumed_role_arn: str  # arn:aws:sts::<account>:assumed-role/<name>/<session>


@dataclass(frozen=True)
class CallerIdentity:
    """Who the daemon runs as (sts:GetCallerIdentity)."""

    account: str
    arn: str
    partition: str
    user_id: str

    def trust_policy(self, external_id: str) -> dict[str, Any]:
        """The trust policy a customer's role needs for this tenant."""
        return {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"AWS": f"arn:{self.partition}:iam::{self.account}:root"},
                    "Action": "sts:AssumeRole",
                    "Condition": {"StringEquals": {"sts:ExternalId": external_id}},
                }
            ],
        }


class StsClient(Protocol):
    async def assume_role(
        self,
        *,
        role_arn: str,
        session_name: str,
        external_id: str,
        duration: int,
        policy: str | None = None,
    ) -> AssumedRole:
        """`policy` is the inline session policy as sent (auth/policy.py `packed`).
        Raises AssumeRoleDenied, MaxSessionDurationExceeded, SessionPolicyTooLarge,
        StsUnavailable."""
        ...

    async def get_caller_identity(self) -> CallerIdentity:
        """Raises StsUnavailable."""
        ...


def _parse_identity(response: dict[str, Any]) -> CallerIdentity:
    arn = str(response["Arn"])
    return CallerIdentity(
        account=str(response["Account"]),
        arn=arn,
        partition=arn.split(":")[1] if arn.count(":") >= 5 else "aws",
        user_id=str(response["UserId"]),
    )


class _Handle:
    """One botocore client and the calls running on it."""

    def __init__(self, client: Any, stack: contextlib.AsyncExitStack, generation: int) -> None:
        self.client = client
        self.stack = stack
        self.generation = generation
        self.users = 0
        self.retired = False


class AioStsClient:
    """StsClient over one long-lived aiobotocore client with the service's own credentials."""

    def __init__(
        self,
        config: StsConfig,
        *,
        session_factory: Callable[[], Any] | None = None,
        max_attempts: int = 2,
        connect_timeout: float = 5.0,
        read_timeout: float = 15.0,
    ) -> None:
        self._config = config
        # [sts] ca_bundle, else botocore's own AWS_CA_BUNDLE; proxies: botocore
        # reads HTTPS_PROXY/HTTP_PROXY/NO_PROXY itself (docs/design.md, Configuration).
        self._verify = config.ca_bundle or None
        self._session_factory = session_factory
        self._max_attempts = max_attempts
        self._timeouts = (connect_timeout, read_timeout)
        self._handle: _Handle | None = None
        self._generation = 0
        self._reload_lock = asyncio.Lock()
        self._identity: CallerIdentity | None = None
        self._closing: set[asyncio.Task[None]] = set()

    @property
    def identity(self) -> CallerIdentity | None:
        """Who the daemon runs as, once a GetCallerIdentity succeeded."""
        return self._identity

    async def start(self) -> None:
        if self._handle is None:
            self._handle = await self._open()

    async def close(self) -> None:
        handle, self._handle = self._handle, None
        if handle is not None:
            handle.retired = True
            await handle.stack.aclose()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    async def __aenter__(self) -> AioStsClient:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def assume_role(
        self,
        *,
        role_arn: str,
        session_name: str,
        external_id: str,
        duration: int,
        policy: str | None = None,
    ) -> AssumedRole:
        log.info("AssumeRole %s as session %s for %d s", role_arn, session_name, duration)
        params: dict[str, Any] = {
            "RoleArn": role_arn,
            "RoleSessionName": session_name,
            "ExternalId": external_id,
            "DurationSeconds": duration,
        }
        if policy is not None:
            params["Policy"] = policy
        try:
            response = await self._call("assume_role", **params)
        except Exception as exc:
            chars = len(policy) if policy is not None else None
            raise await self._error(exc, role_arn, external_id, duration, chars) from None
        creds = response["Credentials"]
        expiration = creds["Expiration"]
        if isinstance(expiration, str):
            expiration = datetime.fromisoformat(expiration.replace("Z", "+00:00"))
        if expiration.tzinfo is None:
            expiration = expiration.replace(tzinfo=UTC)
        return AssumedRole(
            credentials=Credentials(
                access_key_id=creds["AccessKeyId"],
                secret_access_key=creds["SecretAccessKey"],
                session_token=creds.get("SessionToken"),
                expiration=expiration.astimezone(UTC),
            ),
            assumed_role_arn=str(response.get("AssumedRoleUser", {}).get("Arn", "")),
        )

    async def get_caller_identity(self) -> CallerIdentity:
        try:
            response = await self._call("get_caller_identity")
        except Exception as exc:
            translated = translate(exc)
            if isinstance(translated, OwnCredentialsExpired):
                translated = self._own_expired(translated)
            raise translated from None
        self._identity = _parse_identity(response)
        return self._identity

    async def _error(
        self,
        exc: Exception,
        role_arn: str,
        external_id: str,
        duration: int,
        policy_chars: int | None = None,
    ) -> Exception:
        principal = self._identity.arn if self._identity else None
        translated = translate(
            exc,
            role_arn=role_arn,
            external_id=external_id,
            duration=duration,
            principal=principal,
            policy_chars=policy_chars,
        )
        if isinstance(translated, AssumeRoleDenied) and self._identity is None:
            # Learn who we are so the message can name the principal to trust.
            with contextlib.suppress(AuthError):
                await self.get_caller_identity()
            if self._identity is not None:
                detail = translated.message.split("STS said: ", 1)[-1]
                translated = denied(role_arn, external_id, self._identity.arn, detail)
        if isinstance(translated, OwnCredentialsExpired):
            translated = self._own_expired(translated)
        return translated

    @staticmethod
    def _own_expired(exc: OwnCredentialsExpired) -> StsUnavailable:
        return StsUnavailable(
            f"the daemon's own AWS credentials have expired and reloading them did not help "
            f"({exc.detail}); check the service's credential source",
            sts_code="ExpiredToken",
            retryable=False,
        )

    async def _call(self, operation: str, **params: Any) -> dict[str, Any]:
        """Run one STS operation; on ExpiredToken of our own credentials,
        reload them and run it once more."""
        for attempt in range(2):
            handle = await self._acquire()
            try:
                result: dict[str, Any] = await getattr(handle.client, operation)(**params)
                return result
            except Exception as exc:
                if attempt == 0 and isinstance(translate(exc), OwnCredentialsExpired):
                    log.warning("the daemon's own AWS credentials expired; reloading them")
                    await self._reload(handle.generation)
                    continue
                raise
            finally:
                self._release(handle)
        raise AssertionError("unreachable")

    async def _acquire(self) -> _Handle:
        if self._handle is None:
            raise RuntimeError("AioStsClient used before start() or after close()")
        self._handle.users += 1
        return self._handle

    def _release(self, handle: _Handle) -> None:
        handle.users -= 1
        if handle.retired and handle.users == 0 and handle is not self._handle:
            task = asyncio.get_running_loop().create_task(handle.stack.aclose())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def _reload(self, failed_generation: int) -> None:
        async with self._reload_lock:
            old = self._handle
            if old is None or old.generation != failed_generation:
                return  # closed, or another caller already reloaded
            self._handle = await self._open()
            old.retired = True
            # `old` is still held by the caller that saw ExpiredToken; _release closes it.

    async def _open(self) -> _Handle:
        from aiobotocore.config import AioConfig
        from aiobotocore.session import AioSession

        session = self._session_factory() if self._session_factory else AioSession()
        session.set_config_variable("sts_regional_endpoints", "regional")
        config = AioConfig(
            retries={"mode": "standard", "total_max_attempts": self._max_attempts},
            connect_timeout=self._timeouts[0],
            read_timeout=self._timeouts[1],
        )
        stack = contextlib.AsyncExitStack()
        client = await stack.enter_async_context(
            session.create_client(
                "sts",
                region_name=self._config.region,
                endpoint_url=self._config.endpoint_url,
                config=config,
                verify=self._verify,
            )
        )
        self._generation += 1
        return _Handle(client, stack, self._generation)
