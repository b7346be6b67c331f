"""auth/policy.py: every session policy s3feed sends, statement by statement.

`CASES` is the table: for each kind of session (a read-only job, a job whose
outputs use its role, in another bucket or the same one, with SSE-KMS, a
Destination role's own session, the abort-only recovery session) and each
partition, the exact document, written out by hand. A row passes only when
the packed text, the bytes STS receives, is the same, so key order counts.

`iam_matches` below is IAM's matching as documented for Resource ARNs and
StringLike (`*` any run, `?` one character, `${*}` `${?}` `${$}` the literal
characters); it lets the later tests check what a folder's policy allows, not
only how it is spelled.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s3feed.auth.policy import (
    MAX_POLICY_CHARS,
    Outputs,
    abort_policy,
    iam_literal,
    job_policy,
    outputs_policy,
    packed,
    role_policy,
)


@dataclass(frozen=True)
class At:
    """A policy's Folder (in the daemon: transfer/'s S3Location)."""

    partition: str
    bucket: str
    prefix: str
    region: str


MEDIA = At("aws", "media", "shows/", "eu-west-1")
WHOLE_MEDIA = At("aws", "media", "", "eu-west-1")
OUT = At("aws", "out", "renditions/", "eu-west-1")
MEDIA_OUT = At("aws", "media", "encoded/", "eu-west-1")
OUT_US = At("aws", "out-us", "", "us-east-1")
CN = At("aws-cn", "media-cn", "f/", "cn-north-1")
CN_OUT = At("aws-cn", "out-cn", "o/", "cn-northwest-1")
GOV = At("aws-us-gov", "media-gov", "f/", "us-gov-west-1")
WILD = At("aws", "media", "a*b?c$/${x}/", "eu-west-1")

WRITE = ["s3:PutObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"]


def read_statements(arn: str, objects: str, prefix: str | None, service: str) -> list[Any]:
    """The three read statements, spelled out once for the table's many rows."""
    listing: dict[str, Any] = {
        "Sid": "ListFolder",
        "Effect": "Allow",
        "Action": "s3:ListBucket",
        "Resource": arn,
    }
    if prefix is not None:
        listing["Condition"] = {"StringLike": {"s3:prefix": [prefix]}}
    partition = arn.split(":")[1]
    return [
        {"Sid": "ReadFolder", "Effect": "Allow", "Action": "s3:GetObject", "Resource": objects},
        listing,
        {
            "Sid": "DecryptViaS3",
            "Effect": "Allow",
            "Action": "kms:Decrypt",
            "Resource": f"arn:{partition}:kms:*:*:key/*",
            "Condition": {"StringEquals": {"kms:ViaService": service}},
        },
    ]


MEDIA_READ = read_statements(
    "arn:aws:s3:::media", "arn:aws:s3:::media/shows/*", "shows/*", "s3.eu-west-1.amazonaws.com"
)

