"""Errors of the credentials layer.

    AuthError                    .code is the API error code (docs/design.md, Socket API)
    ├── InvalidInput             the caller's request is wrong; fix the request
    │   ├── InvalidRoleArn
    │   ├── InvalidTenantName
    │   ├── InvalidDuration
    │   │   └── MaxSessionDurationExceeded   above the role's MaxSessionDuration (STS said)
    │   └── SessionPolicyTooLarge  STS refused the job's session policy (size, or malformed)
    ├── AssumeRoleDenied         STS said no: trust policy / ExternalId / permissions
    ├── StsUnavailable           STS could not be reached, kept throttling, or refused
    │                            the daemon's own credentials (.retryable tells which)
    └── CredentialsExpired       a job's session lapsed with no successful refresh

`sts_code` is the error code STS answered with (or ours, e.g. "NetworkError"),
for the failure metrics; `code` stays the API's code.

Messages say what to fix and never contain a secret.
"""

from __future__ import annotations

from typing import ClassVar


class AuthError(Exception):
    code: ClassVar[str] = "InternalError"

    def __init__(self, message: str, *, sts_code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.sts_code = sts_code or self.code


class InvalidInput(AuthError):
    code = "InvalidRequest"


class InvalidRoleArn(InvalidInput):
    code = "InvalidRoleArn"


class InvalidTenantName(InvalidInput):
    code = "InvalidTenantName"


class InvalidDuration(InvalidInput):
    code = "InvalidDuration"


class MaxSessionDurationExceeded(InvalidDuration):
    """The role allows shorter sessions than asked; the session falls back to 3600 s."""


class SessionPolicyTooLarge(InvalidInput):
    """STS would not take the job's inline session policy: over its plaintext or
    packed size (the folder name is in it twice), or, for a folder IAM cannot
    parse, MalformedPolicyDocument. Never retried: the same folder fails again."""

    code = "SessionPolicyTooLarge"


class AssumeRoleDenied(AuthError):
    code = "AssumeRoleDenied"


class StsUnavailable(AuthError):
    """retryable: throttling, 5xx, network. Not retryable: the daemon's own
    identity is missing or refused (an operator must fix its credentials)."""

    code = "StsUnavailable"

    def __init__(
        self, message: str, *, sts_code: str | None = None, retryable: bool = True
    ) -> None:
        super().__init__(message, sts_code=sts_code)
        self.retryable = retryable


class CredentialsExpired(AuthError):
    code = "CredentialsExpired"
