"""Errors of the credentials layer, and `CodedError`, the base of every error the API answers.

    CodedError                   .code .message .request_id .host_id (the contract below)
    ├── AuthError                this module
    │   ├── InvalidInput             the caller's request is wrong; fix the request
    │   │   ├── InvalidRoleArn
    │   │   ├── InvalidTenantName
    │   │   ├── InvalidDuration
    │   │   │   └── MaxSessionDurationExceeded   above the role's MaxSessionDuration (STS said)
    │   │   └── SessionPolicyTooLarge  STS refused the job's session policy (size, or malformed)
    │   ├── AssumeRoleDenied         STS said no: trust policy / ExternalId / permissions
    │   ├── StsUnavailable           STS could not be reached, kept throttling, or refused
    │   │                            the daemon's own credentials (.retryable tells which)
    │   └── CredentialsExpired       a job's session has no working credentials (lapsed
    │       │                        with no successful refresh, or not assumed yet)
    │       └── SessionClosed        the session was closed; .code is the closer's reason
    │                                (CredentialsExpired: the job ended; ShuttingDown)
    ├── TransferError            transfer/errors.py: the data path
    └── ApiError                 daemon/errors.py: the API's own decisions

`sts_code` is the error code STS answered with (or ours, e.g. "NetworkError"),
for the failure metrics; `code` stays the API's code. auth/stserrors.py
translates STS's answers into these (its `OwnCredentialsExpired` is a signal
to auth/sts.py, not an error of this tree: it never leaves the STS client).

Messages say what to fix and never contain a secret.
"""

from __future__ import annotations


class CodedError(Exception):
    """An error the daemon answers with an API error code: the one base of the
    auth/, transfer/ and daemon/ error trees.

    It lives in auth/ because auth/ is the lowest layer: transfer/ and daemon/
    import auth/ and never the other way (docs/design.md, Layout), so each
    layer can derive its errors from this class without importing upward.

    - `code`: the API error code (docs/design.md, Socket API: Error codes);
      a subclass sets it, or an instance where the code is chosen when raised.
      daemon/errors.py maps it to the HTTP status in its one table; a code
      missing there answers 500 InternalError.
    - `message`: what the caller should fix; never a secret. It is `str(exc)`:
      changing it (appending a request id) changes both.
    - `request_id`, `host_id`: the service's ids of the answer this error
      came from (S3's x-amz-request-id and x-amz-id-2: what an AWS support
      case needs), None when no service answered it or it sent none. The API
      puts them in the error document (RequestId, HostId); STS's are not
      recorded (the API document names only S3's).
    """

    code: str = "InternalError"
    request_id: str | None = None
    host_id: str | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)

    @property
    def message(self) -> str:
        return str(self.args[0])

    @message.setter
    def message(self, value: str) -> None:
        self.args = (value,)


class AuthError(CodedError):
    def __init__(self, message: str, *, sts_code: str | None = None) -> None:
        super().__init__(message)
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


class SessionClosed(CredentialsExpired):
    """The session was closed while a transfer still wanted its credentials.

    `code` is what its closer said: CredentialsExpired when the job ended, or
    ShuttingDown when the daemon stopped after its drain grace (docs/design.md,
    Restart and upgrade); the API answers that code."""

    def __init__(self, message: str, *, code: str = "CredentialsExpired") -> None:
        super().__init__(message)
        self.code = code
