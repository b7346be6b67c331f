"""`FakeSts`: a scripted StsClient for unit tests, beside the interface it fakes.

It issues credentials whose Expiration is computed from an injected clock,
counts and records every call, and raises the same error types, built by the
same functions, as `AioStsClient` does for the corresponding STS answers:

    sts = FakeSts(clock)
    sts.fail_next(FakeSts.throttling(), FakeSts.throttling())   # next two calls
    sts.fail_always(FakeSts.throttling())                      # until cleared
    sts.max_session_duration = 3600                            # role maximum
    sts.lifetime = 60                                          # issue 60 s creds
    sts.gate = asyncio.Event()                                 # hold calls open
    sts.packed_policy_limit = 300                              # packed policy budget

Session policies are checked as STS checks them: over MAX_POLICY_CHARS
characters is the ValidationError STS answers, a document that is not a
policy is MalformedPolicyDocument, and a policy whose packed form (here: its
zlib-compressed bytes) is over `packed_policy_limit` is PackedPolicyTooLarge,
"Packed policy consumes N% of allotted space". Each call records the policy.

Design note (concurrency): a call records itself, then waits on `gate` if
one is set (so tests can hold many callers inside one STS call), then
decides its outcome. Nothing else awaits, so without a gate a call completes
in the task step that made it. Cancellation of a caller ends its wait.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import secrets
import zlib
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timedelta

from s3feed.auth.clock import Clock
from s3feed.auth.credentials import Credentials
from s3feed.auth.errors import AuthError, StsUnavailable
from s3feed.auth.policy import MAX_POLICY_CHARS
from s3feed.auth.sts import AssumedRole, CallerIdentity
from s3feed.auth.stserrors import denied, duration_exceeded, policy_refused


@dataclass(frozen=True)
class AssumeRoleCall:
    at: datetime
    role_arn: str
    session_name: str
    external_id: str
    duration: int
    policy: str | None = None


class FakeSts:
    def __init__(
        self,
        clock: Clock,
        *,
        account: str = "111122223333",
        partition: str = "aws",
        max_session_duration: int = 43200,
    ) -> None:
        self.clock = clock
        self.identity = CallerIdentity(
            account=account,
            arn=f"arn:{partition}:iam::{account}:user/s3feed-host",
            partition=partition,
            user_id="AIDAFAKEFAKEFAKEFAKE",
        )
        self.max_session_duration = max_session_duration
        self.lifetime: float | None = None  # issue credentials with this life, not `duration`
        self.gate: asyncio.Event | None = None
        # STS's packed budget is opaque; the fake's stand-in is the compressed size.
        self.packed_policy_limit = 1024
        # role ARN -> the ExternalId its trust policy requires; roles not listed trust anyone.
        self.trusted_external_ids: dict[str, str] = {}
        self.calls: list[AssumeRoleCall] = []
        self.identity_calls = 0
        self.issued: list[Credentials] = []
        self._next_errors: deque[AuthError] = deque()
        self._error_always: AuthError | None = None
        self._serial = itertools.count(1)

    # -- scripting ---------------------------------------------------------------

    def fail_next(self, *errors: AuthError) -> None:
        """The next len(errors) calls raise these, in order."""
        self._next_errors.extend(errors)

    def fail_always(self, error: AuthError | None) -> None:
        """Every call raises `error` (after any fail_next ones) until set to None."""
        self._error_always = error

    @staticmethod
    def throttling() -> StsUnavailable:
        return StsUnavailable(
            "STS is unavailable (Throttling: Rate exceeded)", sts_code="Throttling"
        )

    @staticmethod
    def server_error() -> StsUnavailable:
        return StsUnavailable(
            "STS is unavailable (InternalFailure: internal error)", sts_code="InternalFailure"
        )

    @staticmethod
    def network_error() -> StsUnavailable:
        return StsUnavailable(
            "STS could not be reached (EndpointConnectionError); retry later",
            sts_code="NetworkError",
        )

    def access_denied(self, role_arn: str, external_id: str) -> AuthError:
        return denied(
            role_arn,
            external_id,
            self.identity.arn,
            f"AccessDenied: User: {self.identity.arn} is not authorized to perform: "
            f"sts:AssumeRole on resource: {role_arn}",
        )

    # -- what tests read ---------------------------------------------------------

    @property
    def secrets(self) -> list[str]:
        """Every secret key and session token issued, for leak checks."""
        out: list[str] = []
        for c in self.issued:
            out.append(c.secret_access_key)
            if c.session_token:
                out.append(c.session_token)
        return out

    # -- StsClient ---------------------------------------------------------------

    async def assume_role(
        self,
        *,
        role_arn: str,
        session_name: str,
        external_id: str,
        duration: int,
        policy: str | None = None,
    ) -> AssumedRole:
        self.calls.append(
            AssumeRoleCall(self.clock.now(), role_arn, session_name, external_id, duration, policy)
        )
        if self.gate is not None:
            await self.gate.wait()
        if self._next_errors:
            raise self._next_errors.popleft()
        if self._error_always is not None:
            raise self._error_always
        if policy is not None:
            self._check_policy(policy)
        required = self.trusted_external_ids.get(role_arn)
        if required is not None and required != external_id:
            raise self.access_denied(role_arn, external_id)
        if duration > self.max_session_duration:
            raise duration_exceeded(
                role_arn,
                duration,
                "ValidationError: The requested DurationSeconds exceeds the MaxSessionDuration "
                "set for this role.",
            )
        serial = next(self._serial)
        life = self.lifetime if self.lifetime is not None else duration
        creds = Credentials(
            access_key_id=f"ASIAFAKE{serial:012d}",
            secret_access_key=f"fakesecret{serial}x{secrets.token_hex(12)}",
            session_token=f"faketoken{serial}x{secrets.token_hex(24)}",
            expiration=self.clock.now() + timedelta(seconds=life),
        )
        self.issued.append(creds)
        name = role_arn.rsplit("/", 1)[-1]
        account = role_arn.split(":")[4]
        return AssumedRole(
            credentials=creds,
            assumed_role_arn=f"arn:aws:sts::{account}:assumed-role/{name}/{session_name}",
        )

    def _check_policy(self, policy: str) -> None:
        if len(policy) > MAX_POLICY_CHARS:
            raise policy_refused(
                "ValidationError",
                "1 validation error detected: Value at 'policy' failed to satisfy constraint: "
                f"Member must have length less than or equal to {MAX_POLICY_CHARS}",
                len(policy),
            )
        malformed = _malformed(policy)
        if malformed:
            raise policy_refused("MalformedPolicyDocument", malformed, len(policy))
        packed = len(zlib.compress(policy.encode("utf-8")))
        if packed > self.packed_policy_limit:
            share = packed * 100 // self.packed_policy_limit
            raise policy_refused(
                "PackedPolicyTooLarge",
                f"Packed policy consumes {share}% of allotted space, please use smaller policy.",
                len(policy),
            )

    async def get_caller_identity(self) -> CallerIdentity:
        self.identity_calls += 1
        if self._error_always is not None and isinstance(self._error_always, StsUnavailable):
            raise self._error_always
        return self.identity


def _malformed(policy: str) -> str | None:
    """What STS would say is wrong with the document, or None."""
    try:
        doc = json.loads(policy)
    except ValueError:
        return "Syntax errors in policy."
    if not isinstance(doc, dict) or not isinstance(doc.get("Statement"), list | dict):
        return "Policy document must contain a Statement."
    statements = doc["Statement"] if isinstance(doc["Statement"], list) else [doc["Statement"]]
    for stmt in statements:
        if not isinstance(stmt, dict) or stmt.get("Effect") not in ("Allow", "Deny"):
            return "Policy statement must contain a valid Effect."
        if "Action" not in stmt and "NotAction" not in stmt:
            return "Policy statement must contain actions."
        if "Resource" not in stmt and "NotResource" not in stmt:
            return "Policy statement must contain resources."
    return None
