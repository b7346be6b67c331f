"""STS's answers in our words: botocore/aiohttp failures -> auth/ errors, and their messages.

`translate` is the only place in auth/ that reads botocore errors (auth/sts.py
calls it for every failed STS call):

    AssumeRoleDenied             AccessDenied: trust policy, ExternalId, permissions
    MaxSessionDurationExceeded   ValidationError: DurationSeconds above the role's maximum
    SessionPolicyTooLarge        PackedPolicyTooLarge, the 2048-character ValidationError,
                                 MalformedPolicyDocument: the job's session policy
    StsUnavailable(retryable)    throttling, 5xx, network        -> retryable
                                 our own credentials missing/refused -> not
    OwnCredentialsExpired        ExpiredToken on the daemon's own credentials: the
                                 client reloads them and retries once (auth/sts.py)

Every message says what to fix. Pure functions: no I/O, no state.
"""

from __future__ import annotations

import asyncio
import contextlib

from s3feed.auth.errors import (
    AssumeRoleDenied,
    MaxSessionDurationExceeded,
    SessionPolicyTooLarge,
    StsUnavailable,
)
from s3feed.auth.policy import MAX_POLICY_CHARS

_THROTTLING = {
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
    "TooManyRequestsException",
    "PriorRequestNotComplete",
    "IDPCommunicationError",
}
_OWN_CREDENTIALS_EXPIRED = {"ExpiredToken", "ExpiredTokenException", "RequestExpired"}
_OWN_CREDENTIALS_REFUSED = {
    "InvalidClientTokenId",
    "SignatureDoesNotMatch",
    "UnrecognizedClientException",
    "IncompleteSignature",
    "MissingAuthenticationToken",
}
# The codes by which STS (or botocore) says the daemon's own credentials are
# missing, refused or expired: no job's role is to blame (daemon/identity.py).
OWN_CREDENTIALS_CODES = frozenset(
    _OWN_CREDENTIALS_REFUSED | _OWN_CREDENTIALS_EXPIRED | {"NoCredentials"}
)


def denied(role_arn: str, external_id: str, principal: str | None, detail: str) -> AssumeRoleDenied:
    who = principal or "the daemon's own identity (not yet known: STS unreachable)"
    return AssumeRoleDenied(
        f"STS refused to let {who} assume role {role_arn} with ExternalId {external_id!r}. "
        "The role's trust policy must allow sts:AssumeRole for the daemon's account with the "
        f"condition StringEquals sts:ExternalId = {external_id!r}; "
        f"`GET /v1/trust-policy?TenantName={external_id}` (or `s3feed trust-policy "
        f"{external_id}`) prints that statement. STS said: {detail}",
        sts_code="AccessDenied",
    )


def duration_exceeded(role_arn: str, duration: int, detail: str) -> MaxSessionDurationExceeded:
    return MaxSessionDurationExceeded(
        f"RoleSessionDurationInSeconds {duration} exceeds the MaxSessionDuration of role "
        f"{role_arn}; raise the role's maximum session duration or ask for less. "
        f"STS said: {detail}",
        sts_code="ValidationError",
    )


_POLICY_TOO_LARGE = {"PackedPolicyTooLarge", "PackedPolicyTooLargeException"}
_POLICY_MALFORMED = {"MalformedPolicyDocument", "MalformedPolicyDocumentException"}


def policy_refused(code: str, detail: str | None, chars: int | None) -> SessionPolicyTooLarge:
    """STS refused the job's session policy (or would: `detail` None means the
    daemon did not send it). `detail` is cut short: some STS answers echo the
    whole policy back."""
    size = f" ({chars} characters)" if chars is not None else ""
    if code in _POLICY_MALFORMED:
        what = (
            f"STS refused the session policy that limits the job's credentials to its folder"
            f"{size} as malformed. The folder name is written into the policy; a folder "
            "that IAM cannot read in a policy cannot be a job's folder: register the job "
            "on a folder one level up or rename the folder"
        )
    else:
        what = (
            f"the job's folder makes the session policy too large for STS{size}: the policy "
            "that limits the job's credentials to its folder names the folder twice, and STS "
            f"accepts at most {MAX_POLICY_CHARS} characters (less once packed). Register the "
            "job on a shorter folder, e.g. one level up (folders of up to about 700 ASCII "
            "characters fit)"
        )
    if detail is None:
        return SessionPolicyTooLarge(f"{what}. The policy was not sent.", sts_code=code)
    detail = detail if len(detail) <= 300 else detail[:297] + "..."
    return SessionPolicyTooLarge(f"{what}. STS said: {detail}", sts_code=code)


