"""UriPath parsing and the key rules that keep a job inside its folder."""

from __future__ import annotations

import posixpath
from urllib.parse import unquote

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from s3feed.transfer.config import S3Config
from s3feed.transfer.errors import InvalidKey, InvalidUriPath
from s3feed.transfer.uri import MAX_KEY_BYTES, S3Location, parse_uri_path

AWS = S3Config()
LOCAL = S3Config(endpoint_url="http://127.0.0.1:9000/")


@pytest.mark.parametrize(
    ("uri", "bucket", "prefix", "region", "partition", "endpoint"),
    [
        (
            "https://media-in.s3.eu-west-1.amazonaws.com/shows/s01/",
            "media-in",
            "shows/s01/",
            "eu-west-1",
            "aws",
            "https://s3.eu-west-1.amazonaws.com",
        ),
        (
            "https://media-in.s3.eu-west-1.amazonaws.com/shows",
            "media-in",
            "shows/",
            "eu-west-1",
            "aws",
            "https://s3.eu-west-1.amazonaws.com",
        ),
        (
            "https://media-in.s3-us-west-2.amazonaws.com/a/b/",
            "media-in",
            "a/b/",
            "us-west-2",
            "aws",
            "https://s3.us-west-2.amazonaws.com",
        ),
        (
            "https://media-in.s3.amazonaws.com/x/",
            "media-in",
            "x/",
            "us-east-1",
            "aws",
            "https://s3.us-east-1.amazonaws.com",
        ),
        (
            "https://media-in.s3-external-1.amazonaws.com/",
            "media-in",
            "",
            "us-east-1",
            "aws",
            "https://s3.us-east-1.amazonaws.com",
        ),
        (
            "https://media-in.s3.dualstack.ap-south-1.amazonaws.com/v/",
            "media-in",
            "v/",
            "ap-south-1",
            "aws",
            "https://s3.dualstack.ap-south-1.amazonaws.com",
        ),
        (
            "https://s3.eu-central-1.amazonaws.com/media-in/a/",
            "media-in",
            "a/",
            "eu-central-1",
            "aws",
            "https://s3.eu-central-1.amazonaws.com",
        ),
        (
            "https://s3.amazonaws.com/media-in",
            "media-in",
            "",
            "us-east-1",
            "aws",
            "https://s3.us-east-1.amazonaws.com",
        ),
        (
            "https://s3-eu-west-1.amazonaws.com/media-in/",
            "media-in",
            "",
            "eu-west-1",
            "aws",
            "https://s3.eu-west-1.amazonaws.com",
        ),
        (
            "https://s3.dualstack.us-east-2.amazonaws.com/media-in/q",
            "media-in",
            "q/",
            "us-east-2",
            "aws",
            "https://s3.dualstack.us-east-2.amazonaws.com",
        ),
        (
            "https://media-in.s3.cn-north-1.amazonaws.com.cn/f/",
            "media-in",
            "f/",
            "cn-north-1",
            "aws-cn",
            "https://s3.cn-north-1.amazonaws.com.cn",
        ),
        (
            "https://s3.cn-northwest-1.amazonaws.com.cn/media-in/",
            "media-in",
            "",
            "cn-northwest-1",
            "aws-cn",
            "https://s3.cn-northwest-1.amazonaws.com.cn",
        ),
        (
            "https://media-in.s3.us-gov-west-1.amazonaws.com/",
            "media-in",
            "",
            "us-gov-west-1",
            "aws-us-gov",
            "https://s3.us-gov-west-1.amazonaws.com",
        ),
        (
            "https://media-in.s3.eu-west-1.amazonaws.com",
            "media-in",
            "",
            "eu-west-1",
            "aws",
            "https://s3.eu-west-1.amazonaws.com",
        ),
        (
            "https://Media-In.S3.EU-West-1.AmazonAWS.com/Case/",
            "media-in",
            "Case/",
            "eu-west-1",
            "aws",
            "https://s3.eu-west-1.amazonaws.com",
        ),
        (
            "https://media-in.s3.eu-west-1.amazonaws.com/a%20b/%C3%A9t%C3%A9/",
            "media-in",
            "a b/été/",
            "eu-west-1",
            "aws",
            "https://s3.eu-west-1.amazonaws.com",
        ),
        (
            "https://my.dotted.bucket.s3.eu-west-1.amazonaws.com/p/",
            "my.dotted.bucket",
            "p/",
            "eu-west-1",
            "aws",
            "https://s3.eu-west-1.amazonaws.com",
        ),
        (
            "https://s3-b.s3.eu-west-1.amazonaws.com/x/",
            "s3-b",
            "x/",
            "eu-west-1",
            "aws",
            "https://s3.eu-west-1.amazonaws.com",
        ),
    ],
)
def test_accepted_forms(
    uri: str, bucket: str, prefix: str, region: str, partition: str, endpoint: str
) -> None:
    loc = parse_uri_path(uri, AWS)
    assert (loc.bucket, loc.prefix, loc.region, loc.partition) == (
        bucket,
        prefix,
        region,
        partition,
    )
    assert loc.endpoint_url == endpoint
    assert loc.uri == uri
    assert loc.addressing == ("path" if "." in bucket else "virtual")


