"""The socket API's documents as types: what the clients send and get back.

The answers are TypedDicts, so they stay the plain dicts the server sent
(`job["JobId"]` works as before 0.3) while mypy knows every field; their
fields are daemon/openapi.yaml's, which a functional test compares
(tests/functional/test_client_types.py). `Destination` is what a job writes
its outputs to, given to `create_job`.
"""

# No `from __future__ import annotations` here: Python 3.11's TypedDict sees
# NotRequired only in evaluated annotations (`__optional_keys__`).
from typing import Any, Literal, NamedTuple, NotRequired, TypedDict

Encryption = Literal["AES256", "aws:kms"]


class Destination(NamedTuple):
    """A job's `Destination` (docs/design.md, Outputs): the folder outputs go to,
    and optionally a role of its own, its session length, and how S3 encrypts them.
    A NamedTuple, not a dataclass: `dataclasses` (with `inspect`) cost every CLI
    call about 9 ms of CPU to import (docs/design.md, Performance notes: CLI
    start-up)."""

    uri_path: str
    role_arn: str | None = None  # default: the Source's role
    duration: int | None = None  # RoleSessionDurationInSeconds; default: the Source's
    server_side_encryption: Encryption | None = None
    kms_key_id: str | None = None  # SSEKMSKeyId, with "aws:kms"

    def body(self) -> dict[str, Any]:
        """The request's `Destination` object."""
        doc: dict[str, Any] = {"Provider": "AmazonS3", "UriPath": self.uri_path}
        for name, value in (
            ("RoleArnToAssume", self.role_arn),
            ("RoleSessionDurationInSeconds", self.duration),
            ("ServerSideEncryption", self.server_side_encryption),
            ("SSEKMSKeyId", self.kms_key_id),
        ):
            if value is not None:
                doc[name] = value
        return doc


class ErrorDetail(TypedDict):
    Code: str
    Message: str
    RequestId: NotRequired[str]  # S3's x-amz-request-id, when S3 answered
    HostId: NotRequired[str]  # S3's x-amz-id-2


class Transfer(TypedDict):
    """A transfer record of a job; a fetch document is one of `Mode` "cache"."""

    Mode: Literal["cache", "stream", "upload"]
    Key: str
    State: Literal["queued", "running", "done", "failed", "cancelled"]
    BytesDone: int
    SizeBytes: int | None
    BytesPerSecond: int
    FetchId: NotRequired[str]  # fetches
    Path: NotRequired[str | None]  # fetches: the cache file, once done
    Verified: NotRequired[list[str]]  # fetches: checksums checked
    Error: NotRequired[ErrorDetail]


Fetch = Transfer  # what fetch() and get_fetch() answer


class JobDestination(TypedDict):
    """A job document's `Destination`: the request's, with its folder resolved."""

    Provider: Literal["AmazonS3"]
    UriPath: str
    Bucket: str
    Prefix: str
    Region: str
    RoleArnToAssume: str
    RoleSessionDurationInSeconds: int
    ServerSideEncryption: NotRequired[Encryption]
    SSEKMSKeyId: NotRequired[str]


class Job(TypedDict):
    """A job document (docs/design.md, Socket API)."""

    JobId: str
    TenantName: str
    EncoderUids: list[int]
    UriPath: str
    Bucket: str
    Prefix: str
    Region: str
    RoleArn: str
    RoleSessionName: str
    CredentialsExpireAt: str | None
    SessionDurationSeconds: int
    Refreshes: int
    LastRefreshError: str | None
    Warnings: list[str]
    CreatedAt: str
    SessionPolicy: dict[str, Any]
    Transfers: list[Transfer]
    Destination: NotRequired[JobDestination]


class ObjectInfo(TypedDict):
    """One entry of a listing; `Key` relative to the job's folder."""

    Key: str
    Size: int
    ETag: str
    LastModified: str


class ObjectPage(TypedDict):
    Objects: list[ObjectInfo]
    NextContinuationToken: NotRequired[str]  # absent on the last page


class Upload(TypedDict):
    """An output S3 completed (`put`); `Key` is the full S3 key."""

    Key: str
    Bucket: str
    ETag: str
    Size: int
    Checksum: dict[str, str]  # {"CRC32C": base64}, "-N" for a multipart object


class Delivery(TypedDict):
    """A delivery's answer once its last byte is written (`deliver`)."""

    Key: str
    ETag: str
    Size: int
    Length: int
    Bytes: int
    Source: Literal["cache", "s3"]
    ContentRange: NotRequired[str]


class Problem(TypedDict):
    Code: str
    Message: str


class Health(TypedDict):
    Status: Literal["ok", "degraded"]
    Problems: list[Problem]
    Principal: str | None
    Jobs: int
    Transfers: int
    CacheSizeBytes: int
    CacheCapacityBytes: int
    HttpListen: str | None


Policy = dict[str, Any]  # an IAM policy document (trust_policy)
