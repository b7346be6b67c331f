"""A job's `UriPath` -> `S3Location`, and the rules that keep keys inside it.

Accepted `UriPath` forms (docs/design.md, Transfers); https only, no port, query,
fragment or credentials; the path is percent-decoded once:

    https://BUCKET.s3.REGION.amazonaws.com/FOLDER/        virtual-hosted
    https://BUCKET.s3-REGION.amazonaws.com/FOLDER/        legacy dash form
    https://BUCKET.s3.amazonaws.com/FOLDER/               us-east-1
    https://BUCKET.s3.dualstack.REGION.amazonaws.com/FOLDER/
    https://s3.REGION.amazonaws.com/BUCKET/FOLDER/        path-style (every host above)
    ... and the same under amazonaws.com.cn               partition aws-cn

A folder without a trailing '/' is taken as one; no folder = the whole bucket.
An S3 endpoint override (S3Config.endpoint_url) changes where requests go,
never which UriPaths are accepted.

Keys and listing prefixes from the API are relative to the folder and used
verbatim (folder + key). `key_for` refuses anything that could name an object
outside the folder once some layer decodes or normalises it: empty, leading
'/', NUL, a '.' or '..' segment after one percent-decode, over 1024 bytes.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Literal
from urllib.parse import quote, unquote_to_bytes, urlsplit

from s3feed.auth import dns_suffix
from s3feed.transfer.config import S3Config
from s3feed.transfer.errors import InvalidKey, InvalidUriPath

MAX_KEY_BYTES = 1024
MAX_URI_CHARS = 2048

ACCEPTED_FORMS = (
    "https://BUCKET.s3.REGION.amazonaws.com/FOLDER/, "
    "https://BUCKET.s3-REGION.amazonaws.com/FOLDER/, "
    "https://BUCKET.s3.amazonaws.com/FOLDER/ (us-east-1), "
    "https://BUCKET.s3.dualstack.REGION.amazonaws.com/FOLDER/, "
    "path-style https://s3.REGION.amazonaws.com/BUCKET/FOLDER/, "
    "or the same hosts under amazonaws.com.cn"
)

_REGION = r"[a-z]{2}(?:-[a-z]+)+-\d{1,2}"
_HOST_RE = re.compile(
    r"^(?:(?P<bucket>[a-z0-9][a-z0-9.-]*)\.)?"
    r"s3(?:(?P<dualstack>\.dualstack)?\.(?P<region>" + _REGION + r")"
    r"|-(?P<legacy>" + _REGION + r"|external-1))?"
    r"\.amazonaws\.com(?P<cn>\.cn)?$"
)
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_BUCKET_BAD_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
_BUCKET_BAD_SUFFIXES = ("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3")


@dataclass(frozen=True)
class S3Location:
    """Where a job's objects live and where requests for them go."""

    bucket: str
    prefix: str  # the folder: '' (whole bucket) or ending in '/'
    region: str
    partition: str  # aws, aws-cn, aws-us-gov
    addressing: Literal["virtual", "path"]
    endpoint_url: str  # scheme://host[:port], no trailing '/'
    uri: str  # the UriPath as given

    def key_for(self, relative_key: str) -> str:
        """The full S3 key of `relative_key`; InvalidKey if it is not a plain key."""
        if not isinstance(relative_key, str) or relative_key == "":
            raise InvalidKey("Key must be a non-empty string relative to the job's folder")
        return self._join(relative_key, "Key")

    def prefix_for(self, relative_prefix: str) -> str:
        """The full S3 listing prefix of `relative_prefix` ('' = the whole folder)."""
        if not isinstance(relative_prefix, str):
            raise InvalidKey("Prefix must be a string relative to the job's folder")
        if relative_prefix == "":
            return self.prefix
        return self._join(relative_prefix, "Prefix")

    def relative(self, full_key: str) -> str:
        """`full_key` relative to the folder (for listings and documents)."""
        if not full_key.startswith(self.prefix):
            raise ValueError(f"key {full_key!r} is not under {self.prefix!r}")
        return full_key[len(self.prefix) :]

    def url_for(self, key: str) -> str:
        """The request URL of the full key `key` (percent-encoded as S3 signs it)."""
        path = quote(key, safe="/~")
        scheme, _, host = self.endpoint_url.partition("://")
        if self.addressing == "virtual":
            return f"{scheme}://{self.bucket}.{host}/{path}"
        return f"{scheme}://{host}/{self.bucket}/{path}"

    def _join(self, relative: str, what: str) -> str:
        _check_relative(relative, what)
        full = self.prefix + relative
        try:
            size = len(full.encode("utf-8"))
        except UnicodeEncodeError:
            raise InvalidKey(f"{what} is not valid UTF-8") from None
        if size > MAX_KEY_BYTES:
            raise InvalidKey(
                f"{what} is too long: the folder and {what.lower()} together are {size} "
                f"bytes, S3 allows {MAX_KEY_BYTES}"
            )
        return full


