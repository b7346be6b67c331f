"""Property tests of every parser that takes outside input: whatever comes in,
the answer is a value that satisfies the documented rules or the documented
error, never another exception.

Parsers: UriPath (transfer/uri.py), keys and prefixes (S3Location.key_for /
prefix_for), RoleArnToAssume, TenantName and RoleSessionDurationInSeconds
(auth/validate.py), the Range header (daemon/api/objects.py), the job request
envelope (daemon/jobs/request.py) and the configuration (daemon/config.py).
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Any
from urllib.parse import unquote_to_bytes

from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from s3feed.auth.errors import AuthError, InvalidDuration, InvalidRoleArn, InvalidTenantName
from s3feed.auth.validate import parse_role_arn, validate_duration, validate_tenant_name
from s3feed.daemon.api.objects import parse_range
from s3feed.daemon.config import Config, ConfigError, config_from_mapping, config_keys, load_config
from s3feed.daemon.errors import STATUS_BY_CODE, ApiError
from s3feed.daemon.jobs.request import parse_job_request
from s3feed.transfer.config import S3Config
from s3feed.transfer.errors import InvalidKey, InvalidRange, InvalidUriPath, TransferError
from s3feed.transfer.uri import S3Location, parse_uri_path

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CONFIGS = [S3Config(), S3Config(endpoint_url="http://127.0.0.1:4566")]

# Pieces that make near-misses likely: real forms, their typical corruptions.
REGIONS = st.sampled_from(
    ["us-east-1", "eu-west-1", "cn-north-1", "us-gov-west-1", "xx-y-9", "EU-WEST-1", ""]
)
BUCKETS = st.one_of(
    st.sampled_from(
        ["acme-media", "a.b.c", "xn--abc", "ab", "Acme", "a" * 64, "1.2.3.4", "b-s3alias"]
    ),
    st.from_regex(r"[a-z0-9][a-z0-9.\-]{0,65}", fullmatch=True),
)
SEGMENT = st.one_of(
    st.sampled_from(
        [
            "",
            ".",
            "..",
            "%2e%2E",
            "%2F",
            "%00",
            "%",
            "%zz",
            "a b",
            "\x00",
            "é",
            "%C3%A9",
            "%ff",
            "~",
        ]
    ),
    st.text(max_size=8),
)
FOLDERS = st.lists(SEGMENT, max_size=5).map("/".join)
HOSTS = st.one_of(
    st.builds("{}.s3.{}.amazonaws.com".format, BUCKETS, REGIONS),
    st.builds("{}.s3-{}.amazonaws.com".format, BUCKETS, REGIONS),
    st.builds("{}.s3.amazonaws.com".format, BUCKETS),
    st.builds("{}.s3.dualstack.{}.amazonaws.com".format, BUCKETS, REGIONS),
    st.builds("s3.{}.amazonaws.com/{}".format, REGIONS, BUCKETS),
    st.builds("{}.s3.{}.amazonaws.com.cn".format, BUCKETS, REGIONS),
    st.sampled_from(
        [
            "evil.example.com",
            "s3.amazonaws.com.evil.com",
            "127.0.0.1",
            "[::1]",
            "u:p@b.s3.amazonaws.com",
            "b.s3.amazonaws.com:443",
        ]
    ),
)
URIS = st.one_of(
    st.builds(
        "{}://{}/{}".format, st.sampled_from(["https", "http", "s3", "HTTPS"]), HOSTS, FOLDERS
    ),
    st.text(max_size=120),
)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)


def _has_dot_segment(text: str) -> bool:
    return any(s in (b".", b"..") for s in unquote_to_bytes(text.encode()).split(b"/"))


@SETTINGS
@given(uri=URIS, s3=st.sampled_from(CONFIGS))
@example(uri="https://acme.s3.eu-west-1.amazonaws.com/%2e%2e/x/", s3=CONFIGS[0])
@example(uri="https://s3.eu-west-1.amazonaws.com/acme/a%00b/", s3=CONFIGS[1])
def test_uri_path_is_a_location_or_invalid_uri_path(uri: str, s3: S3Config) -> None:
    try:
        loc = parse_uri_path(uri, s3)
    except InvalidUriPath as exc:
        assert exc.code == "InvalidUriPath" and exc.message
        return
    assert uri.lower().startswith("https://") and "?" not in uri and "#" not in uri
    assert re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", loc.bucket), loc
    assert loc.prefix == "" or loc.prefix.endswith("/")
    assert not loc.prefix.startswith("/") and "\x00" not in loc.prefix
    assert not _has_dot_segment(loc.prefix), "a folder with a . or .. segment"
    assert loc.partition in ("aws", "aws-cn", "aws-us-gov")
    if s3.endpoint_url:
        assert loc.endpoint_url == s3.endpoint_url, "the override decides where requests go"
    else:
        assert loc.endpoint_url.startswith("https://s3") and ".amazonaws.com" in loc.endpoint_url


@SETTINGS
@given(uri=JSON)
def test_uri_path_of_any_json_value(uri: Any) -> None:
    with contextlib.suppress(InvalidUriPath):
        parse_uri_path(uri, CONFIGS[0])


LOCATIONS = [
    parse_uri_path("https://acme-media.s3.eu-west-1.amazonaws.com/sources/", CONFIGS[0]),
    parse_uri_path("https://acme-media.s3.eu-west-1.amazonaws.com", CONFIGS[1]),
]


@SETTINGS
@given(key=st.one_of(FOLDERS, st.text(), JSON), loc=st.sampled_from(LOCATIONS))
@example(key="..%2Fsecret", loc=LOCATIONS[0])
@example(key="a/%2e%2e/%2e%2e/b", loc=LOCATIONS[0])
@example(key="\ud800", loc=LOCATIONS[0])
def test_keys_and_prefixes_stay_inside_the_folder(key: Any, loc: S3Location) -> None:
    for method in (loc.key_for, loc.prefix_for):
        try:
            full = method(key)
        except InvalidKey as exc:
            assert exc.code == "InvalidKey" and exc.message
            continue
        assert isinstance(key, str)
        assert full == loc.prefix + key, "used verbatim: folder + key"
        assert len(full.encode()) <= 1024
        if key:
            assert not key.startswith("/") and "\x00" not in key
            assert not _has_dot_segment(key)
            assert b"\x00" not in unquote_to_bytes(key.encode())


ARN_PARTS = st.builds(
    "arn:{}:{}:{}:{}:{}".format,
    st.sampled_from(["aws", "aws-cn", "aws-us-gov", "aws-iso", "", "AWS"]),
    st.sampled_from(["iam", "sts", "s3", ""]),
    st.sampled_from(["", "us-east-1"]),
    st.one_of(st.from_regex(r"[0-9]{12}", fullmatch=True), st.text(max_size=13)),
    st.one_of(
        st.builds("role/{}".format, st.text(max_size=70)),
        st.builds(
            "role{}{}".format,
            st.from_regex(r"(/[\x21-\x7e]{0,5}){0,3}/", fullmatch=True),
            st.text(max_size=70),
        ),
        st.text(max_size=20),
    ),
)
STRICT_ARN = re.compile(
    r"arn:(aws|aws-cn|aws-us-gov):iam::[0-9]{12}:role(/|/[\x21-\x7e]+/)[A-Za-z0-9_+=,.@-]{1,64}"
)


@SETTINGS
@given(arn=st.one_of(ARN_PARTS, JSON))
def test_role_arn_is_parsed_or_invalid_role_arn(arn: Any) -> None:
    try:
        role = parse_role_arn(arn)
    except InvalidRoleArn as exc:
        assert exc.code == "InvalidRoleArn"
        assert not isinstance(arn, str) or not STRICT_ARN.fullmatch(arn) or len(arn) > 2048
        return
    assert STRICT_ARN.fullmatch(arn), arn
    assert role.arn == arn and len(role.account) == 12


TENANT = re.compile(r"[A-Za-z0-9_+=,.@:/-]{2,1224}")


@SETTINGS
@given(name=st.one_of(st.text(max_size=30), st.from_regex(TENANT, fullmatch=True), JSON))
@example(name="a" * 1224)
@example(name="a" * 1225)
@example(name="ab\n")
@example(name="\u0661\u0662")  # Arabic-Indic digits: \w matches them without re.ASCII
def test_tenant_name_exactly_the_external_id_rule(name: Any) -> None:
    valid = isinstance(name, str) and TENANT.fullmatch(name) is not None
    try:
        assert validate_tenant_name(name) == name
        assert valid, f"accepted {name!r}"
    except InvalidTenantName as exc:
        assert exc.code == "InvalidTenantName"
        assert not valid, f"refused {name!r}"


@SETTINGS
@given(value=st.one_of(st.integers(min_value=-(2**70), max_value=2**70), JSON))
@example(value=900)
@example(value=43200)
@example(value=True)
@example(value=900.0)
def test_duration_is_an_integer_in_range_or_invalid_duration(value: Any) -> None:
    try:
        got = validate_duration(value)
    except InvalidDuration as exc:
        assert exc.code == "InvalidDuration"
        ok = type(value) is int and 900 <= value <= 43200
        assert not ok
        return
    assert got == (3600 if value is None else value)
    assert type(got) is int and 900 <= got <= 43200


RANGES = st.one_of(
    st.builds(
        "bytes={}-{}".format,
        st.one_of(st.just(""), st.integers(0, 2**64).map(str)),
        st.one_of(st.just(""), st.integers(0, 2**64).map(str)),
    ),
    st.builds(
        "bytes={}-{},{}-{}".format,
        st.integers(0, 99),
        st.integers(0, 99),
        st.integers(0, 99),
        st.integers(0, 99),
    ),
    st.text(max_size=30),
    st.none(),
)


@SETTINGS
@given(header=RANGES, size=st.integers(0, 2**40))
@example(header="bytes=-0", size=10)
@example(header="bytes=0-", size=0)
@example(header="bytes=\u0661-\u0662", size=10)  # non-ASCII digits
def test_range_header_is_a_range_inside_the_object_or_documented(
    header: str | None, size: int
) -> None:
    try:
        got = parse_range(header, size)
    except InvalidRange as exc:
        assert exc.code == "InvalidRange" and exc.size == size
        return
    if got is not None:
        first, last = got
        assert 0 <= first <= last < size


@SETTINGS
@given(
    body=st.one_of(
        JSON,
        st.fixed_dictionaries(
            {},
            optional={
                "JobId": st.one_of(st.from_regex(r"[A-Za-z0-9._-]{1,130}", fullmatch=True), JSON),
                "TenantName": st.one_of(st.just("acme-films"), JSON),
                "Source": st.one_of(
                    JSON,
                    st.fixed_dictionaries(
                        {},
                        optional={
                            "Provider": st.one_of(st.just("AmazonS3"), JSON),
                            "UriPath": st.one_of(URIS, JSON),
                            "RoleArnToAssume": st.one_of(ARN_PARTS, JSON),
                            "RoleSessionDurationInSeconds": st.one_of(st.integers(0, 50000), JSON),
                            "Extra": JSON,
                        },
                    ),
                ),
            },
        ),
    )
)
def test_job_request_is_accepted_or_a_documented_400(body: Any) -> None:
    try:
        request = parse_job_request(body, CONFIGS[1])
    except (ApiError, AuthError, TransferError) as exc:
        code = exc.code
        assert code in STATUS_BY_CODE and STATUS_BY_CODE[code] == 400, code
        return
    assert request.job_id == body["JobId"] and request.location.bucket
    assert request.role_arn.arn == body["Source"]["RoleArnToAssume"]


SECTION_NAMES = st.one_of(st.sampled_from(sorted(config_keys())), st.text(max_size=8))
TOML_VALUES = st.recursive(
    st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=12)
    | st.sampled_from(
        [
            "16MiB",
            "0",
            "1.5GiB",
            "-1MiB",
            "0660",
            "0o777",
            "0999",
            "127.0.0.1:0",
            ":",
            "http://x",
            "path",
            "auto",
        ]
    ),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)
ALL_KEYS = sorted({k for keys in config_keys().values() for k in keys})


@SETTINGS
@given(
    data=st.dictionaries(
        SECTION_NAMES,
        st.one_of(
            st.dictionaries(
                st.one_of(st.sampled_from(ALL_KEYS), st.text(max_size=6)), TOML_VALUES, max_size=5
            ),
            TOML_VALUES,
        ),
        max_size=4,
    )
)
def test_config_mapping_is_a_config_or_config_error(data: dict[str, Any]) -> None:
    try:
        config = config_from_mapping(data)
    except ConfigError as exc:
        assert str(exc)
        return
    assert isinstance(config, Config)
    assert config.transfer.stream_window >= config.transfer.part_size


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    text=st.one_of(
        st.text(max_size=200),
        st.builds(
            "[{}]\n{} = {}\n".format,
            SECTION_NAMES,
            st.sampled_from(ALL_KEYS),
            st.sampled_from(
                [
                    '"16MiB"',
                    "1",
                    "-5",
                    '"x"',
                    "[1]",
                    "{a=1}",
                    "1e999",
                    '"0660"',
                    "true",
                    "1979-05-27",
                ]
            ),
        ),
    )
)
def test_config_file_is_a_config_or_config_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "s3feed.toml"
    try:
        path.write_text(text, encoding="utf-8")
    except UnicodeEncodeError:
        assume(False)
    try:
        load_config(path)
    except ConfigError as exc:
        assert str(path) in str(exc)