CASES: list[tuple[str, Callable[[], dict[str, Any]], dict[str, Any]]] = [
    (
        "read-only job on a folder",
        lambda: job_policy(MEDIA),
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Sid": "ReadFolder",
                    "Effect": "Allow",
                    "Action": "s3:GetObject",
                    "Resource": "arn:aws:s3:::media/shows/*",
                },
                {
                    "Sid": "ListFolder",
                    "Effect": "Allow",
                    "Action": "s3:ListBucket",
                    "Resource": "arn:aws:s3:::media",
                    "Condition": {"StringLike": {"s3:prefix": ["shows/*"]}},
                },
                {
                    "Sid": "DecryptViaS3",
                    "Effect": "Allow",
                    "Action": "kms:Decrypt",
                    "Resource": "arn:aws:kms:*:*:key/*",
                    "Condition": {"StringEquals": {"kms:ViaService": "s3.eu-west-1.amazonaws.com"}},
                },
            ],
        },
    ),
    (
        "read-only job on the whole bucket: no s3:prefix condition",
        lambda: job_policy(WHOLE_MEDIA),
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Sid": "ReadFolder",
                    "Effect": "Allow",
                    "Action": "s3:GetObject",
                    "Resource": "arn:aws:s3:::media/*",
                },
                {
                    "Sid": "ListFolder",
                    "Effect": "Allow",
                    "Action": "s3:ListBucket",
                    "Resource": "arn:aws:s3:::media",
                },
                {
                    "Sid": "DecryptViaS3",
                    "Effect": "Allow",
                    "Action": "kms:Decrypt",
                    "Resource": "arn:aws:kms:*:*:key/*",
                    "Condition": {"StringEquals": {"kms:ViaService": "s3.eu-west-1.amazonaws.com"}},
                },
            ],
        },
    ),
    (
        "job with outputs in another bucket, same role",
        lambda: job_policy(MEDIA, outputs=Outputs(OUT, kms=False)),
        {
            "Version": "2012-10-17",
            "Statement": [
                *MEDIA_READ,
                {
                    "Sid": "WriteOutputs",
                    "Effect": "Allow",
                    "Action": WRITE,
                    "Resource": "arn:aws:s3:::out/renditions/*",
                },
            ],
        },
    ),
    (
        "job with outputs in the same bucket, another folder",
        lambda: job_policy(MEDIA, outputs=Outputs(MEDIA_OUT, kms=False)),
        {
            "Version": "2012-10-17",
            "Statement": [
                *MEDIA_READ,
                {
                    "Sid": "WriteOutputs",
                    "Effect": "Allow",
                    "Action": WRITE,
                    "Resource": "arn:aws:s3:::media/encoded/*",
                },
            ],
        },
    ),
    (
        "job with SSE-KMS outputs: S3 in the outputs' region may use KMS keys",
        lambda: job_policy(MEDIA, outputs=Outputs(OUT_US, kms=True)),
        {
            "Version": "2012-10-17",
            "Statement": [
                *MEDIA_READ,
                {
                    "Sid": "WriteOutputs",
                    "Effect": "Allow",
                    "Action": WRITE,
                    "Resource": "arn:aws:s3:::out-us/*",
                },
                {
                    "Sid": "EncryptViaS3",
                    "Effect": "Allow",
                    "Action": ["kms:GenerateDataKey", "kms:Decrypt"],
                    "Resource": "arn:aws:kms:*:*:key/*",
                    "Condition": {"StringEquals": {"kms:ViaService": "s3.us-east-1.amazonaws.com"}},
                },
            ],
        },
    ),
    (
        "a Destination role's own session: writes only",
        lambda: outputs_policy(Outputs(OUT, kms=False)),
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Sid": "WriteOutputs",
                    "Effect": "Allow",
                    "Action": WRITE,
                    "Resource": "arn:aws:s3:::out/renditions/*",
                }
            ],
        },
    ),
    (
        "a Destination role's own session, SSE-KMS (a key id changes nothing here)",
        lambda: outputs_policy(Outputs(OUT, kms=True)),
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Sid": "WriteOutputs",
                    "Effect": "Allow",
                    "Action": WRITE,
                    "Resource": "arn:aws:s3:::out/renditions/*",
                },
                {
                    "Sid": "EncryptViaS3",
                    "Effect": "Allow",
                    "Action": ["kms:GenerateDataKey", "kms:Decrypt"],
                    "Resource": "arn:aws:kms:*:*:key/*",
                    "Condition": {"StringEquals": {"kms:ViaService": "s3.eu-west-1.amazonaws.com"}},
                },
            ],
        },
    ),
    (
        "abort-only recovery session",
        lambda: abort_policy(OUT),
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Sid": "AbortLeftovers",
                    "Effect": "Allow",
                    "Action": "s3:AbortMultipartUpload",
                    "Resource": "arn:aws:s3:::out/renditions/*",
                }
            ],
        },
    ),
    (
        "abort-only recovery session, whole bucket",
        lambda: abort_policy(OUT_US),
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Sid": "AbortLeftovers",
                    "Effect": "Allow",
                    "Action": "s3:AbortMultipartUpload",
                    "Resource": "arn:aws:s3:::out-us/*",
                }
            ],
        },
    ),
    (
        "aws-cn: every ARN in the partition, S3 under amazonaws.com.cn",
        lambda: job_policy(CN, outputs=Outputs(CN_OUT, kms=True)),
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Sid": "ReadFolder",
                    "Effect": "Allow",
                    "Action": "s3:GetObject",
                    "Resource": "arn:aws-cn:s3:::media-cn/f/*",
                },
                {
                    "Sid": "ListFolder",
                    "Effect": "Allow",
                    "Action": "s3:ListBucket",
                    "Resource": "arn:aws-cn:s3:::media-cn",
                    "Condition": {"StringLike": {"s3:prefix": ["f/*"]}},
                },
                {
                    "Sid": "DecryptViaS3",
                    "Effect": "Allow",
                    "Action": "kms:Decrypt",
                    "Resource": "arn:aws-cn:kms:*:*:key/*",
                    "Condition": {
                        "StringEquals": {"kms:ViaService": "s3.cn-north-1.amazonaws.com.cn"}
                    },
                },
                {
                    "Sid": "WriteOutputs",
                    "Effect": "Allow",
                    "Action": WRITE,
                    "Resource": "arn:aws-cn:s3:::out-cn/o/*",
                },
                {
                    "Sid": "EncryptViaS3",
                    "Effect": "Allow",
                    "Action": ["kms:GenerateDataKey", "kms:Decrypt"],
                    "Resource": "arn:aws-cn:kms:*:*:key/*",
                    "Condition": {
                        "StringEquals": {"kms:ViaService": "s3.cn-northwest-1.amazonaws.com.cn"}
                    },
                },
            ],
        },
    ),
    (
        "aws-cn abort-only session",
        lambda: abort_policy(CN_OUT),
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Sid": "AbortLeftovers",
                    "Effect": "Allow",
                    "Action": "s3:AbortMultipartUpload",
                    "Resource": "arn:aws-cn:s3:::out-cn/o/*",
                }
            ],
        },
    ),
    (
        "aws-us-gov: its own ARNs, S3 under amazonaws.com",
        lambda: job_policy(GOV, outputs=Outputs(GOV, kms=True)),
        {
            "Version": "2012-10-17",
            "Statement": [
                *read_statements(
                    "arn:aws-us-gov:s3:::media-gov",
                    "arn:aws-us-gov:s3:::media-gov/f/*",
                    "f/*",
                    "s3.us-gov-west-1.amazonaws.com",
                ),
                {
                    "Sid": "WriteOutputs",
                    "Effect": "Allow",
                    "Action": WRITE,
                    "Resource": "arn:aws-us-gov:s3:::media-gov/f/*",
                },
                {
                    "Sid": "EncryptViaS3",
                    "Effect": "Allow",
                    "Action": ["kms:GenerateDataKey", "kms:Decrypt"],
                    "Resource": "arn:aws-us-gov:kms:*:*:key/*",
                    "Condition": {
                        "StringEquals": {"kms:ViaService": "s3.us-gov-west-1.amazonaws.com"}
                    },
                },
            ],
        },
    ),
    (
        "aws-us-gov Destination role's own session",
        lambda: outputs_policy(Outputs(GOV, kms=False)),
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Sid": "WriteOutputs",
                    "Effect": "Allow",
                    "Action": WRITE,
                    "Resource": "arn:aws-us-gov:s3:::media-gov/f/*",
                }
            ],
        },
    ),
    (
        "IAM's wildcards and variables in a folder are literal in every statement",
        lambda: job_policy(WILD, outputs=Outputs(WILD, kms=False)),
        {
            "Version": "2012-10-17",
            "Statement": [
                *read_statements(
                    "arn:aws:s3:::media",
                    "arn:aws:s3:::media/a${*}b${?}c${$}/${$}{x}/*",
                    "a${*}b${?}c${$}/${$}{x}/*",
                    "s3.eu-west-1.amazonaws.com",
                ),
                {
                    "Sid": "WriteOutputs",
                    "Effect": "Allow",
                    "Action": WRITE,
                    "Resource": "arn:aws:s3:::media/a${*}b${?}c${$}/${$}{x}/*",
                },
            ],
        },
    ),
    (
        "IAM's wildcards in an abort session's folder are literal",
        lambda: abort_policy(WILD),
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Sid": "AbortLeftovers",
                    "Effect": "Allow",
                    "Action": "s3:AbortMultipartUpload",
                    "Resource": "arn:aws:s3:::media/a${*}b${?}c${$}/${$}{x}/*",
                }
            ],
        },
    ),
]


