"""Every statement of a job's session policies: all that a job's credentials may touch.

Every AssumeRole of a job carries an inline session policy (docs/design.md,
Session policy). A session's permissions are the intersection of the
customer's role policy and that document, so even a role that allows the
whole bucket yields credentials that reach only the job's folders. This
module writes every statement any s3feed session gets; nothing else builds
one. With P the folder's partition, B its bucket, F its folder ('' = the
whole bucket), R its region:

    ReadFolder      s3:GetObject on arn:P:s3:::B/F*
                    -- GET, ranged GET, HEAD, HEAD ?partNumber=, ChecksumMode and
                       If-Match all authorise as s3:GetObject. The daemon never
                       sends ?versionId=, so s3:GetObjectVersion stays out.
    ListFolder      s3:ListBucket on arn:P:s3:::B with StringLike s3:prefix F*
                    (whole bucket: no condition) -- ListObjectsV2, whose Prefix
                    is always the folder plus the caller's relative prefix.
    DecryptViaS3    kms:Decrypt on any KMS key, only when S3 in R calls KMS for
                    the session: an SSE-KMS object cannot be read without it,
                    and a session policy limits KMS as much as S3. It grants
                    nothing the role lacks; the key policy still decides, and S3
                    asks KMS only for a GET that ReadFolder already allowed.
    WriteOutputs    s3:PutObject, s3:AbortMultipartUpload and
                    s3:ListMultipartUploadParts on the Destination's
                    arn:P:s3:::B/F* (docs/design.md, Outputs).
    EncryptViaS3    kms:GenerateDataKey and kms:Decrypt via S3 in the
                    Destination's R, for SSE-KMS outputs only: S3 asks KMS for
                    a data key per object (and to decrypt it for a multipart
                    upload's parts).
    AbortLeftovers  s3:AbortMultipartUpload on arn:P:s3:::B/F*: a restarted
                    daemon aborting the uploads a crash left, nothing more.

The policies, one per kind of session:

    job_policy(source)                   ReadFolder, ListFolder, DecryptViaS3
    job_policy(source, outputs=...)      ... + WriteOutputs [+ EncryptViaS3], when
                                         the Destination uses the Source's role
    outputs_policy(outputs)              WriteOutputs [+ EncryptViaS3]: the second
                                         session of a Destination role of its own
    abort_policy(folder)                 AbortLeftovers

and the one document that is not a session's:

    role_policy(source, outputs=, kms_keys=)
                                         the permissions policy the customer
                                         attaches to the role (`s3feed iam-policy`):
                                         the statements of the job's session,
                                         with KMS narrowed to the named keys
                                         (none named: no KMS statement). A role
                                         with it permits every request the
                                         daemon makes for such a job, since the
                                         session policies above are built from
                                         the same statements.

`*`, `?` and `$` in a bucket or folder are written as IAM's fixed policy
variables `${*}`, `${?}`, `${$}`: IAM reads a bare `*` or `?` as a wildcard
in Resource ARNs and in StringLike, and `${` as the start of a variable, so
a folder named `a*` must not allow `abc/`. (Policy variables need Version
2012-10-17.)

The text sent to STS is `packed(policy)`: compact JSON, ASCII only (STS
accepts only \\t, \\n, \\r and U+0020..U+00FF in the parameter), at most
MAX_POLICY_CHARS characters. STS also compresses the policy into the session
token and may still refuse it as PackedPolicyTooLarge; that budget is STS's
own and is only known from its answer.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from s3feed.auth.validate import PARTITIONS, dns_suffix

VERSION = "2012-10-17"
MAX_POLICY_CHARS = 2048  # STS: the plaintext of inline session policies
WRITE_ACTIONS = ("s3:PutObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts")
_IAM_LITERAL = {"*": "${*}", "?": "${?}", "$": "${$}"}

Statement = dict[str, Any]


class Folder(Protocol):
    """A folder of a bucket, as a policy grants it (transfer/'s S3Location is one)."""

    @property
    def partition(self) -> str: ...  # aws, aws-cn or aws-us-gov

    @property
    def bucket(self) -> str: ...

    @property
    def prefix(self) -> str: ...  # '' (the whole bucket) or ending in '/'

    @property
    def region(self) -> str: ...


@dataclass(frozen=True)
class Outputs:
    """Where a job's outputs go, and whether S3 encrypts them with KMS (SSE-KMS)."""

    folder: Folder
    kms: bool


def iam_literal(text: str) -> str:
    """`text` as a literal inside an IAM Resource ARN or StringLike value."""
    return "".join(_IAM_LITERAL.get(c, c) for c in text)


@dataclass(frozen=True)
class _Names:
    """A folder's names as the statements write them."""

    bucket: str  # arn:P:s3:::B
    objects: str  # arn:P:s3:::B/F*
    prefix: str | None  # F*, the s3:prefix the folder lists; None for the whole bucket
    kms_keys: str  # arn:P:kms:*:*:key/*
    s3_service: str  # s3.R.amazonaws.com (.cn in aws-cn): kms:ViaService


def _names(folder: Folder) -> _Names:
    """The one place a folder becomes ARNs and S3's service name in its partition."""
    if not folder.bucket:
        raise ValueError("a session policy needs a bucket")
    if folder.prefix and not folder.prefix.endswith("/"):
        raise ValueError(f"prefix {folder.prefix!r} must be '' (whole bucket) or end with '/'")
    if folder.partition not in PARTITIONS:
        raise ValueError(f"unknown partition {folder.partition!r}")
    p = folder.partition
    bucket = f"arn:{p}:s3:::{iam_literal(folder.bucket)}"
    prefix = iam_literal(folder.prefix) + "*"
    return _Names(
        bucket=bucket,
        objects=f"{bucket}/{prefix}",
        prefix=prefix if folder.prefix else None,
        kms_keys=f"arn:{p}:kms:*:*:key/*",
        s3_service=f"s3.{folder.region}.{dns_suffix(p)}",
    )


def _allow(
    sid: str,
    action: str | list[str],
    resource: str | list[str],
    condition: dict[str, Any] | None = None,
) -> Statement:
    statement: Statement = {"Sid": sid, "Effect": "Allow", "Action": action, "Resource": resource}
    if condition is not None:
        statement["Condition"] = condition
    return statement


def _via_s3(names: _Names) -> dict[str, Any]:
    """Only when S3 in the folder's region calls KMS for the session."""
    return {"StringEquals": {"kms:ViaService": names.s3_service}}


# Which KMS keys a statement names: None, any key of the partition (a session
# policy, which only passes on what the role allows); else these key ARNs (a
# role policy), or no KMS statement at all when the tuple is empty.
KmsKeys = tuple[str, ...] | None


def _kms_resource(n: _Names, keys: KmsKeys) -> str | list[str] | None:
    if keys is None:
        return n.kms_keys
    if not keys:
        return None
    return keys[0] if len(keys) == 1 else list(keys)


def _read(source: Folder, kms_keys: KmsKeys = None) -> list[Statement]:
    n = _names(source)
    listing = {"StringLike": {"s3:prefix": [n.prefix]}} if n.prefix is not None else None
    statements = [
        _allow("ReadFolder", "s3:GetObject", n.objects),
        _allow("ListFolder", "s3:ListBucket", n.bucket, listing),
    ]
    if (keys := _kms_resource(n, kms_keys)) is not None:
        statements.append(_allow("DecryptViaS3", "kms:Decrypt", keys, _via_s3(n)))
    return statements


def _write(outputs: Outputs, kms_keys: KmsKeys = None) -> list[Statement]:
    n = _names(outputs.folder)
    statements = [_allow("WriteOutputs", list(WRITE_ACTIONS), n.objects)]
    if outputs.kms and (keys := _kms_resource(n, kms_keys)) is not None:
        actions = ["kms:GenerateDataKey", "kms:Decrypt"]
        statements.append(_allow("EncryptViaS3", actions, keys, _via_s3(n)))
    return statements


def _policy(statements: list[Statement]) -> dict[str, Any]:
    return {"Version": VERSION, "Statement": statements}


def job_policy(source: Folder, *, outputs: Outputs | None = None) -> dict[str, Any]:
    """A job's session: read `source`; write `outputs` when they use the same role.
    A new dict, the same for the same arguments."""
    return _policy(_read(source) + (_write(outputs) if outputs is not None else []))


def outputs_policy(outputs: Outputs) -> dict[str, Any]:
    """The session of a Destination role other than the Source's: writes only."""
    return _policy(_write(outputs))


def abort_policy(folder: Folder) -> dict[str, Any]:
    """A recovery session's: abort the multipart uploads left in `folder`, nothing else."""
    return _policy([_allow("AbortLeftovers", "s3:AbortMultipartUpload", _names(folder).objects)])


def role_policy(
    source: Folder | None, *, outputs: Outputs | None = None, kms_keys: tuple[str, ...] = ()
) -> dict[str, Any]:
    """The permissions policy a customer's role needs for jobs reading `source` and
    writing `outputs` (either may be None: a Destination role of its own needs only
    the writes). The session policies' statements, with KMS only on `kms_keys`, via S3."""
    if source is None and outputs is None:
        raise ValueError("a role policy needs a source or a destination folder")
    statements = _read(source, kms_keys) if source is not None else []
    if outputs is not None:
        statements += _write(outputs, kms_keys)
    return _policy(statements)


def packed(policy: Mapping[str, Any]) -> str:
    """The policy as sent to STS: compact, ASCII-only JSON, keys in the given order."""
    return json.dumps(policy, separators=(",", ":"), ensure_ascii=True)
