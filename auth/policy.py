"""The inline session policy of a job: what its credentials may reach.

Every AssumeRole of a job carries this policy (docs/design.md,
Session policy). A session's permissions are the intersection of the customer's
role policy and this document, so even a role that allows the whole bucket
yields credentials that read only the job's folder:

    ReadFolder    s3:GetObject on arn:P:s3:::BUCKET/PREFIX*   (whole bucket: BUCKET/*)
                  -- GET, ranged GET, HEAD, HEAD ?partNumber=, ChecksumMode and
                     If-Match all authorise as s3:GetObject. The daemon never
                     sends ?versionId=, so s3:GetObjectVersion stays out.
    ListFolder    s3:ListBucket on arn:P:s3:::BUCKET with StringLike s3:prefix
                  PREFIX* (whole bucket: no condition) -- ListObjectsV2, whose
                  Prefix is always the folder plus the caller's relative prefix.
    DecryptViaS3  kms:Decrypt on any KMS key, only when S3 calls KMS for the
                  session (kms:ViaService = s3.REGION.amazonaws.com): an SSE-KMS
                  object cannot be read without it, and a session policy limits
                  KMS as much as S3. It grants nothing the role lacks; the key
                  policy still decides, and S3 asks KMS only for a GET that
                  ReadFolder already allowed.

`*`, `?` and `$` in a folder are written as IAM's fixed policy variables
`${*}`, `${?}`, `${$}`: IAM reads a bare `*` or `?` as a wildcard in Resource
ARNs and in StringLike, and `${` as the start of a variable, so a folder
named `a*` must not allow `abc/`. (Policy variables need Version 2012-10-17.)

The text sent to STS is `packed(policy)`: compact JSON, ASCII only (STS
accepts only \\t, \\n, \\r and U+0020..U+00FF in the parameter), at most
MAX_POLICY_CHARS characters. STS also compresses the policy into the session
token and may still refuse it as PackedPolicyTooLarge; that budget is STS's
own and is only known from its answer.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

VERSION = "2012-10-17"
MAX_POLICY_CHARS = 2048  # STS: the plaintext of inline session policies
_IAM_LITERAL = {"*": "${*}", "?": "${?}", "$": "${$}"}


def iam_literal(text: str) -> str:
    """`text` as a literal inside an IAM Resource ARN or StringLike value."""
    return "".join(_IAM_LITERAL.get(c, c) for c in text)


def _check_folder(bucket: str, prefix: str) -> None:
    if not bucket:
        raise ValueError("session_policy needs a bucket")
    if prefix and not prefix.endswith("/"):
        raise ValueError(f"prefix {prefix!r} must be '' (whole bucket) or end with '/'")


def _kms_service(partition: str, region: str | None) -> tuple[str, str]:
    """(condition operator, kms:ViaService value) for S3 in `region` (any region if None)."""
    suffix = ".amazonaws.com.cn" if partition == "aws-cn" else ".amazonaws.com"
    if region is None:
        return "StringLike", f"s3.*{suffix}"
    return "StringEquals", f"s3.{region}{suffix}"


def session_policy(
    *,
    partition: str,
    bucket: str,
    prefix: str,
    region: str | None = None,
    statements: tuple[Mapping[str, Any], ...] = (),
) -> dict[str, Any]:
    """The inline session policy for a job whose folder is `prefix` in `bucket`.

    `prefix` is '' for the whole bucket, else it ends with '/'. `region` pins
    the KMS statement to S3 in that region (else S3 in any region of the
    partition). `statements` are appended as given, after the read
    statements: the place for a later feature's grants (e.g. s3:PutObject on
    an output folder), each with its own Sid. The result is a new dict, the
    same for the same arguments."""
    _check_folder(bucket, prefix)
    bucket_arn = f"arn:{partition}:s3:::{iam_literal(bucket)}"
    folder = iam_literal(prefix)
    list_folder: dict[str, Any] = {
        "Sid": "ListFolder",
        "Effect": "Allow",
        "Action": "s3:ListBucket",
        "Resource": bucket_arn,
    }
    if prefix:
        list_folder["Condition"] = {"StringLike": {"s3:prefix": [f"{folder}*"]}}
    operator, service = _kms_service(partition, region)
    return {
        "Version": VERSION,
        "Statement": [
            {
                "Sid": "ReadFolder",
                "Effect": "Allow",
                "Action": "s3:GetObject",
                "Resource": f"{bucket_arn}/{folder}*",
            },
            list_folder,
            {
                "Sid": "DecryptViaS3",
                "Effect": "Allow",
                "Action": "kms:Decrypt",
                "Resource": f"arn:{partition}:kms:*:*:key/*",
                "Condition": {operator: {"kms:ViaService": service}},
            },
            *(dict(s) for s in statements),
        ],
    }


def packed(policy: Mapping[str, Any]) -> str:
    """The policy as sent to STS: compact, ASCII-only JSON, keys in the given order."""
    return json.dumps(policy, separators=(",", ":"), ensure_ascii=True)
