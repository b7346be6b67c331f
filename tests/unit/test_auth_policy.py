"""auth/policy.py: the session policy's content, and that it means what IAM reads.

`iam_matches` below is IAM's matching as documented for Resource ARNs and
StringLike (`*` any run, `?` one character, `${*}` `${?}` `${$}` the literal
characters); it lets the tests check what a folder's policy allows, not only
how it is spelled.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s3feed.auth.policy import MAX_POLICY_CHARS, iam_literal, packed, session_policy


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


def may_get(policy: dict[str, Any], partition: str, bucket: str, key: str) -> bool:
    s = statement(policy, "ReadFolder")
    return s["Action"] == "s3:GetObject" and iam_matches(
        s["Resource"], f"arn:{partition}:s3:::{bucket}/{key}"
    )


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


def test_a_folder_policy_reads_and_lists_the_folder_only() -> None:
    policy = session_policy(partition="aws", bucket="media", prefix="shows/", region="eu-west-1")
    assert policy == {
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
    }
    assert may_get(policy, "aws", "media", "shows/a")
    assert may_get(policy, "aws", "media", "shows/deep/er/b.mp4")
    assert not may_get(policy, "aws", "media", "other/x")
    assert not may_get(policy, "aws", "media", "shows")  # the folder's name is not in it
    assert not may_get(policy, "aws", "media", "showsX/a")
    assert not may_get(policy, "aws", "media-2", "shows/a")
    assert may_list(policy, "aws", "media", "shows/")
    assert may_list(policy, "aws", "media", "shows/sub/")
    assert not may_list(policy, "aws", "media", "")
    assert not may_list(policy, "aws", "media", "other/")
    assert not may_list(policy, "aws", "media", "show")


def test_a_whole_bucket_policy_has_no_prefix_condition() -> None:
    policy = session_policy(partition="aws", bucket="media", prefix="")
    assert statement(policy, "ReadFolder")["Resource"] == "arn:aws:s3:::media/*"
    listing = statement(policy, "ListFolder")
    assert listing["Resource"] == "arn:aws:s3:::media" and "Condition" not in listing
    assert may_get(policy, "aws", "media", "any/key") and may_list(policy, "aws", "media", "")
    assert not may_get(policy, "aws", "other", "any/key")
    # without a region, S3 of any region of the partition may decrypt for the session
    assert statement(policy, "DecryptViaS3")["Condition"] == {
        "StringLike": {"kms:ViaService": "s3.*.amazonaws.com"}
    }


def test_the_china_partition_is_named_everywhere() -> None:
    policy = session_policy(partition="aws-cn", bucket="m", prefix="f/", region="cn-north-1")
    text = packed(policy)
    assert "arn:aws:" not in text
    assert statement(policy, "ReadFolder")["Resource"] == "arn:aws-cn:s3:::m/f/*"
    assert statement(policy, "ListFolder")["Resource"] == "arn:aws-cn:s3:::m"
    kms = statement(policy, "DecryptViaS3")
    assert kms["Resource"] == "arn:aws-cn:kms:*:*:key/*"
    assert kms["Condition"]["StringEquals"]["kms:ViaService"] == "s3.cn-north-1.amazonaws.com.cn"
    assert may_get(policy, "aws-cn", "m", "f/x") and not may_get(policy, "aws", "m", "f/x")


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
    policy = session_policy(partition="aws", bucket="b", prefix=folder)
    for key in inside:
        assert may_get(policy, "aws", "b", key), key
        assert may_list(policy, "aws", "b", key.rsplit("/", 1)[0] + "/")
    for key in outside:
        assert not may_get(policy, "aws", "b", key), key
        assert not may_list(policy, "aws", "b", key.rsplit("/", 1)[0] + "/"), key


NAME_CHARS = st.sampled_from(list("ab*?${}/-_. é\u4e2d\x01"))
NAMES = st.text(NAME_CHARS, min_size=1, max_size=12)


@settings(max_examples=400, deadline=None)
@given(folder=NAMES, suffix=st.text(NAME_CHARS, max_size=8), other=NAMES)
def test_any_folder_allows_exactly_its_own_keys(folder: str, suffix: str, other: str) -> None:
    folder = folder.rstrip("/") + "/" if folder.strip("/") else "f/"
    policy = session_policy(partition="aws", bucket="b", prefix=folder)
    assert may_get(policy, "aws", "b", folder + suffix)
    assert may_list(policy, "aws", "b", folder + suffix)
    assert may_get(policy, "aws", "b", other) is other.startswith(folder)
    assert may_list(policy, "aws", "b", other) is other.startswith(folder)


def test_iam_literal_escapes_each_special_character_once() -> None:
    assert iam_literal("a*b?c$d{e}") == "a${*}b${?}c${$}d{e}"
    assert iam_literal("${*}") == "${$}{${*}}"
    assert iam_literal("plain/κλειδί") == "plain/κλειδί"


def test_packed_is_compact_ascii_json_of_the_same_document() -> None:
    policy = session_policy(partition="aws", bucket="b", prefix="séries/\x01\ttab/")
    text = packed(policy)
    assert text.isascii() and " " not in text and "\n" not in text
    assert all(0x20 <= ord(c) < 0x7F for c in text), "STS takes no raw control characters"
    assert json.loads(text) == policy
    assert statement(json.loads(text), "ReadFolder")["Resource"].endswith("/séries/\x01\ttab/*")


def test_the_same_arguments_give_the_same_policy_and_text() -> None:
    kw: dict[str, Any] = {"partition": "aws", "bucket": "b", "prefix": "f/", "region": "us-east-1"}
    first, second = session_policy(**kw), session_policy(**kw)
    assert first == second and first is not second
    assert packed(first) == packed(second)
    assert [s["Sid"] for s in first["Statement"]] == ["ReadFolder", "ListFolder", "DecryptViaS3"]


def test_more_statements_are_appended_after_the_read_statements() -> None:
    extra = {
        "Sid": "WriteOutputs",
        "Effect": "Allow",
        "Action": "s3:PutObject",
        "Resource": "arn:aws:s3:::out/job-1/*",
    }
    policy = session_policy(partition="aws", bucket="b", prefix="", statements=(extra,))
    assert policy["Statement"][-1] == extra and policy["Statement"][-1] is not extra
    assert len(policy["Statement"]) == 4


@pytest.mark.parametrize(("bucket", "prefix"), [("b", "folder"), ("", "f/")])
def test_a_prefix_that_is_not_a_folder_is_a_programming_error(bucket: str, prefix: str) -> None:
    with pytest.raises(ValueError):
        session_policy(partition="aws", bucket=bucket, prefix=prefix)


def test_folders_of_700_ascii_characters_fit_in_the_worst_case_bucket_and_region() -> None:
    def chars(folder_len: int) -> int:
        folder = ("f" * (folder_len - 1)) + "/"
        policy = session_policy(
            partition="aws-us-gov", bucket="b" * 63, prefix=folder, region="ap-southeast-2"
        )
        return len(packed(policy))

    assert chars(700) <= MAX_POLICY_CHARS  # what the SessionPolicyTooLarge message promises
    assert chars(800) > MAX_POLICY_CHARS
