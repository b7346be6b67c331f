"""A job's `Destination`: where its outputs go.

Parsed and validated like `Source` with the same codes (docs/design.md,
Outputs): unknown fields and a bad `ServerSideEncryption` are
InvalidRequest, a Provider other than AmazonS3 InvalidProvider, then the
UriPath (InvalidUriPath), the role (InvalidRoleArn; absent = the Source's
role) and the duration (InvalidDuration; absent = the Source's).

The grants its session gets are auth/policy.py's (docs/design.md, Session
policy); `outputs` says what they depend on: the folder, and SSE-KMS.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from s3feed.auth import Outputs, RoleArn, SessionDuration, parse_role_arn, validate_duration
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


@dataclass(frozen=True)
class DestinationRequest:
    location: S3Location
    role_arn: RoleArn
    duration: SessionDuration
    encryption: Encryption

    @property
    def outputs(self) -> Outputs:
        """What the session policy grants for these outputs (docs/design.md, Session policy)."""
        return Outputs(self.location, kms=self.encryption.algorithm == "aws:kms")

    def document(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "Provider": "AmazonS3",
            "UriPath": self.location.uri,
            "Bucket": self.location.bucket,
            "Prefix": self.location.prefix,
            "Region": self.location.region,
            "RoleArnToAssume": self.role_arn.arn,
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
    value: object, s3: S3Config, *, source_role: RoleArn, source_duration: SessionDuration
) -> DestinationRequest:
    """Steps 4 and 6 of registering, for `Destination`."""
    value = check_envelope(value)
    if value["Provider"] != "AmazonS3":
        raise ApiError("InvalidProvider", 'Destination.Provider must be "AmazonS3"')
    location = parse_uri_path(value["UriPath"], s3)
    role = source_role
    if "RoleArnToAssume" in value:
        role = parse_role_arn(value["RoleArnToAssume"])
    duration = source_duration
    if "RoleSessionDurationInSeconds" in value:
        duration = validate_duration(value["RoleSessionDurationInSeconds"])
    return DestinationRequest(location, role, duration, _encryption(value))


def check_apart(source: S3Location, destination: S3Location) -> None:
    """InvalidRequest when one folder contains the other in the same bucket
    (docs/design.md, Outputs): the job's outputs could overwrite its sources,
    or its sources be read back from its outputs."""
    if (source.partition, source.bucket) != (destination.partition, destination.bucket):
        return
    src, dst = source.prefix, destination.prefix
    if not (src.startswith(dst) or dst.startswith(src)):
        return
    where = f"s3://{source.bucket}/"
    if src == dst:
        how = f"is the Source folder ({where}{src})"
    elif src.startswith(dst):
        how = f"({where}{dst}) contains the Source folder ({where}{src})"
    else:
        how = f"({where}{dst}) is inside the Source folder ({where}{src})"
    raise ApiError(
        "InvalidRequest",
        f"Destination.UriPath {destination.uri} {how}, given as Source.UriPath "
        f"{source.uri}: outputs could overwrite the job's sources; give the Destination a "
        "folder beside the Source's, e.g. renditions/ next to masters/",
    )


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