KEY = "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
KEY_US = "arn:aws:kms:us-east-1:123456789012:key/abcd"

# The customer's role policy (`s3feed iam-policy`): the same statements, KMS on
# the named keys only, and no KMS statement when none is named.
ROLE_CASES: list[tuple[str, Callable[[], dict[str, Any]], dict[str, Any]]] = [
    (
        "role reading a folder, no KMS key named: no KMS statement",
        lambda: role_policy(MEDIA),
        {"Version": "2012-10-17", "Statement": MEDIA_READ[:2]},
    ),
    (
        "role reading and writing, SSE-KMS with one key: the key, via S3 only",
        lambda: role_policy(MEDIA, outputs=Outputs(OUT_US, kms=True), kms_keys=(KEY,)),
        {
            "Version": "2012-10-17",
            "Statement": [
                *MEDIA_READ[:2],
                {**MEDIA_READ[2], "Resource": KEY},
                {
                    "Sid": "WriteOutputs",
                    "Effect": "Allow",
                    "Action": WRITE,
                    "Resource": "arn:aws:s3:::out-us/*",
                },
                {
                    "Sid": "EncryptViaS3",
                    "Effect": "Allow",
                    "Action": ["kms:GenerateDataKey", "kms:Decrypt"],
                    "Resource": KEY,
                    "Condition": {"StringEquals": {"kms:ViaService": "s3.us-east-1.amazonaws.com"}},
                },
            ],
        },
    ),
    (
        "a Destination role of its own, two keys",
        lambda: role_policy(None, outputs=Outputs(OUT, kms=True), kms_keys=(KEY, KEY_US)),
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Sid": "WriteOutputs",
                    "Effect": "Allow",
                    "Action": WRITE,
                    "Resource": "arn:aws:s3:::out/renditions/*",
                },
                {
                    "Sid": "EncryptViaS3",
                    "Effect": "Allow",
                    "Action": ["kms:GenerateDataKey", "kms:Decrypt"],
                    "Resource": [KEY, KEY_US],
                    "Condition": {"StringEquals": {"kms:ViaService": "s3.eu-west-1.amazonaws.com"}},
                },
            ],
        },
    ),
]


