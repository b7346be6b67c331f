"""What a job request hands to STS, parsed into typed values before any STS call.

Each parser raises its own error (InvalidRoleArn, InvalidTenantName,
InvalidDuration) whose message names the field, says what is wrong with the
value, and shows the form that would be accepted. Values are echoed
shortened, never the whole of an oversized input.

The rules are the ones STS and IAM apply, so that a request we accept is one
STS can accept too; the STS call remains the judge of the trust policy.

Parsed once, at the edge (the API, the upload journal): a `RoleArn`, a
`TenantName` and a `SessionDuration` are what `RoleSession` takes, so a
value that reaches it has been checked and is not checked again.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NewType

from s3feed.auth.errors import InvalidDuration, InvalidRoleArn, InvalidTenantName

# The partitions a role may live in, and the domain their services answer under.
PARTITIONS = {"aws": "amazonaws.com", "aws-cn": "amazonaws.com.cn", "aws-us-gov": "amazonaws.com"}
DEFAULT_DURATION = 3600
MIN_DURATION = 900
MAX_DURATION = 43200

_ARN_EXAMPLE = "arn:aws:iam::123456789012:role/name"
_ROLE_NAME = re.compile(r"[\w+=,.@-]{1,64}", re.ASCII)
_ROLE_PATH = re.compile(r"/|/[\x21-\x7e]+/")  # IAM: "/" or "/.../", printable ASCII
_ACCOUNT = re.compile(r"[0-9]{12}")
_EXTERNAL_ID = re.compile(r"[\w+=,.@:/-]{2,1224}", re.ASCII)
_EXTERNAL_ID_CHAR = re.compile(r"[\w+=,.@:/-]", re.ASCII)
_SESSION_NAME_BAD_CHAR = re.compile(r"[^\w+=,.@-]", re.ASCII)
_SESSION_PREFIX = "s3feed-"
_SESSION_NAME_MAX = 64


# A TenantName (sts:ExternalId) and a RoleSessionDurationInSeconds that their
# parser below accepted; mypy keeps an unchecked str or int from standing in.
TenantName = NewType("TenantName", str)
SessionDuration = NewType("SessionDuration", int)


@dataclass(frozen=True)
class RoleArn:
    """An IAM role ARN that `parse_role_arn` accepted; str() is the ARN as given."""

    partition: str  # aws, aws-cn or aws-us-gov
    account: str  # 12 digits
    path: str  # "/" or "/a/b/"
    name: str
    arn: str  # the whole ARN, as given

    def __str__(self) -> str:
        return self.arn


def dns_suffix(partition: str) -> str:
    """Where `partition`'s services answer: S3 in REGION is s3.REGION.<this>."""
    return PARTITIONS[partition]


def _shown(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _bad_arn(value: object, why: str) -> InvalidRoleArn:
    return InvalidRoleArn(
        f"RoleArnToAssume {_shown(value)} is not an IAM role ARN: {why}. "
        f"Expected the form {_ARN_EXAMPLE} (partition aws, aws-cn or aws-us-gov, "
        "a 12-digit account, an optional path, and a role name of 1-64 letters, "
        "digits and +=,.@_-)."
    )


def parse_role_arn(value: object) -> RoleArn:
    """Parse `RoleArnToAssume`; raises InvalidRoleArn saying what is wrong."""
    if not isinstance(value, str):
        raise _bad_arn(value, f"it must be a string, not {type(value).__name__}")
    if len(value) > 2048:
        raise _bad_arn(value, "it is longer than 2048 characters")
    parts = value.split(":", 5)
    if len(parts) != 6 or parts[0] != "arn":
        raise _bad_arn(value, "it must have six ':'-separated fields starting with 'arn'")
    _, partition, service, region, account, resource = parts
    if partition not in PARTITIONS:
        raise _bad_arn(value, f"partition {partition!r} is not one of {', '.join(PARTITIONS)}")
    if service != "iam":
        raise _bad_arn(value, f"service {service!r} must be 'iam'")
    if region:
        raise _bad_arn(value, "IAM ARNs have no region (the field between 'iam:' and the account)")
    if not _ACCOUNT.fullmatch(account):
        raise _bad_arn(value, f"account {account!r} must be exactly 12 digits")
    if not resource.startswith("role/"):
        raise _bad_arn(value, "the resource must start with 'role/'")
    slash = resource.rfind("/")
    path, name = resource[len("role") : slash + 1], resource[slash + 1 :]
    if not _ROLE_PATH.fullmatch(path) or len(path) > 512:
        raise _bad_arn(value, f"role path {path!r} is not a valid IAM path")
    if not _ROLE_NAME.fullmatch(name):
        raise _bad_arn(value, f"role name {name!r} must be 1-64 letters, digits and +=,.@_-")
    return RoleArn(partition=partition, account=account, path=path, name=name, arn=value)


def validate_tenant_name(value: object) -> TenantName:
    """`TenantName`, sent as sts:ExternalId; raises InvalidTenantName."""
    if not isinstance(value, str):
        raise InvalidTenantName(
            f"TenantName must be a string, not {type(value).__name__}; it is sent to STS as "
            "the ExternalId: 2-1224 ASCII letters, digits and _+=,.@:/-"
        )
    if not _EXTERNAL_ID.fullmatch(value):
        if not 2 <= len(value) <= 1224:
            why = f"it has {len(value)} characters"
        else:
            bad = sorted({c for c in value if not _EXTERNAL_ID_CHAR.fullmatch(c)})
            why = "it contains " + ", ".join(repr(c) for c in bad[:5])
        raise InvalidTenantName(
            f"TenantName {_shown(value)} cannot be an STS ExternalId: {why}; "
            "use 2-1224 ASCII letters, digits and _+=,.@:/-"
        )
    return TenantName(value)


def validate_duration(value: object) -> SessionDuration:
    """`RoleSessionDurationInSeconds`: absent (None) -> 3600; else an integer
    900..43200. "900", 900.5 and booleans are refused."""
    if value is None:
        return SessionDuration(DEFAULT_DURATION)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidDuration(
            f"RoleSessionDurationInSeconds {_shown(value)} must be a JSON integer "
            f"(not {type(value).__name__}) from {MIN_DURATION} to {MAX_DURATION}, "
            "or absent for 3600"
        )
    if not MIN_DURATION <= value <= MAX_DURATION:
        raise InvalidDuration(
            f"RoleSessionDurationInSeconds {value} is outside {MIN_DURATION}..{MAX_DURATION} "
            "(15 minutes to 12 hours; the role's MaxSessionDuration must allow it)"
        )
    return SessionDuration(value)


def session_name_for(job_id: str) -> str:
    """RoleSessionName `s3feed-<JobId>`, made valid for STS ([\\w+=,.@-]{2,64}),
    so the customer sees the job in CloudTrail."""
    name = _SESSION_NAME_BAD_CHAR.sub("-", _SESSION_PREFIX + job_id)
    return name[:_SESSION_NAME_MAX]
