"""Validation tables for auth/validate.py: what reaches STS, and what is refused."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from s3feed.auth.errors import InvalidDuration, InvalidRoleArn, InvalidTenantName
from s3feed.auth.validate import (
    RoleArn,
    parse_role_arn,
    session_name_for,
    validate_duration,
    validate_tenant_name,
)

VALID_ARNS = [
    ("arn:aws:iam::272758771130:role/example-role-name", "aws", "/", "example-role-name"),
    ("arn:aws:iam::123456789012:role/a", "aws", "/", "a"),
    ("arn:aws-cn:iam::123456789012:role/CnRole", "aws-cn", "/", "CnRole"),
    ("arn:aws-us-gov:iam::123456789012:role/gov", "aws-us-gov", "/", "gov"),
    ("arn:aws:iam::123456789012:role/path/to/Role", "aws", "/path/to/", "Role"),
    ("arn:aws:iam::123456789012:role/service-role/x+=,.@_-y", "aws", "/service-role/", "x+=,.@_-y"),
    ("arn:aws:iam::000000000000:role/" + "n" * 64, "aws", "/", "n" * 64),
    ("arn:aws:iam::123456789012:role/p~!/r", "aws", "/p~!/", "r"),
]

INVALID_ARNS: list[tuple[object, str]] = [
    (None, "must be a string"),
    (123, "must be a string"),
    (["arn:aws:iam::123456789012:role/r"], "must be a string"),
    ("", "six"),
    ("arn:aws:iam::123456789012", "six"),
    ("role/r", "six"),
    ("arn:aws:iam::123456789012:user/bob", "role/"),
    ("arn:aws:iam::123456789012:role/", "role name"),
    ("arn:aws:iam::123456789012:role", "role/"),
    ("arn:aws-iso:iam::123456789012:role/r", "partition"),
    ("arn:AWS:iam::123456789012:role/r", "partition"),
    ("arn:aws:sts::123456789012:role/r", "service"),
    ("arn:aws:iam:us-east-1:123456789012:role/r", "region"),
    ("arn:aws:iam::12345678901:role/r", "12 digits"),
    ("arn:aws:iam::1234567890123:role/r", "12 digits"),
    ("arn:aws:iam::12345678901a:role/r", "12 digits"),
    ("arn:aws:iam::123456789012:role/" + "n" * 65, "role name"),
    ("arn:aws:iam::123456789012:role/bad name", "role name"),
    ("arn:aws:iam::123456789012:role/bad*name", "role name"),
    ("arn:aws:iam::123456789012:role/ródło", "role name"),
    ("arn:aws:iam::123456789012:role//r", "path"),
    ("arn:aws:iam::123456789012:role/a b/r", "path"),
    (" arn:aws:iam::123456789012:role/r", "six"),
    ("arn:aws:iam::123456789012:role/r\n", "role name"),
    ("arn:aws:iam::123456789012:role/" + "p/" * 300 + "r", "path"),
]


@pytest.mark.parametrize(("arn", "partition", "path", "name"), VALID_ARNS)
def test_valid_role_arns(arn: str, partition: str, path: str, name: str) -> None:
    parsed = parse_role_arn(arn)
    assert parsed == RoleArn(
        partition=partition, account=arn.split(":")[4], path=path, name=name, arn=arn
    )
    assert str(parsed) == arn


@pytest.mark.parametrize(("value", "why"), INVALID_ARNS)
def test_invalid_role_arns_say_why_and_show_the_form(value: object, why: str) -> None:
    with pytest.raises(InvalidRoleArn) as info:
        parse_role_arn(value)
    assert why in info.value.message
    assert "arn:aws:iam::123456789012:role/name" in info.value.message
    assert info.value.code == "InvalidRoleArn"


def test_huge_arn_is_echoed_shortened() -> None:
    with pytest.raises(InvalidRoleArn) as info:
        parse_role_arn("arn:aws:iam::123456789012:role/" + "x" * 5000)
    assert len(info.value.message) < 600


VALID_TENANTS = ["ab", "acme", "Tenant_1", "a+b=c,d.e@f:g/h-i", "x" * 1224, "00", "a:b/c"]
INVALID_TENANTS: list[object] = [
    "",
    "a",
    "x" * 1225,
    "has space",
    "tab\there",
    "ünïcode",
    "semi;colon",
    "quote'",
    "star*",
    "new\nline",
    None,
    12,
    ["acme"],
    True,
]


@pytest.mark.parametrize("tenant", VALID_TENANTS)
def test_valid_tenants(tenant: str) -> None:
    assert validate_tenant_name(tenant) == tenant


@pytest.mark.parametrize("tenant", INVALID_TENANTS)
def test_invalid_tenants(tenant: object) -> None:
    with pytest.raises(InvalidTenantName) as info:
        validate_tenant_name(tenant)
    assert "TenantName" in info.value.message
    assert "_+=,.@:/-" in info.value.message
    assert info.value.code == "InvalidTenantName"


def test_tenant_message_names_the_bad_characters() -> None:
    with pytest.raises(InvalidTenantName, match=r"contains ' ', ';'"):
        validate_tenant_name("a b;c")


@given(st.text(alphabet=st.characters(codec="ascii"), min_size=0, max_size=40))
def test_tenant_rule_matches_the_sts_pattern(text: str) -> None:
    ok = re.fullmatch(r"[A-Za-z0-9_+=,.@:/-]{2,1224}", text) is not None
    try:
        validate_tenant_name(text)
        accepted = True
    except InvalidTenantName:
        accepted = False
    assert accepted == ok


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, 3600), (900, 900), (3600, 3600), (43200, 43200), (1000, 1000)],
)
def test_valid_durations(value: object, expected: int) -> None:
    assert validate_duration(value) == expected


@pytest.mark.parametrize(
    "value", ["900", 900.5, 900.0, True, False, 899, 43201, 0, -1, [900], {"s": 900}, "", 10**20]
)
def test_invalid_durations(value: object) -> None:
    with pytest.raises(InvalidDuration) as info:
        validate_duration(value)
    assert "RoleSessionDurationInSeconds" in info.value.message
    assert "900" in info.value.message and "43200" in info.value.message


@pytest.mark.parametrize(
    ("job_id", "expected"),
    [
        ("j1", "s3feed-j1"),
        ("encode.2026-11-28_a", "s3feed-encode.2026-11-28_a"),
        ("a b/c:d", "s3feed-a-b-c-d"),
        ("é", "s3feed--"),
        ("x" * 128, "s3feed-" + "x" * 57),
        ("", "s3feed-"),
    ],
)
def test_session_names(job_id: str, expected: str) -> None:
    assert session_name_for(job_id) == expected


@given(st.text(max_size=200))
def test_session_name_always_valid_for_sts(job_id: str) -> None:
    name = session_name_for(job_id)
    assert re.fullmatch(r"[A-Za-z0-9_+=,.@-]{2,64}", name)
    assert name.startswith("s3feed-"[: len(name)])