@pytest.mark.parametrize(
    ("build", "expected"), [c[1:] for c in ROLE_CASES], ids=[c[0] for c in ROLE_CASES]
)
def test_each_role_gets_exactly_this_policy(
    build: Callable[[], dict[str, Any]], expected: dict[str, Any]
) -> None:
    assert packed(build()) == packed(expected)


def _grants(policy: dict[str, Any]) -> set[tuple[str, str, str]]:
    """(action, resource, condition) of every Allow, one per action and resource."""
    out = set()
    for s in policy["Statement"]:
        assert s["Effect"] == "Allow"
        actions = s["Action"] if isinstance(s["Action"], list) else [s["Action"]]
        resources = s["Resource"] if isinstance(s["Resource"], list) else [s["Resource"]]
        condition = json.dumps(s.get("Condition"), sort_keys=True)
        out |= {(a, r, condition) for a in actions for r in resources}
    return out


@pytest.mark.parametrize("source", [MEDIA, WHOLE_MEDIA, CN, WILD])
@pytest.mark.parametrize("dest", [None, OUT, MEDIA_OUT, OUT_US, CN_OUT])
@pytest.mark.parametrize("kms", [False, True])
def test_a_role_with_its_policy_permits_what_every_session_of_its_jobs_asks(
    source: At, dest: At | None, kms: bool
) -> None:
    """Each (action, resource, condition) a session policy allows is allowed by the
    role policy too, with the S3 resources and conditions as they are and KMS on
    the named key instead of any key; the role allows nothing else."""
    key = "arn:aws:kms:eu-west-1:123456789012:key/k"
    outputs = Outputs(dest, kms=kms) if dest is not None else None

    def narrowed(session: dict[str, Any], keys: tuple[str, ...]) -> set[tuple[str, str, str]]:
        return {
            (a, key if r.endswith(":kms:*:*:key/*") else r, c)
            for a, r, c in _grants(session)
            if keys or not a.startswith("kms:")
        }

    for keys in ((key,), ()):
        role = role_policy(source, outputs=outputs, kms_keys=keys)
        assert _grants(role) == narrowed(job_policy(source, outputs=outputs), keys)
        if outputs is not None:
            # A Destination role of its own: what its second session asks.
            own = role_policy(None, outputs=outputs, kms_keys=keys)
            assert _grants(own) == narrowed(outputs_policy(outputs), keys)


def test_a_role_policy_needs_a_folder() -> None:
    with pytest.raises(ValueError):
        role_policy(None)


