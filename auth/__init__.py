"""STS AssumeRole sessions per job and their background refresh.

The names below are this package's public face: nothing outside it imports
its modules directly (tests/unit/test_layout.py walks the imports).
"""

from s3feed.auth.botocore_creds import frozen
from s3feed.auth.clock import Clock, MonotonicClock, SystemClock
from s3feed.auth.config import StsConfig
from s3feed.auth.credentials import Credentials, CredentialSource
from s3feed.auth.errors import AuthError, CodedError, StsUnavailable
from s3feed.auth.observer import CredentialObserver
from s3feed.auth.policy import (
    Folder,
    Outputs,
    abort_policy,
    job_policy,
    outputs_policy,
    role_policy,
)
from s3feed.auth.redact import install_secret_redaction
from s3feed.auth.session import RoleSession
from s3feed.auth.sts import AioStsClient, CallerIdentity, StsClient
from s3feed.auth.stserrors import OWN_CREDENTIALS_CODES
from s3feed.auth.validate import (
    RoleArn,
    SessionDuration,
    TenantName,
    dns_suffix,
    parse_role_arn,
    validate_duration,
    validate_tenant_name,
)

__all__ = [
    "OWN_CREDENTIALS_CODES",
    "AioStsClient",
    "AuthError",
    "CallerIdentity",
    "Clock",
    "CodedError",
    "CredentialObserver",
    "CredentialSource",
    "Credentials",
    "Folder",
    "MonotonicClock",
    "Outputs",
    "RoleArn",
    "RoleSession",
    "SessionDuration",
    "StsClient",
    "StsConfig",
    "StsUnavailable",
    "SystemClock",
    "TenantName",
    "abort_policy",
    "dns_suffix",
    "frozen",
    "install_secret_redaction",
    "job_policy",
    "outputs_policy",
    "parse_role_arn",
    "role_policy",
    "validate_duration",
    "validate_tenant_name",
]
