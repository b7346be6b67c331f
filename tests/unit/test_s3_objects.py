"""S3ObjectStore.get_range over the raw client against a scripted server: the
request it signs, the range checks, and every S3 status translated."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from test_s3_pool import Server

from s3feed.auth.clock import FakeClock
from s3feed.auth.credentials import Credentials
from s3feed.transfer.config import S3Config
from s3feed.transfer.errors import (
    AccessDenied,
    InvalidRange,
    InvalidUriPath,
    NoSuchKey,
    ObjectStoreError,
    SourceChanged,
    TransientError,
)
from s3feed.transfer.s3.client import S3Client
from s3feed.transfer.s3.objects import S3ObjectStore
from s3feed.transfer.s3.pool import HttpPool
from s3feed.transfer.store import RangeMeta
from s3feed.transfer.uri import parse_uri_path

pytestmark = pytest.mark.timeout(30)

A = Credentials("AKIDFIRST", "secret1", "token1", datetime(2099, 1, 1, tzinfo=UTC))
B = Credentials("AKIDSECOND", "secret2", "token2", datetime(2099, 1, 1, tzinfo=UTC))


class Source:
    def __init__(self) -> None:
        self.creds = A
        self.refreshes: list[str] = []

    async def current(self) -> Credentials:
        return self.creds

    async def refresh_now(self, reason: str) -> Credentials:
        self.refreshes.append(reason)
        self.creds = B
        return B


class Recorder:
    def __init__(self) -> None:
        self.requests: list[str] = []
        self.errors: list[tuple[str, str]] = []

    def s3_request(self, op: str, seconds: float) -> None:
        self.requests.append(op)

    def s3_request_error(self, op: str, code: str) -> None:
        self.errors.append((op, code))

    def __getattr__(self, name: str) -> Any:
        return lambda *a, **k: None


class Sink:
    def __init__(self) -> None:
        self.writes: list[tuple[int, bytes]] = []

    def write(self, offset: int, data: memoryview) -> None:
        self.writes.append((offset, bytes(data)))


def answer(status: str, headers: dict[str, str], body: bytes = b"") -> Any:
    async def respond(head: bytes, writer: asyncio.StreamWriter, n: int) -> None:
        lines = [f"HTTP/1.1 {status}", f"Content-Length: {len(body)}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)

    return respond


def error(status: str, code: str) -> Any:
    xml = f"<Error><Code>{code}</Code><Message>m</Message></Error>".encode()
    return answer(status, {"Content-Type": "application/xml"}, xml)


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    s = Server()
    await s.start()
    yield s
    await s.stop()


@pytest.fixture
async def env(server: Server) -> AsyncIterator[tuple[S3ObjectStore, Source, Recorder]]:
    # A clock nobody moves: however busy the machine, no stall or idle timer fires.
    clients = S3Client(S3Config(endpoint_url=server.url), http=HttpPool(clock=FakeClock()))
    location = parse_uri_path("https://media-in.s3.eu-west-1.amazonaws.com/f/", clients.s3)
    source, recorder = Source(), Recorder()
    store = S3ObjectStore(location, source, clients=clients, observer=recorder)
    yield store, source, recorder
    await store.close()
    await clients.close()


def request_headers(raw: bytes) -> tuple[str, dict[str, str]]:
    lines = raw.decode().split("\r\n")
    pairs = (line.split(": ", 1) for line in lines[1:] if line)
    return lines[0], {k.lower(): v for k, v in pairs}


async def test_signed_ranged_get_and_its_meta(server: Server, env: Any) -> None:
    store, _, recorder = env
    server.respond = answer(
        "206 Partial Content",
        {
            "Content-Range": "bytes 5-9/100",
            "ETag": '"abc-2"',
            "Last-Modified": "Sat, 28 Nov 2026 13:00:00 GMT",
            "x-amz-version-id": "v1",
            "x-amz-checksum-crc32c": "AAAAAA==",
            "x-amz-checksum-type": "COMPOSITE",
        },
        b"56789",
    )
    sink = Sink()
    meta = await store.get_range("f/a b.ts", 5, 9, sink, if_match='"abc-2"')
    assert sink.writes == [(5, b"56789")]
    assert (meta.size, meta.etag, meta.version_id) == (100, '"abc-2"', "v1")
    assert meta.last_modified == datetime(2026, 11, 28, 13, tzinfo=UTC)
    assert (meta.checksums, meta.checksum_type) == ({"CRC32C": "AAAAAA=="}, "COMPOSITE")
    line, headers = request_headers(server.requests[0])
    assert line == "GET /media-in/f/a%20b.ts HTTP/1.1"
    assert headers["range"] == "bytes=5-9"
    assert headers["if-match"] == '"abc-2"'
    assert headers["x-amz-checksum-mode"] == "ENABLED"
    assert headers["x-amz-security-token"] == "token1"
    assert headers["authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIDFIRST/")
    assert "/eu-west-1/s3/aws4_request" in headers["authorization"]
    assert "secret1" not in server.requests[0].decode()
    assert recorder.requests == ["GetObject"]


async def test_a_sink_hears_the_answer_before_its_first_byte(server: Server, env: Any) -> None:
    """A stream's early GET learns the ETag there, and may refuse the body."""
    store, _, _ = env
    server.respond = answer(
        "206 Partial Content", {"Content-Range": "bytes 0-4/9", "ETag": '"v2"'}, b"01234"
    )
    events: list[object] = []

    class Hearing(Sink):
        def answered(self, meta: RangeMeta) -> None:
            events.append(meta.etag)

        def write(self, offset: int, data: memoryview) -> None:
            events.append(offset)

    await store.get_range("f/k", 0, 4, Hearing())
    assert events == ['"v2"', 0]

    class Refusing(Sink):
        def answered(self, meta: RangeMeta) -> None:
            raise SourceChanged("not the version wanted")

    sink = Refusing()
    with pytest.raises(SourceChanged):
        await store.get_range("f/k", 0, 4, sink)
    assert sink.writes == []