class OwnCredentialsExpired(Exception):
    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


def translate(
    exc: Exception,
    *,
    role_arn: str | None = None,
    external_id: str = "",
    duration: int = 0,
    principal: str | None = None,
    policy_chars: int | None = None,
) -> Exception:
    """botocore/aiohttp failure -> our error. The only place that reads botocore errors."""
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        CredentialRetrievalError,
        NoCredentialsError,
        ParamValidationError,
        PartialCredentialsError,
        SSLError,
    )

    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", "Unknown"))
        detail = f"{code}: {error.get('Message', '')}".strip()
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if code in _OWN_CREDENTIALS_EXPIRED:
            return OwnCredentialsExpired(detail)
        if code in ("AccessDenied", "AccessDeniedException") and role_arn is not None:
            return denied(role_arn, external_id, principal, detail)
        too_long = "MaxSessionDuration" in detail or "DurationSeconds exceeds" in detail
        if code == "ValidationError" and too_long and role_arn is not None:
            return duration_exceeded(role_arn, duration, detail)
        if code in _POLICY_TOO_LARGE | _POLICY_MALFORMED:
            return policy_refused(code, detail, policy_chars)
        if code == "ValidationError" and "'policy'" in detail and "length" in detail:
            return policy_refused(
                code,
                f"ValidationError: the policy must have length less than or equal to "
                f"{MAX_POLICY_CHARS}",
                policy_chars,
            )
        if code in _THROTTLING or status >= 500 or status == 429:
            return StsUnavailable(f"STS is unavailable ({detail}); retry later", sts_code=code)
        if code in _OWN_CREDENTIALS_REFUSED:
            return StsUnavailable(
                f"STS refused the daemon's own AWS credentials ({detail}); "
                "check the service's credentials (instance profile, environment)",
                sts_code=code,
                retryable=False,
            )
        return StsUnavailable(f"STS rejected the request: {detail}", sts_code=code, retryable=False)
    if isinstance(exc, ParamValidationError):  # validate.py should have caught it: our bug
        return StsUnavailable(
            f"the daemon built an invalid STS request: {exc}",
            sts_code="InvalidParameter",
            retryable=False,
        )
    if isinstance(exc, NoCredentialsError | PartialCredentialsError | CredentialRetrievalError):
        return StsUnavailable(
            "the daemon has no usable AWS credentials of its own (standard chain: environment, "
            f"shared config, instance profile): {type(exc).__name__}",
            sts_code="NoCredentials",
            retryable=False,
        )
    if isinstance(exc, SSLError) and "CERTIFICATE_VERIFY_FAILED" in str(exc):
        return StsUnavailable(
            f"the TLS certificate of STS is not trusted ({exc}); the daemon verifies it against "
            "[sts] ca_bundle, else AWS_CA_BUNDLE, else the system's CAs",
            sts_code="NetworkError",
            retryable=False,
        )
    if isinstance(exc, BotoCoreError | OSError | asyncio.TimeoutError):
        return StsUnavailable(
            f"STS could not be reached ({type(exc).__name__}: {exc}); retry later",
            sts_code="NetworkError",
        )
    with contextlib.suppress(ImportError):
        import aiohttp

        if isinstance(exc, aiohttp.ClientError):
            return StsUnavailable(
                f"STS could not be reached ({type(exc).__name__}); retry later",
                sts_code="NetworkError",
            )
    return exc