@pytest.mark.parametrize(
    "uri",
    [
        42,
        None,
        b"https://b.s3.eu-west-1.amazonaws.com/",
        "",
        "http://media-in.s3.eu-west-1.amazonaws.com/p/",
        "s3://media-in/p/",
        "ftp://media-in.s3.eu-west-1.amazonaws.com/p/",
        "https://media-in.s3.eu-west-1.amazonaws.com:443/p/",
        "https://user:pw@media-in.s3.eu-west-1.amazonaws.com/p/",
        "https://media-in.s3.eu-west-1.amazonaws.com/p/?versionId=1",
        "https://media-in.s3.eu-west-1.amazonaws.com/p/#frag",
        "https://media-in.s3.eu-west-1.amazonaws.com/p /",
        "https://media-in.s3.eu-west-1.amazonaws.com/p\n/",
        "https://example.com/media-in/p/",
        "https://media-in.s3.eu-west-1.amazonaws.com.evil.example/p/",
        "https://media-in.s3.eu-west-1.amazonaws.co/p/",
        "https://media-in.s3-website-eu-west-1.amazonaws.com/p/",
        "https://media-in.s3-accelerate.amazonaws.com/p/",
        "https://media-in.s3-fips.us-east-1.amazonaws.com/p/",
        "https://s3.eu-west-1.amazonaws.com/",
        "https://s3.eu-west-1.amazonaws.com",
        "https://media-in.s3.cn-north-1.amazonaws.com/p/",
        "https://media-in.s3.eu-west-1.amazonaws.com.cn/p/",
        "https://media-in.s3.amazonaws.com.cn/p/",
        "https://Media_In.s3.eu-west-1.amazonaws.com/p/",
        "https://s3.eu-west-1.amazonaws.com/Media-In/p/",
        "https://ab.s3.eu-west-1.amazonaws.com/p/",
        "https://a..b.s3.eu-west-1.amazonaws.com/p/",
        "https://-ab.s3.eu-west-1.amazonaws.com/p/",
        "https://192.168.1.2.s3.eu-west-1.amazonaws.com/p/",
        "https://xn--abc.s3.eu-west-1.amazonaws.com/p/",
        "https://abc-s3alias.s3.eu-west-1.amazonaws.com/p/",
        "https://" + "a" * 64 + ".s3.eu-west-1.amazonaws.com/p/",
        "https://media-in.s3.eu-west-1.amazonaws.com/../p/",
        "https://media-in.s3.eu-west-1.amazonaws.com/a/%2e%2e/b/",
        "https://media-in.s3.eu-west-1.amazonaws.com/a/./b/",
        "https://media-in.s3.eu-west-1.amazonaws.com//abs/",
        "https://media-in.s3.eu-west-1.amazonaws.com/a%00b/",
        "https://media-in.s3.eu-west-1.amazonaws.com/%ff/",
        "https://media-in.s3.eu-west-1.amazonaws.com/" + "a" * 1100 + "/",
    ],
)
def test_rejected_forms_list_the_accepted_ones(uri: object) -> None:
    with pytest.raises(InvalidUriPath) as e:
        parse_uri_path(uri, AWS)
    assert "Accepted forms" in e.value.message
    assert "s3.REGION.amazonaws.com" in e.value.message
    assert e.value.code == "InvalidUriPath"


def test_endpoint_override_changes_only_where_requests_go() -> None:
    loc = parse_uri_path("https://media-in.s3.eu-west-1.amazonaws.com/p/", LOCAL)
    assert loc.endpoint_url == "http://127.0.0.1:9000"
    assert loc.addressing == "path"
    assert loc.region == "eu-west-1"
    assert loc.url_for("p/a b.ts") == "http://127.0.0.1:9000/media-in/p/a%20b.ts"
    virtual = parse_uri_path(
        "https://media-in.s3.eu-west-1.amazonaws.com/p/",
        S3Config(endpoint_url="http://localhost:9000", addressing="virtual"),
    )
    assert virtual.url_for("p/k") == "http://media-in.localhost:9000/p/k"
    # The override never widens which UriPaths are accepted.
    for uri in ("http://127.0.0.1:9000/media-in/p/", "https://example.com/media-in/"):
        with pytest.raises(InvalidUriPath):
            parse_uri_path(uri, LOCAL)