async def test_whole_object_get_sends_no_range(server: Server, env: Any) -> None:
    store, _, _ = env
    server.respond = answer("200 OK", {"ETag": '"e"'}, b"")
    meta = await store.get_range("f/empty", 0, None, Sink())
    assert meta.size == 0
    assert "range" not in request_headers(server.requests[0])[1]


@pytest.mark.parametrize(
    ("respond", "expected", "reason", "metric"),
    [
        (error("404 Not Found", "NoSuchKey"), NoSuchKey, None, "NoSuchKey"),
        (error("404 Not Found", "NoSuchBucket"), NoSuchKey, None, "NoSuchBucket"),
        (error("403 Forbidden", "AccessDenied"), AccessDenied, None, "AccessDenied"),
        (
            error("412 Precondition Failed", "PreconditionFailed"),
            SourceChanged,
            None,
            "PreconditionFailed",
        ),
        (error("503 Slow Down", "SlowDown"), TransientError, "throttled", "SlowDown"),
        (
            error("429 Too Many Requests", "TooManyRequests"),
            TransientError,
            "throttled",
            "TooManyRequests",
        ),
        (error("400 Bad Request", "Throttling"), TransientError, "throttled", "Throttling"),
        (
            error("500 Internal Server Error", "InternalError"),
            TransientError,
            "server_error",
            "InternalError",
        ),
        (
            error("503 Service Unavailable", "ServiceUnavailable"),
            TransientError,
            "server_error",
            "ServiceUnavailable",
        ),
        (answer("502 Bad Gateway", {}, b"<html>"), TransientError, "server_error", "502"),
        (
            error("400 Bad Request", "RequestTimeout"),
            TransientError,
            "server_error",
            "RequestTimeout",
        ),
        (error("400 Bad Request", "InvalidArgument"), ObjectStoreError, None, "InvalidArgument"),
    ],
)
async def test_statuses_translated(
    server: Server,
    env: Any,
    respond: Any,
    expected: type[Exception],
    reason: str | None,
    metric: str,
) -> None:
    store, source, recorder = env
    server.respond = respond
    with pytest.raises(expected) as e:
        await store.get_range("f/k", 0, 9, Sink())
    assert getattr(e.value, "reason", None) == reason
    assert recorder.errors == [("GetObject", metric)]
    assert source.refreshes == []
    # An answered error leaves the connection reusable.
    server.respond = answer("206 Partial Content", {"Content-Range": "bytes 0-1/2"}, b"ok")
    await store.get_range("f/k", 0, 1, Sink())
    assert (len(server.requests), server.connections) == (2, 1)


@pytest.mark.parametrize(
    ("respond", "region"),
    [
        (
            answer(
                "301 Moved Permanently",
                {"x-amz-bucket-region": "us-east-2"},
                b"<Error><Code>PermanentRedirect</Code><Message>use the endpoint</Message></Error>",
            ),
            "us-east-2",
        ),
        (
            answer(
                "400 Bad Request",
                {"Content-Type": "application/xml"},
                b"<Error><Code>AuthorizationHeaderMalformed</Code><Message>the region "
                b"'eu-west-1' is wrong; expecting 'ap-south-1'</Message></Error>",
            ),
            "<region>",
        ),
    ],
)
async def test_a_bucket_in_another_region_says_how_to_fix_the_uri_path(
    server: Server, env: Any, respond: Any, region: str
) -> None:
    store, source, _ = env
    server.respond = respond
    with pytest.raises(InvalidUriPath) as e:
        await store.get_range("f/k", 0, 9, Sink())
    assert "not in eu-west-1 as the job's UriPath says" in e.value.message
    assert f"https://<bucket>.s3.{region}.amazonaws.com/<folder>/" in e.value.message
    assert source.refreshes == [], "not a credentials problem"
    assert len(server.requests) == 1, "not retried: the same request would get the same answer"


async def test_invalid_range_carries_the_size(server: Server, env: Any) -> None:
    store, _, _ = env
    server.respond = answer("416 Requested Range Not Satisfiable", {"Content-Range": "bytes */10"})
    with pytest.raises(InvalidRange) as e:
        await store.get_range("f/k", 10, 19, Sink())
    assert e.value.size == 10


