"""FakeSts checks a session policy as STS does, and records it."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from s3feed.auth.clock import FakeClock
from s3feed.auth.errors import SessionPolicyTooLarge
from s3feed.auth.policy import MAX_POLICY_CHARS, job_policy, packed
from tests.fakes.sts import FakeSts

ROLE = "arn:aws:iam::272758771130:role/acme-media-reader"


def folder_policy(prefix: str) -> str:
    folder = SimpleNamespace(partition="aws", bucket="b", prefix=prefix, region="us-east-1")
    return packed(job_policy(folder))


async def assume(sts: FakeSts, policy: str | None) -> None:
    await sts.assume_role(
        role_arn=ROLE, session_name="s3feed-j", external_id="acme", duration=900, policy=policy
    )


async def test_a_good_policy_is_recorded_and_credentials_issued() -> None:
    sts = FakeSts(FakeClock())
    text = folder_policy("f/")
    await assume(sts, text)
    await assume(sts, None)
    assert [c.policy for c in sts.calls] == [text, None] and len(sts.issued) == 2


@pytest.mark.parametrize(
    ("text", "sts_code"),
    [
        ("{not json", "MalformedPolicyDocument"),
        ("[]", "MalformedPolicyDocument"),
        ('{"Version": "2012-10-17"}', "MalformedPolicyDocument"),
        ('{"Statement": [{"Effect": "Allow", "Resource": "*"}]}', "MalformedPolicyDocument"),
        (
            '{"Statement": [{"Effect": "Maybe", "Action": "s3:*", "Resource": "*"}]}',
            "MalformedPolicyDocument",
        ),
        ('{"Statement": {"Effect": "Allow", "Action": "s3:*"}}', "MalformedPolicyDocument"),
        (" " * (MAX_POLICY_CHARS + 1), "ValidationError"),  # length is checked first, like STS
    ],
)
async def test_what_sts_refuses_the_fake_refuses(text: str, sts_code: str) -> None:
    sts = FakeSts(FakeClock())
    with pytest.raises(SessionPolicyTooLarge) as info:
        await assume(sts, text)
    assert info.value.sts_code == sts_code and info.value.code == "SessionPolicyTooLarge"
    assert len(sts.calls) == 1 and sts.issued == []


async def test_the_packed_budget_is_the_compressed_size() -> None:
    sts = FakeSts(FakeClock())
    text = folder_policy("f" * 500 + "/")
    await assume(sts, text)  # the default budget takes any policy under 2048 characters
    sts.packed_policy_limit = 100
    with pytest.raises(SessionPolicyTooLarge, match=r"Packed policy consumes \d{3}% of allotted"):
        await assume(sts, text)
    assert len(sts.issued) == 1