def test_addressing_and_urls_on_aws() -> None:
    loc = parse_uri_path("https://media-in.s3.eu-west-1.amazonaws.com/p/", AWS)
    assert loc.url_for("p/x~y+z") == "https://media-in.s3.eu-west-1.amazonaws.com/p/x~y%2Bz"
    path = parse_uri_path(
        "https://media-in.s3.eu-west-1.amazonaws.com/p/", S3Config(addressing="path")
    )
    assert path.url_for("p/%") == "https://s3.eu-west-1.amazonaws.com/media-in/p/%25"


@pytest.fixture
def loc() -> S3Location:
    return parse_uri_path("https://media-in.s3.eu-west-1.amazonaws.com/jobs/j1/", AWS)


@pytest.mark.parametrize(
    "key",
    [
        "a.ts",
        "sub/dir/a.ts",
        "..a",
        "a..",
        ".hidden",
        "a/...",
        "sp ace",
        "été.mp4",
        "a//b",
        "%41",
        "100%",
        "a/.b/c",
        "x" * (MAX_KEY_BYTES - len("jobs/j1/")),
    ],
)
def test_keys_used_verbatim(loc: S3Location, key: str) -> None:
    assert loc.key_for(key) == "jobs/j1/" + key
    assert loc.relative(loc.key_for(key)) == key


@pytest.mark.parametrize(
    "key",
    [
        "",
        "/etc/passwd",
        "..",
        ".",
        "../x",
        "a/../../x",
        "a/./b",
        "a/..",
        "a/.",
        "%2e%2e/x",
        "a/%2E%2E/b",
        "a%2F..%2Fb",
        "%2Fabs",
        "a\x00b",
        "a%00b",
        "\ud800",
        "x" * (MAX_KEY_BYTES - len("jobs/j1/") + 1),
        "é" * 510,
    ],
)
def test_invalid_keys(loc: S3Location, key: str) -> None:
    with pytest.raises(InvalidKey):
        loc.key_for(key)


def test_invalid_key_types(loc: S3Location) -> None:
    with pytest.raises(InvalidKey):
        loc.key_for(5)  # type: ignore[arg-type]
    with pytest.raises(InvalidKey):
        loc.prefix_for(None)  # type: ignore[arg-type]


def test_prefixes(loc: S3Location) -> None:
    assert loc.prefix_for("") == "jobs/j1/"
    assert loc.prefix_for("vid") == "jobs/j1/vid"
    assert loc.prefix_for("sub/") == "jobs/j1/sub/"
    for bad in ("/x", "../", "a/../", "a\x00"):
        with pytest.raises(InvalidKey):
            loc.prefix_for(bad)
    with pytest.raises(ValueError):
        loc.relative("jobs/j2/a")


def test_whole_bucket_takes_any_plain_key() -> None:
    loc = parse_uri_path("https://s3.eu-west-1.amazonaws.com/media-in", AWS)
    assert loc.prefix == ""
    assert loc.key_for("a/b") == "a/b"
    assert loc.prefix_for("") == ""


key_chars = st.sampled_from([*list("ab./%2eEfF0\x00/ ~é"), "%2e", "%2E", "%2f", "%2F", "..", "%00"])


@given(st.lists(key_chars, min_size=0, max_size=24).map("".join))
def test_no_accepted_key_escapes_the_folder(key: str) -> None:
    loc = parse_uri_path("https://media-in.s3.eu-west-1.amazonaws.com/jobs/j1/", AWS)
    try:
        full = loc.key_for(key)
    except InvalidKey:
        return
    assert full == "jobs/j1/" + key
    assert loc.relative(full) == key
    assert len(full.encode()) <= MAX_KEY_BYTES
    # One decode is what DESIGN guards; a second decode of an accepted key may
    # only ever produce literal characters, never a segment that walks up.
    decoded_once = unquote(full)
    norm = posixpath.normpath("/" + decoded_once)
    assert (norm + "/").startswith("/jobs/j1/")


@given(st.text(min_size=1, max_size=40))
def test_arbitrary_text_never_escapes_once_decoded(key: str) -> None:
    assume("\x00" not in key)
    loc = parse_uri_path("https://media-in.s3.eu-west-1.amazonaws.com/jobs/j1/", AWS)
    try:
        full = loc.key_for(key)
    except InvalidKey:
        return
    norm = posixpath.normpath("/" + unquote(full))
    assert (norm + "/").startswith("/jobs/j1/")
    assert "\x00" not in unquote(full)