@pytest.mark.parametrize(
    ("status", "headers", "start", "end"),
    [
        ("206 Partial Content", {"Content-Range": "bytes 0-4/100"}, 5, 9),
        ("206 Partial Content", {"Content-Range": "bytes 5-8/100"}, 5, 9),
        ("206 Partial Content", {}, 5, 9),
        ("200 OK", {}, 5, 9),
        ("200 OK", {}, 0, 2),
    ],
)
async def test_a_different_range_is_never_written(
    server: Server, env: Any, status: str, headers: dict[str, str], start: int, end: int
) -> None:
    store, _, _ = env
    server.respond = answer(status, headers, b"01234")
    sink = Sink()
    with pytest.raises(TransientError) as e:
        await store.get_range("f/k", start, end, sink)
    assert e.value.reason == "server_error"
    assert sink.writes == []


@pytest.mark.parametrize("code", ["ExpiredToken", "InvalidAccessKeyId"])
async def test_expired_token_refreshes_and_resigns(server: Server, env: Any, code: str) -> None:
    store, source, recorder = env
    ok = answer("206 Partial Content", {"Content-Range": "bytes 0-1/2", "ETag": '"e"'}, b"ok")
    expired = error("400 Bad Request" if code == "ExpiredToken" else "403 Forbidden", code)

    async def respond(head: bytes, writer: asyncio.StreamWriter, n: int) -> None:
        await (expired if n == 1 else ok)(head, writer, n)

    server.respond = respond
    sink = Sink()
    await store.get_range("f/k", 0, 1, sink)
    assert sink.writes == [(0, b"ok")]
    assert source.refreshes == ["expired_token"]
    assert "Credential=AKIDSECOND/" in request_headers(server.requests[1])[1]["authorization"]
    assert recorder.errors == [("GetObject", code)]


async def test_still_expired_after_refresh(server: Server, env: Any) -> None:
    store, source, _ = env
    server.respond = error("400 Bad Request", "ExpiredToken")
    with pytest.raises(TransientError) as e:
        await store.get_range("f/k", 0, 1, Sink())
    assert e.value.reason == "expired_token"
    assert source.refreshes == ["expired_token"]
    assert len(server.requests) == 2


def _list_body(*keys: str) -> bytes:
    contents = "".join(
        f"<Contents><Key>{k}</Key><Size>1</Size><ETag>&quot;e&quot;</ETag>"
        f"<LastModified>2026-11-28T13:00:00.000Z</LastModified></Contents>"
        for k in keys
    )
    return (
        f"<ListBucketResult><IsTruncated>false</IsTruncated>{contents}</ListBucketResult>"
    ).encode()


def head_403_then_list(*keys: str, list_status: str = "200 OK") -> Any:
    """A HEAD answers 403 (no body), a listing answers `keys` (or `list_status`)."""

    async def respond(head: bytes, writer: asyncio.StreamWriter, n: int) -> None:
        if head.startswith(b"HEAD "):
            await answer("403 Forbidden", {})(head, writer, n)
        elif list_status != "200 OK":
            await error(list_status, "AccessDenied")(head, writer, n)
        else:
            body = _list_body(*keys)
            await answer(list_status, {"Content-Type": "application/xml"}, body)(head, writer, n)

    return respond


async def test_a_403_to_a_head_of_a_missing_key_is_nosuchkey(server: Server, env: Any) -> None:
    # A session policy that limits s3:ListBucket by prefix makes S3 answer a
    # missing key with 403; a listing of the key as prefix tells the two apart.
    store, _, _ = env
    server.respond = head_403_then_list("f/ep1.ts.bak")
    with pytest.raises(NoSuchKey):
        await store.head("f/ep1.ts")
    line, _ = request_headers(server.requests[1])
    assert line.startswith("GET /media-in/?") and "prefix=f%2Fep1.ts" in line
    assert "max-keys=1" in line


async def test_a_403_to_a_head_of_a_listed_key_stays_accessdenied(server: Server, env: Any) -> None:
    store, _, _ = env
    server.respond = head_403_then_list("f/ep1.ts")
    with pytest.raises(AccessDenied):
        await store.head("f/ep1.ts")
    server.respond = head_403_then_list(list_status="403 Forbidden")
    with pytest.raises(AccessDenied):
        await store.head("f/ep1.ts")


async def test_a_head_says_how_the_object_is_encrypted(server: Server, env: Any) -> None:
    """An SSE-KMS object's ETag is not its MD5: the HEAD carries what says so."""
    store, _, _ = env
    kms = {
        "ETag": '"0123456789abcdef0123456789abcdef"',
        "Last-Modified": "Sat, 28 Nov 2026 13:00:00 GMT",
    }
    server.respond = answer("200 OK", {**kms, "x-amz-server-side-encryption": "aws:kms"})
    assert (await store.head("f/a.ts")).encryption == "aws:kms"
    server.respond = answer("200 OK", kms)
    assert (await store.head("f/a.ts")).encryption is None
