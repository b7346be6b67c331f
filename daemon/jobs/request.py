"""POST /v1/jobs bodies: what an encoder asks for, parsed before anything is done.

The API parses a body once, with `parse_job_request`, into a frozen
`JobRequest` of typed values (the folder as an `S3Location`, the role as a
`RoleArn`, the tenant and duration as auth/'s checked types, the
`DestinationRequest`); the registry and the role sessions take those and
check nothing again. Fields are checked in the order of docs/design.md
(Socket API), raising `ApiError` (InvalidRequest, InvalidProvider) or the
auth/ and transfer/ errors for the role, duration, tenant and UriPath, with a
message that says what to fix. It is pure: no I/O, no state.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from s3feed.auth import (
    RoleArn,
    SessionDuration,
    TenantName,
    parse_role_arn,
    validate_duration,
    validate_tenant_name,
)
from s3feed.daemon.errors import ApiError
from s3feed.daemon.jobs.destination import DestinationRequest, check_apart, parse_destination
from s3feed.daemon.jobs.destination import check_envelope as check_destination
from s3feed.transfer import S3Config, S3Location, parse_uri_path

JOB_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
MAX_ENCODER_UIDS = 64
MAX_UID = 4294967294  # (uid_t)-1 is "no uid" to the kernel


@dataclass(frozen=True)
class JobRequest:
    """A POST /v1/jobs body, parsed: every value checked, in the form it is used."""

    job_id: str
    tenant: TenantName
    location: S3Location  # the Source's folder
    role_arn: RoleArn
    duration: SessionDuration
    encoder_uids: frozenset[int] = frozenset()
    destination: DestinationRequest | None = None


_ENVELOPE = {"JobId": str, "TenantName": str, "Source": dict}
_OPTIONAL = {"EncoderUids": list, "Destination": dict}
_SOURCE_FIELDS = ("Provider", "UriPath", "RoleArnToAssume", "RoleSessionDurationInSeconds")


def parse_job_request(body: object, s3: S3Config) -> JobRequest:
    """Parse a POST /v1/jobs body in the order of docs/design.md (Socket API): envelope, JobId, Source, tenant."""
    if not isinstance(body, Mapping):
        raise ApiError("InvalidRequest", "the request body must be a JSON object")
    for name in body:
        if name not in _ENVELOPE and name not in _OPTIONAL:
            raise ApiError(
                "InvalidRequest",
                f"unknown field {name!r}; allowed: JobId, TenantName, Source, EncoderUids, "
                "Destination",
            )
    for name, kind in _ENVELOPE.items():
        if name not in body:
            raise ApiError("InvalidRequest", f"missing field {name!r}")
        if not isinstance(body[name], kind):
            expected = "an object" if kind is dict else "a string"
            raise ApiError("InvalidRequest", f"field {name!r} must be {expected}")
    source = body["Source"]
    for name in source:
        if name not in _SOURCE_FIELDS:
            raise ApiError(
                "InvalidRequest",
                f"unknown field 'Source.{name}'; allowed: {', '.join(_SOURCE_FIELDS)}",
            )
    for name in _SOURCE_FIELDS[:3]:
        if name not in source:
            raise ApiError("InvalidRequest", f"missing field 'Source.{name}'")
    if "Destination" in body:
        check_destination(body["Destination"])
    job_id = body["JobId"]
    if not JOB_ID.fullmatch(job_id):
        raise ApiError(
            "InvalidRequest", "JobId must be 1-128 characters of letters, digits, '.', '_', '-'"
        )
    if source["Provider"] != "AmazonS3":
        raise ApiError("InvalidProvider", 'Source.Provider must be "AmazonS3"')
    location = parse_uri_path(source["UriPath"], s3)
    role = parse_role_arn(source["RoleArnToAssume"])
    duration = validate_duration(source.get("RoleSessionDurationInSeconds"))
    destination = None
    if "Destination" in body:
        destination = parse_destination(
            body["Destination"], s3, source_role=role, source_duration=duration
        )
        check_apart(location, destination.location)
    tenant = validate_tenant_name(body["TenantName"])
    encoders = parse_encoder_uids(body.get("EncoderUids", []))
    return JobRequest(job_id, tenant, location, role, duration, encoders, destination)


def parse_encoder_uids(value: object) -> frozenset[int]:
    """`EncoderUids`: 0..64 uids (integers 0..4294967294) besides the creator."""
    if not isinstance(value, list):
        raise ApiError("InvalidRequest", "field 'EncoderUids' must be a list of integer uids")
    if len(value) > MAX_ENCODER_UIDS:
        raise ApiError(
            "InvalidRequest",
            f"EncoderUids has {len(value)} entries; at most {MAX_ENCODER_UIDS} are allowed",
        )
    for uid in value:
        if isinstance(uid, bool) or not isinstance(uid, int) or not 0 <= uid <= MAX_UID:
            raise ApiError(
                "InvalidRequest",
                f"EncoderUids: {uid!r} is not a uid (an integer 0..{MAX_UID}); "
                "give numeric uids, e.g. from `id -u USER`",
            )
    return frozenset(value)
