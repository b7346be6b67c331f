"""The daemon's one S3 client: every job's HEAD, LIST and GET share one
connection pool, each request signed with its own job's credentials; HEAD
answers without a body; listings parsed from S3's XML; proxies chosen as curl
chooses them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from test_s3_objects import Recorder, Sink, answer, request_headers
from test_s3_pool import Server

from s3feed.auth.credentials import Credentials
from s3feed.transfer.config import S3Config
from s3feed.transfer.s3.client import WARM_CONNECTIONS, S3Client
from s3feed.transfer.s3.objects import S3ObjectStore
from s3feed.transfer.s3.proxy import Proxies, bypass
from s3feed.transfer.uri import parse_uri_path

pytestmark = pytest.mark.timeout(30)
FAR = datetime(2099, 1, 1, tzinfo=UTC)


class Fixed:
    def __init__(self, creds: Credentials) -> None:
        self.creds = creds

    async def current(self) -> Credentials:
        return self.creds

    async def refresh_now(self, reason: str) -> Credentials:
        return self.creds


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    s = Server()
    await s.start()
    yield s
    await s.stop()


def store(client: S3Client, creds: Credentials, folder: str = "f/") -> S3ObjectStore:
    location = parse_uri_path(f"https://media.s3.eu-west-1.amazonaws.com/{folder}", client.s3)
    return S3ObjectStore(location, Fixed(creds), clients=client, observer=Recorder())


HEAD_ANSWER = {
    "ETag": '"abc-3"',
    "Last-Modified": "Sun, 29 Nov 2026 10:00:00 GMT",
    "x-amz-checksum-crc32c": "AAAAAA==",
    "x-amz-checksum-type": "COMPOSITE",
}


async def test_200_jobs_share_the_warm_connections_and_sign_their_own_requests(
    server: Server,
) -> None:
    async def respond(head: bytes, writer: asyncio.StreamWriter, n: int) -> None:
        # A HEAD's Content-Length is the object's; no body follows it.
        lines = ["HTTP/1.1 200 OK", "Content-Length: 1000"]
        lines += [f"{k}: {v}" for k, v in HEAD_ANSWER.items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())

    server.respond = respond
    client = S3Client(S3Config(endpoint_url=server.url), environ={})
    stores = [
        store(client, Credentials(f"AKIDJOB{n:04d}", f"secret{n}", f"token{n}", FAR))
        for n in range(200)
    ]
    try:
        for s in stores:
            await s.connect()
        for s in stores:
            meta = await s.head("f/k.ts")
            assert (meta.size, meta.etag, meta.checksum_type) == (1000, '"abc-3"', "COMPOSITE")
            assert meta.checksums == {"CRC32C": "AAAAAA=="}
        # The first job's registration warms WARM_CONNECTIONS; the other 199 reuse them.
        assert client.http.open_connections == WARM_CONNECTIONS == server.connections
        keys = [request_headers(r)[1]["authorization"] for r in server.requests]
        assert len(keys) == 200
        assert all(f"Credential=AKIDJOB{n:04d}/" in k for n, k in enumerate(keys))
        assert all(request_headers(r)[0].startswith("HEAD /media/f/k.ts ") for r in server.requests)
    finally:
        await client.close()


async def test_part_size_from_head_part_number(server: Server) -> None:
    multi, single = '"' + "a" * 32 + '-3"', '"' + "b" * 32 + '"'
    answers = [
        {"ETag": multi, "x-amz-mp-parts-count": "3"},  # S3, SeaweedFS
        {"ETag": multi},  # a server that ignored partNumber
        {"ETag": single},  # not multipart: the object's size
    ]

    async def respond(head: bytes, writer: asyncio.StreamWriter, n: int) -> None:
        lines = ["HTTP/1.1 200 OK", "Content-Length: 5242880"]
        lines += [f"{k}: {v}" for k, v in answers[n - 1].items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())

    server.respond = respond
    client = S3Client(S3Config(endpoint_url=server.url), environ={})
    s = store(client, Credentials("AKID", "s", None, FAR))
    try:
        assert await s.part_size("f/k", if_match=multi) == 5 * 1024 * 1024
        assert await s.part_size("f/k") is None
        assert await s.part_size("f/k") == 5 * 1024 * 1024
        line, headers = request_headers(server.requests[0])
        assert line.startswith("HEAD /media/f/k?partNumber=1 ")
        assert headers["if-match"] == multi
    finally:
        await client.close()


LISTING = b"""<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
<Name>media</Name><Prefix>f%2F</Prefix><KeyCount>3</KeyCount><MaxKeys>2</MaxKeys>
<EncodingType>url</EncodingType><IsTruncated>true</IsTruncated>
<NextContinuationToken>tok+/=</NextContinuationToken>
<Contents><Key>f%2Fa+b%25.ts</Key><LastModified>2026-11-29T10:00:00.000Z</LastModified>
<ETag>&quot;e1&quot;</ETag><Size>12</Size><StorageClass>STANDARD</StorageClass></Contents>
<Contents><Key>f%2Fz.ts</Key><LastModified>2026-11-29T10:00:00.000Z</LastModified>
<ETag>&quot;e2-2&quot;</ETag><Size>7</Size><ChecksumType>COMPOSITE</ChecksumType></Contents>
<Contents><Key>g%2Foutside.ts</Key><LastModified>2026-11-29T10:00:00.000Z</LastModified>
<ETag>&quot;e3&quot;</ETag><Size>1</Size></Contents>
</ListBucketResult>"""


async def test_listing_parsed_and_kept_under_the_prefix(server: Server) -> None:
    server.respond = answer("200 OK", {"Content-Type": "application/xml"}, LISTING)
    client = S3Client(S3Config(endpoint_url=server.url), environ={})
    s = store(client, Credentials("AKID", "s", None, FAR))
    try:
        page = await s.list_page("f/", max_keys=2, token="prev+/=")
        assert [(m.key, m.size, m.etag) for m in page.objects] == [
            ("f/a b%.ts", 12, '"e1"'),
            ("f/z.ts", 7, '"e2-2"'),
        ]
        assert page.objects[1].checksum_type == "COMPOSITE"
        assert page.objects[0].last_modified == datetime(2026, 11, 29, 10, tzinfo=UTC)
        assert page.next_token == "tok+/="
        line, _ = request_headers(server.requests[0])
        target = line.split(" ")[1]
        assert target == (
            "/media/?list-type=2&prefix=f%2F&max-keys=2&encoding-type=url"
            "&continuation-token=prev%2B%2F%3D"
        )
    finally:
        await client.close()


async def test_request_entry_point_for_other_calls(server: Server) -> None:
    """The store's one entry point for any call: method, query and body, signed once, 2xx returned."""
    seen: list[bytes] = []

    async def respond(head: bytes, writer: asyncio.StreamWriter, n: int) -> None:
        seen.append(head)
        writer.write(b'HTTP/1.1 200 OK\r\nETag: "put"\r\nContent-Length: 0\r\n\r\n')

    server.respond = respond
    client = S3Client(S3Config(endpoint_url=server.url), environ={})
    s = store(client, Credentials("AKIDPUT", "s", "t", FAR))
    try:
        resp = await s.request(
            "UploadPart",
            "PUT",
            "f/out.ts",
            query={"partNumber": "2", "uploadId": "u 1"},
            body=b"",
        )
        assert resp.status == 200 and resp.headers["etag"] == '"put"'
        line, headers = request_headers(seen[0])
        assert line == "PUT /media/f/out.ts?partNumber=2&uploadId=u%201 HTTP/1.1"
        assert headers["content-length"] == "0" and "AKIDPUT/" in headers["authorization"]
    finally:
        await client.close()


