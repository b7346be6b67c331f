"""A job's `Destination`: where its outputs go, and the grants that takes.

Parsed and validated like `Source` with the same codes (docs/design.md,
Outputs): unknown fields and a bad `ServerSideEncryption` are
InvalidRequest, a Provider other than AmazonS3 InvalidProvider, then the
UriPath (InvalidUriPath), the role (InvalidRoleArn; absent = the Source's
role) and the duration (InvalidDuration; absent = the Source's).

The session policy's grants for outputs (docs/design.md, Session policy):
`WriteOutputs` allows s3:PutObject, s3:AbortMultipartUpload and
s3:ListMultipartUploadParts on the destination folder only, and for
SSE-KMS `EncryptViaS3` allows kms:GenerateDataKey when S3 asks KMS for the
session. With the Source's role they are added to the job's one session
policy; with another role they are that second session's whole policy.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from s3feed.auth import VERSION, iam_literal, parse_role_arn, validate_duration
from s3feed.daemon.errors import ApiError
from s3feed.transfer import S3Config, S3Location, parse_uri_path
from s3feed.transfer.upload import Encryption

FIELDS = (
    "Provider",
    "UriPath",
    "RoleArnToAssume",
    "RoleSessionDurationInSeconds",
    "ServerSideEncryption",
    "SSEKMSKeyId",
)
SSE_ALGORITHMS = ("AES256", "aws:kms")
MAX_KMS_KEY_ID = 2048
WRITE_ACTIONS = ("s3:PutObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts")


@dataclass(frozen=True)
class DestinationRequest:
    location: S3Location
    role_arn: str
    duration: int
    encryption: Encryption

    def document(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "Provider": "AmazonS3",
            "UriPath": self.location.uri,
            "Bucket": self.location.bucket,
            "Prefix": self.location.prefix,
            "Region": self.location.region,
            "RoleArnToAssume": self.role_arn,
            "RoleSessionDurationInSeconds": self.duration,
        }
        if self.encryption.algorithm:
            doc["ServerSideEncryption"] = self.encryption.algorithm
        if self.encryption.kms_key_id:
            doc["SSEKMSKeyId"] = self.encryption.kms_key_id
        return doc


def check_envelope(value: object) -> Mapping[str, Any]:
    """Step 4 of registering (docs/design.md, Socket API): unknown or missing fields."""
    if not isinstance(value, Mapping):
        raise ApiError("InvalidRequest", "field 'Destination' must be an object")
    for name in value:
        if name not in FIELDS:
            raise ApiError(
                "InvalidRequest",
                f"unknown field 'Destination.{name}'; allowed: {', '.join(FIELDS)}",
            )
    for name in ("Provider", "UriPath"):
        if name not in value:
            raise ApiError("InvalidRequest", f"missing field 'Destination.{name}'")
    return value


def parse_destination(
    value: object, s3: S3Config, *, source_role: str, source_duration: int
) -> DestinationRequest:
    """Steps 4 and 6 of registering, for `Destination`."""
    value = check_envelope(value)
    if value["Provider"] != "AmazonS3":
        raise ApiError("InvalidProvider", 'Destination.Provider must be "AmazonS3"')
    location = parse_uri_path(value["UriPath"], s3)
    role = source_role
    if "RoleArnToAssume" in value:
        role = parse_role_arn(value["RoleArnToAssume"]).arn
    duration = source_duration
    if "RoleSessionDurationInSeconds" in value:
        duration = validate_duration(value["RoleSessionDurationInSeconds"])
    return DestinationRequest(location, role, duration, _encryption(value))


def _encryption(value: Mapping[str, Any]) -> Encryption:
    algorithm = value.get("ServerSideEncryption")
    key_id = value.get("SSEKMSKeyId")
    if algorithm is not None and algorithm not in SSE_ALGORITHMS:
        raise ApiError(
            "InvalidRequest",
            f"Destination.ServerSideEncryption must be one of {', '.join(SSE_ALGORITHMS)}",
        )
    if key_id is not None:
        if algorithm != "aws:kms":
            raise ApiError(
                "InvalidRequest",
                'Destination.SSEKMSKeyId needs "ServerSideEncryption": "aws:kms"',
            )
        if (
            not isinstance(key_id, str)
            or not 0 < len(key_id) <= MAX_KMS_KEY_ID
            or not key_id.isprintable()
            or not key_id.isascii()
        ):
            raise ApiError(
                "InvalidRequest",
                "Destination.SSEKMSKeyId must be a KMS key id, alias or ARN "
                f"(1-{MAX_KMS_KEY_ID} printable ASCII characters)",
            )
    return Encryption(algorithm, key_id)


def write_statements(dest: DestinationRequest) -> tuple[dict[str, Any], ...]:
    """The outputs' grants, to add to a session policy (docs/design.md, Session policy)."""
    loc = dest.location
    statements: list[dict[str, Any]] = [
        {
            "Sid": "WriteOutputs",
            "Effect": "Allow",
            "Action": list(WRITE_ACTIONS),
            "Resource": f"arn:{loc.partition}:s3:::{iam_literal(loc.bucket)}/"
            f"{iam_literal(loc.prefix)}*",
        }
    ]
    if dest.encryption.algorithm == "aws:kms":
        suffix = ".amazonaws.com.cn" if loc.partition == "aws-cn" else ".amazonaws.com"
        statements.append(
            {
                "Sid": "EncryptViaS3",
                "Effect": "Allow",
                "Action": ["kms:GenerateDataKey", "kms:Decrypt"],
                "Resource": f"arn:{loc.partition}:kms:*:*:key/*",
                "Condition": {"StringEquals": {"kms:ViaService": f"s3.{loc.region}{suffix}"}},
            }
        )
    return tuple(statements)


def write_only_policy(dest: DestinationRequest) -> dict[str, Any]:
    """The whole session policy of a destination role other than the Source's."""
    return {"Version": VERSION, "Statement": list(write_statements(dest))}
