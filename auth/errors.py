"""Errors of the credentials layer.

    AuthError                    .code is the API error code (DESIGN.md)
    ├── InvalidInput             the caller's request is wrong; fix the request
    │   ├── InvalidRoleArn
    │   ├── InvalidTenantName
    │   └── InvalidDuration
    ├── AssumeRoleDenied         STS said no: trust policy / ExternalId / permissions
    ├── StsUnavailable           STS could not be reached or kept throttling
    └── CredentialsExpired       a job's session lapsed with no successful refresh

Messages say what to fix and never contain a secret.
"""

from __future__ import annotations

from typing import ClassVar


class AuthError(Exception):
    code: ClassVar[str] = "InternalError"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(AuthError):
    code = "InvalidRequest"


class InvalidRoleArn(InvalidInput):
    code = "InvalidRoleArn"


class InvalidTenantName(InvalidInput):
    code = "InvalidTenantName"


class InvalidDuration(InvalidInput):
    code = "InvalidDuration"


class AssumeRoleDenied(AuthError):
    code = "AssumeRoleDenied"


class StsUnavailable(AuthError):
    code = "StsUnavailable"


class CredentialsExpired(AuthError):
    code = "CredentialsExpired"