def test_no_proxy_matches_as_curl_does() -> None:
    entries = ("example.com", ".corp.internal", "10.0.0.0/8", "::1", "host:8080", "[fd00::1]:443")
    assert bypass("example.com", entries) and bypass("s3.Example.com", entries)
    assert not bypass("badexample.com", entries)
    assert bypass("corp.internal", entries) and bypass("a.corp.internal", entries)
    assert bypass("10.1.2.3", entries) and not bypass("11.1.2.3", entries)
    assert bypass("::1", entries) and bypass("[::1]", entries) and bypass("fd00::1", entries)
    assert bypass("host", entries) and not bypass("otherhost", entries)
    assert bypass("anything", ("*",)) and not bypass("anything", ())


def test_proxies_from_the_environment() -> None:
    p = Proxies.from_environ(
        {
            "HTTPS_PROXY": "http://upper:1",
            "https_proxy": "http://user:p%40ss@lower:3128",
            "HTTP_PROXY": "proxy.local:8080",
            "NO_PROXY": "127.0.0.1, .internal",
        }
    )
    https = p.for_url("https", "s3.amazonaws.com")
    assert https is not None and (https.host, https.port) == ("lower", 3128)
    assert https.authorization == "Basic dXNlcjpwQHNz"  # user:p@ss
    assert "p@ss" not in repr(https)
    http = p.for_url("http", "s3.amazonaws.com")
    assert http is not None and (http.host, http.port, http.authorization) == (
        "proxy.local",
        8080,
        None,
    )
    assert p.for_url("https", "127.0.0.1") is None and p.for_url("http", "s3.internal") is None
    assert Proxies.from_environ({}).for_url("https", "x") is None
    with pytest.raises(ValueError, match="HTTPS_PROXY"):
        Proxies.from_environ({"HTTPS_PROXY": "socks5://p:1080"})


async def test_http_through_a_proxy_is_absolute_form(server: Server) -> None:
    server.respond = answer("200 OK", {"ETag": '"e"'}, b"0123456789")
    proxy_port = int(server.url.rsplit(":", 1)[1])
    client = S3Client(
        S3Config(endpoint_url="http://s3.example.test:9000"),
        environ={"HTTP_PROXY": f"http://u:p@127.0.0.1:{proxy_port}"},
    )
    s = store(client, Credentials("AKID", "s", None, FAR))
    try:
        sink = Sink()
        await s.get_range("f/k", 0, None, sink)
        assert b"".join(d for _, d in sink.writes) == b"0123456789"
        line, headers = request_headers(server.requests[0])
        assert line == "GET http://s3.example.test:9000/media/f/k HTTP/1.1"
        assert headers["host"] == "s3.example.test:9000"
        assert headers["proxy-authorization"] == "Basic dTpw"
    finally:
        await client.close()