def _check_relative(value: str, what: str) -> None:
    if value.startswith("/"):
        raise InvalidKey(f"{what} must be relative to the job's folder: remove the leading '/'")
    if "\x00" in value:
        raise InvalidKey(f"{what} must not contain NUL")
    try:
        decoded = unquote_to_bytes(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidKey(f"{what} is not valid UTF-8") from None
    if b"\x00" in decoded:
        raise InvalidKey(f"{what} must not contain NUL, encoded or not")
    if decoded.startswith(b"/"):
        raise InvalidKey(f"{what} must not start with '/', encoded or not")
    for segment in decoded.split(b"/"):
        if segment in (b".", b".."):
            raise InvalidKey(f"{what} must not contain a '.' or '..' path segment")


def parse_uri_path(uri: object, s3: S3Config) -> S3Location:
    """Parse and validate a job's UriPath; InvalidUriPath names the accepted forms."""
    if not isinstance(uri, str):
        raise _invalid("UriPath must be a string")
    if len(uri) > MAX_URI_CHARS:
        raise _invalid(f"UriPath is longer than {MAX_URI_CHARS} characters")
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in uri):
        raise _invalid("UriPath must not contain spaces or control characters")
    if "?" in uri or "#" in uri:
        raise _invalid("UriPath must not have a query or fragment")
    try:
        parts = urlsplit(uri)
    except ValueError:
        raise _invalid("UriPath is not a URL") from None
    if parts.scheme != "https":
        raise _invalid("UriPath must be an https URL")
    if "@" in parts.netloc:
        raise _invalid("UriPath must not contain credentials")
    if ":" in parts.netloc:
        raise _invalid("UriPath must not name a port")
    host = parts.netloc.lower()
    m = _HOST_RE.match(host)
    if m is None:
        raise _invalid(f"{host!r} is not an Amazon S3 host")
    region = m["region"] or m["legacy"] or "us-east-1"
    if region == "external-1":
        region = "us-east-1"
    partition = _partition(region, cn=m["cn"] is not None)
    if partition is None:
        raise _invalid(f"region {region!r} does not belong to host {host!r}")

    try:
        path = unquote_to_bytes(parts.path).decode("utf-8")
    except UnicodeDecodeError:
        raise _invalid("UriPath's path is not valid UTF-8 once percent-decoded") from None
    path = path.removeprefix("/")
    if m["bucket"] is not None:
        bucket = m["bucket"]
    else:
        bucket, _, path = path.partition("/")
        if bucket == "":
            raise _invalid("path-style UriPath must name a bucket")
    _check_bucket(bucket)
    prefix = path if path == "" or path.endswith("/") else path + "/"
    if prefix:
        try:
            _check_relative(prefix, "Folder")
        except InvalidKey as e:
            raise _invalid(e.message) from None
        if len(prefix.encode("utf-8")) >= MAX_KEY_BYTES:
            raise _invalid(f"the folder is longer than S3's {MAX_KEY_BYTES}-byte key limit")

    dualstack = ".dualstack" if m["dualstack"] else ""
    aws_endpoint = f"https://s3{dualstack}.{region}.{dns_suffix(partition)}"
    endpoint = (s3.endpoint_url or aws_endpoint).rstrip("/")
    addressing: Literal["virtual", "path"]
    if s3.addressing != "auto":
        addressing = s3.addressing
    elif s3.endpoint_url is not None or "." in bucket:
        # Overrides are S3-compatible stores that rarely have wildcard DNS;
        # dotted buckets break the *.s3 TLS certificate.
        addressing = "path"
    else:
        addressing = "virtual"
    return S3Location(
        bucket=bucket,
        prefix=prefix,
        region=region,
        partition=partition,
        addressing=addressing,
        endpoint_url=endpoint,
        uri=uri,
    )


def _partition(region: str, *, cn: bool) -> str | None:
    if cn:
        return "aws-cn" if region.startswith("cn-") else None
    if region.startswith("cn-"):
        return None
    return "aws-us-gov" if region.startswith("us-gov-") else "aws"


def _check_bucket(bucket: str) -> None:
    bad = (
        _BUCKET_RE.match(bucket) is None
        or ".." in bucket
        or bucket.startswith(_BUCKET_BAD_PREFIXES)
        or bucket.endswith(_BUCKET_BAD_SUFFIXES)
        or _is_ip(bucket)
    )
    if bad:
        raise _invalid(
            f"{bucket!r} is not a valid S3 bucket name (3-63 lowercase letters, digits, "
            "'.' and '-', starting and ending with a letter or digit)"
        )


def _is_ip(name: str) -> bool:
    try:
        ipaddress.IPv4Address(name)
    except ValueError:
        return False
    return True


def _invalid(problem: str) -> InvalidUriPath:
    return InvalidUriPath(f"{problem}. Accepted forms: {ACCEPTED_FORMS}")