@pytest.mark.parametrize(("build", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_each_session_gets_exactly_this_policy(
    build: Callable[[], dict[str, Any]], expected: dict[str, Any]
) -> None:
    policy = build()
    assert policy == expected
    assert packed(policy) == packed(expected)  # the bytes STS gets: key order too


def test_every_row_expects_its_own_policy_and_every_statement_is_in_the_table() -> None:
    # A row that expected what another row does would pin down nothing new.
    texts = [packed(expected) for _, _, expected in CASES]
    assert len(set(texts)) == len(texts)
    sids = {s["Sid"] for _, _, expected in CASES for s in expected["Statement"]}
    assert sids == {
        "ReadFolder",
        "ListFolder",
        "DecryptViaS3",
        "WriteOutputs",
        "EncryptViaS3",
        "AbortLeftovers",
    }


@pytest.mark.parametrize(
    "folder",
    [
        At("aws", "b", "folder", "eu-west-1"),  # a prefix that is not a folder
        At("aws", "", "f/", "eu-west-1"),
        At("aws-iso", "b", "f/", "us-iso-east-1"),
    ],
)
@pytest.mark.parametrize(
    "build",
    [
        job_policy,
        lambda f: job_policy(At("aws", "b", "", "eu-west-1"), outputs=Outputs(f, kms=False)),
        lambda f: outputs_policy(Outputs(f, kms=True)),
        abort_policy,
    ],
)
def test_a_folder_policies_cannot_name_is_a_programming_error(
    folder: At, build: Callable[[At], Any]
) -> None:
    with pytest.raises(ValueError):
        build(folder)


def test_the_same_arguments_give_a_new_equal_policy() -> None:
    first, second = job_policy(MEDIA), job_policy(MEDIA)
    assert first == second and first is not second
    first["Statement"].clear()
    assert job_policy(MEDIA) == second


# -- what the resources mean to IAM -------------------------------------------------


def iam_matches(pattern: str, value: str) -> bool:
    regex = []
    i = 0
    while i < len(pattern):
        if pattern.startswith(("${*}", "${?}", "${$}"), i):
            regex.append(re.escape(pattern[i + 2]))
            i += 4
            continue
        assert not pattern.startswith("${", i), f"an unescaped variable in {pattern!r}"
        c = pattern[i]
        regex.append(".*" if c == "*" else "." if c == "?" else re.escape(c))
        i += 1
    return re.fullmatch("".join(regex), value, re.DOTALL) is not None


def statement(policy: dict[str, Any], sid: str) -> dict[str, Any]:
    found = [s for s in policy["Statement"] if s.get("Sid") == sid]
    assert len(found) == 1, f"one statement {sid}"
    return found[0]


def may(policy: dict[str, Any], sid: str, partition: str, bucket: str, key: str) -> bool:
    """Whether the object statement `sid` covers the key."""
    return iam_matches(statement(policy, sid)["Resource"], f"arn:{partition}:s3:::{bucket}/{key}")


def may_list(policy: dict[str, Any], partition: str, bucket: str, prefix: str) -> bool:
    s = statement(policy, "ListFolder")
    if s["Action"] != "s3:ListBucket" or not iam_matches(
        s["Resource"], f"arn:{partition}:s3:::{bucket}"
    ):
        return False
    condition = s.get("Condition")
    if condition is None:
        return True
    assert list(condition) == ["StringLike"] and list(condition["StringLike"]) == ["s3:prefix"]
    return any(iam_matches(p, prefix) for p in condition["StringLike"]["s3:prefix"])


def every_grant(folder: At) -> list[tuple[dict[str, Any], str]]:
    """(policy, Sid) of each object statement on `folder`."""
    return [
        (job_policy(folder), "ReadFolder"),
        (outputs_policy(Outputs(folder, kms=False)), "WriteOutputs"),
        (abort_policy(folder), "AbortLeftovers"),
    ]


def test_a_folder_policy_reaches_the_folder_only() -> None:
    for policy, sid in every_grant(MEDIA):
        assert may(policy, sid, "aws", "media", "shows/a")
        assert may(policy, sid, "aws", "media", "shows/deep/er/b.mp4")
        assert not may(policy, sid, "aws", "media", "other/x")
        assert not may(policy, sid, "aws", "media", "shows")  # the folder's name is not in it
        assert not may(policy, sid, "aws", "media", "showsX/a")
        assert not may(policy, sid, "aws", "media-2", "shows/a")
        assert not may(policy, sid, "aws-cn", "media", "shows/a")
    policy = job_policy(MEDIA)
    assert may_list(policy, "aws", "media", "shows/")
    assert may_list(policy, "aws", "media", "shows/sub/")
    assert not may_list(policy, "aws", "media", "")
    assert not may_list(policy, "aws", "media", "other/")
    assert not may_list(policy, "aws", "media", "show")
    whole = job_policy(WHOLE_MEDIA)
    assert may(whole, "ReadFolder", "aws", "media", "any/key")
    assert may_list(whole, "aws", "media", "")
    assert not may(whole, "ReadFolder", "aws", "other", "any/key")


@pytest.mark.parametrize(
    ("folder", "inside", "outside"),
    [
        ("a*/", ["a*/x", "a*/b/c"], ["a/x", "ab/x", "abc/x", "a*b/x"]),
        ("*/", ["*/x"], ["a/x", "x/y"]),
        ("a?/", ["a?/x"], ["ab/x", "a/x"]),
        ("cost$/", ["cost$/x"], ["cost/x", "costs/x"]),
        ("${aws:username}/", ["${aws:username}/x"], ["s3feed/x", "/x"]),
        ("x${*}/", ["x${*}/k"], ["x*/k", "xab/k"]),
        ("*?$/", ["*?$/k"], ["abc/k", "ab$/k"]),
    ],
)
def test_wildcards_in_a_folder_name_are_literal_and_never_widen(
    folder: str, inside: list[str], outside: list[str]
) -> None:
    at = At("aws", "b", folder, "eu-west-1")
    for policy, sid in every_grant(at):
        for key in inside:
            assert may(policy, sid, "aws", "b", key), (sid, key)
        for key in outside:
            assert not may(policy, sid, "aws", "b", key), (sid, key)
    policy = job_policy(at)
    for key in inside:
        assert may_list(policy, "aws", "b", key.rsplit("/", 1)[0] + "/")
    for key in outside:
        assert not may_list(policy, "aws", "b", key.rsplit("/", 1)[0] + "/"), key


NAME_CHARS = st.sampled_from(list("ab*?${}/-_. é\u4e2d\x01"))
NAMES = st.text(NAME_CHARS, min_size=1, max_size=12)


@settings(max_examples=400, deadline=None)
@given(folder=NAMES, suffix=st.text(NAME_CHARS, max_size=8), other=NAMES)
def test_any_folder_allows_exactly_its_own_keys(folder: str, suffix: str, other: str) -> None:
    folder = folder.rstrip("/") + "/" if folder.strip("/") else "f/"
    at = At("aws", "b", folder, "eu-west-1")
    for policy, sid in every_grant(at):
        assert may(policy, sid, "aws", "b", folder + suffix)
        assert may(policy, sid, "aws", "b", other) is other.startswith(folder)
    policy = job_policy(at)
    assert may_list(policy, "aws", "b", folder + suffix)
    assert may_list(policy, "aws", "b", other) is other.startswith(folder)


# -- the text sent to STS ------------------------------------------------------------


def test_iam_literal_escapes_each_special_character_once() -> None:
    assert iam_literal("a*b?c$d{e}") == "a${*}b${?}c${$}d{e}"
    assert iam_literal("${*}") == "${$}{${*}}"
    assert iam_literal("plain/κλειδί") == "plain/κλειδί"


def test_packed_is_compact_ascii_json_of_the_same_document() -> None:
    policy = job_policy(At("aws", "b", "séries/\x01\ttab/", "eu-west-1"))
    text = packed(policy)
    assert text.isascii() and " " not in text and "\n" not in text
    assert all(0x20 <= ord(c) < 0x7F for c in text), "STS takes no raw control characters"
    assert json.loads(text) == policy
    assert statement(json.loads(text), "ReadFolder")["Resource"].endswith("/séries/\x01\ttab/*")


def test_folders_of_700_ascii_characters_fit_in_the_worst_case_bucket_and_region() -> None:
    def chars(folder_len: int) -> int:
        folder = ("f" * (folder_len - 1)) + "/"
        return len(packed(job_policy(At("aws-us-gov", "b" * 63, folder, "ap-southeast-2"))))

    assert chars(700) <= MAX_POLICY_CHARS  # what the SessionPolicyTooLarge message promises
    assert chars(800) > MAX_POLICY_CHARS
