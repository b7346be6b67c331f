"""S3ObjectStore against the real local S3 (ministack, auth on): HEAD, ranged
GET and LIST through the job's own credentials, and S3's refusals translated."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import botocore.config
import botocore.session
import pytest

from s3feed.auth.credentials import Credentials
from s3feed.transfer.config import S3Config
from s3feed.transfer.errors import (
    AccessDenied,
    InvalidRange,
    NoSuchKey,
    SourceChanged,
    TransientError,
)
from s3feed.transfer.s3.client import S3Client
from s3feed.transfer.s3.objects import S3ObjectStore
from s3feed.transfer.uri import parse_uri_path

if TYPE_CHECKING:
    from conftest import LocalAws, TestBucket

MiB = 1024 * 1024


class StaticSource:
    """A CredentialSource that hands out a fixed sequence of credentials:
    `current()` the first, each `refresh_now` the next."""

    def __init__(self, *creds: Credentials) -> None:
        self._creds = list(creds)
        self.refreshes: list[str] = []

    async def current(self) -> Credentials:
        return self._creds[0]

    async def refresh_now(self, reason: str) -> Credentials:
        self.refreshes.append(reason)
        if len(self._creds) > 1:
            self._creds.pop(0)
        return self._creds[0]


def sts_creds(c: dict[str, Any]) -> Credentials:
    return Credentials(c["AccessKeyId"], c["SecretAccessKey"], c["SessionToken"], c["Expiration"])


class Recorder:
    def __init__(self) -> None:
        self.requests: list[str] = []
        self.errors: list[tuple[str, str]] = []

    def s3_request(self, op: str, seconds: float) -> None:
        assert seconds >= 0
        self.requests.append(op)

    def s3_request_error(self, op: str, code: str) -> None:
        self.errors.append((op, code))

    def __getattr__(self, name: str) -> Any:
        return lambda *a, **k: None


class Buffer:
    """A sink for bytes [base, base+size)."""

    def __init__(self, base: int, size: int) -> None:
        self.base = base
        self.data = bytearray(size)
        self.written = 0

    def write(self, offset: int, data: memoryview) -> None:
        self.data[offset - self.base : offset - self.base + len(data)] = data
        self.written += len(data)


@pytest.fixture
async def clients(local_aws: LocalAws) -> AsyncIterator[S3Client]:
    c = S3Client(S3Config(endpoint_url=local_aws.endpoint_url))
    yield c
    await c.close()


def make_store(
    local_aws: LocalAws,
    bucket: str,
    source: Any,
    clients: S3Client,
    observer: Any = None,
    folder: str = "",
) -> S3ObjectStore:
    uri = f"https://{bucket}.s3.{local_aws.region}.amazonaws.com/{folder}"
    location = parse_uri_path(uri, clients.s3)
    return S3ObjectStore(location, source, clients=clients, observer=observer or Recorder())


@pytest.fixture
async def acme(
    local_aws: LocalAws, bucket: TestBucket, clients: S3Client
) -> AsyncIterator[S3ObjectStore]:
    """The store of a job whose role (acme) may read `bucket`."""
    creds = sts_creds(local_aws.assume(local_aws.acme_role_arn, local_aws.acme_tenant))
    store = make_store(local_aws, bucket.name, StaticSource(creds), clients)
    yield store
    await store.close()


async def get(store: S3ObjectStore, key: str, start: int, end: int | None, size: int) -> bytes:
    sink = Buffer(start, size)
    meta = await store.get_range(key, start, end, sink, stall_timeout=10)
    assert sink.written == size
    assert meta.size >= size
    return bytes(sink.data)


@pytest.mark.parametrize("size", [0, 1, 5 * MiB, 5 * MiB + 1])
async def test_head_and_whole_get_are_byte_exact(
    acme: S3ObjectStore, bucket: TestBucket, size: int
) -> None:
    body = os.urandom(size)
    etag = bucket.put(f"obj-{size}", body)
    meta = await acme.head(f"obj-{size}")
    assert (meta.key, meta.size, meta.etag) == (f"obj-{size}", size, etag)
    assert meta.last_modified.tzinfo is not None
    data = await get(acme, f"obj-{size}", 0, None, size)
    assert hashlib.sha256(data).digest() == hashlib.sha256(body).digest()


async def test_ranges_are_byte_exact_on_a_multipart_object(
    acme: S3ObjectStore, bucket: TestBucket, clients: S3Client
) -> None:
    body = os.urandom(12 * MiB + 123)
    etag = bucket.put("multi.bin", body, part_size=5 * MiB)
    assert etag.endswith('-3"')
    meta = await acme.head("multi.bin")
    assert meta.etag == etag and meta.size == len(body)
    ranges = [(0, 0), (0, 5 * MiB - 1), (5 * MiB - 1, 5 * MiB), (7, 12 * MiB + 122)]
    ranges += [(12 * MiB, None), (len(body) - 1, None), (10, 10 * MiB + 10)]
    for start, end in ranges:
        last = len(body) - 1 if end is None else end
        data = await get(acme, "multi.bin", start, end, last - start + 1)
        assert hashlib.sha256(data).digest() == hashlib.sha256(body[start : last + 1]).digest()
    # An end past the object is clipped, as S3 does.
    sink = Buffer(12 * MiB, 123)
    rmeta = await acme.get_range("multi.bin", 12 * MiB, 20 * MiB, sink, if_match=etag)
    assert rmeta.size == len(body) and rmeta.etag == etag
    assert bytes(sink.data) == body[12 * MiB :]
    # All of it over one keep-alive connection, concurrently over a few.
    parts = await asyncio.gather(
        *(get(acme, "multi.bin", i * MiB, (i + 1) * MiB - 1, MiB) for i in range(12))
    )
    assert b"".join(parts) == body[: 12 * MiB]
    assert 1 <= clients.http.open_connections <= 12


async def test_if_match_mismatch_is_source_changed(acme: S3ObjectStore, bucket: TestBucket) -> None:
    old = bucket.put("changing.ts", b"version 1")
    bucket.put("changing.ts", b"version 2!")
    with pytest.raises(SourceChanged):
        await acme.get_range("changing.ts", 0, 3, Buffer(0, 4), if_match=old)
    with pytest.raises(SourceChanged):
        await acme.head("changing.ts", if_match=old)
    now = (await acme.head("changing.ts")).etag
    assert await get(acme, "changing.ts", 0, None, 10) == b"version 2!"
    assert (await acme.head("changing.ts", if_match=now)).size == 10


async def test_missing_key_is_no_such_key(acme: S3ObjectStore) -> None:
    with pytest.raises(NoSuchKey):
        await acme.head("nope/missing.ts")
    with pytest.raises(NoSuchKey):
        await acme.get_range("nope/missing.ts", 0, 9, Buffer(0, 10))
    observer = acme._observer
    assert isinstance(observer, Recorder)
    assert ("GetObject", "NoSuchKey") in observer.errors
    assert ("HeadObject", "404") in observer.errors


async def test_range_past_the_end_is_invalid_range(acme: S3ObjectStore, bucket: TestBucket) -> None:
    bucket.put("short.ts", b"0123456789")
    with pytest.raises(InvalidRange) as e:
        await acme.get_range("short.ts", 10, 20, Buffer(10, 11))
    assert e.value.size == 10


async def test_keys_that_need_encoding(acme: S3ObjectStore, bucket: TestBucket) -> None:
    keys = ["dir/a b+c.ts", "dir/été~€.mp4", "dir/100%.ts", "dir/q?x=1&y#z", "dir//double"]
    for key in keys:
        bucket.put(key, key.encode())
    for key in keys:
        assert (await acme.head(key)).size == len(key.encode())
        assert await get(acme, key, 0, None, len(key.encode())) == key.encode()
    listed = [m.key async for m in acme.list_objects("dir/")]
    assert sorted(listed) == sorted(keys)


async def test_list_is_recursive_under_the_prefix(
    local_aws: LocalAws, bucket: TestBucket, clients: S3Client
) -> None:
    for key in ["show/a.ts", "show/s1/b.ts", "show/s1/e2/c.ts", "shower.ts", "other/d.ts"]:
        bucket.put(key, b"x" * len(key))
    creds = sts_creds(local_aws.assume(local_aws.acme_role_arn, local_aws.acme_tenant))
    store = make_store(local_aws, bucket.name, StaticSource(creds), clients, folder="show/")
    try:
        listed = {m.key: m async for m in store.list_objects(store.location.prefix_for(""))}
        assert sorted(listed) == ["show/a.ts", "show/s1/b.ts", "show/s1/e2/c.ts"]
        assert listed["show/s1/b.ts"].size == len("show/s1/b.ts")
        assert listed["show/a.ts"].etag.startswith('"')
        assert [m.key async for m in store.list_objects("show/zzz")] == []
    finally:
        await store.close()


async def test_another_tenants_role_is_access_denied(
    local_aws: LocalAws, globex_bucket: TestBucket, clients: S3Client
) -> None:
    globex_bucket.put("secret.ts", b"globex only")
    creds = sts_creds(local_aws.assume(local_aws.acme_role_arn, local_aws.acme_tenant))
    store = make_store(local_aws, globex_bucket.name, StaticSource(creds), clients)
    try:
        with pytest.raises(AccessDenied):
            await store.get_range("secret.ts", 0, None, Buffer(0, 11))
        with pytest.raises(AccessDenied):
            await store.head("secret.ts")
        with pytest.raises(AccessDenied):
            _ = [m async for m in store.list_objects("")]
    finally:
        await store.close()


async def expired_creds(local_aws: LocalAws) -> Credentials:
    # ministack does not enforce the 900 s minimum: a 1 s session lapses at once.
    # (botocore's own client-side check has to be turned off to ask for it.)
    sts = botocore.session.get_session().create_client(
        "sts",
        region_name=local_aws.region,
        endpoint_url=local_aws.endpoint_url,
        aws_access_key_id=local_aws.daemon_access_key_id,
        aws_secret_access_key=local_aws.daemon_secret_access_key,
        config=botocore.config.Config(parameter_validation=False),
    )
    with contextlib.closing(sts):
        c = sts_creds(
            sts.assume_role(
                RoleArn=local_aws.acme_role_arn,
                RoleSessionName="s3feed-expiring",
                ExternalId=local_aws.acme_tenant,
                DurationSeconds=1,
            )["Credentials"]
        )
    # Real time is the behaviour: ministack expires them on its own clock (to the second).
    await asyncio.sleep(max(0.0, (c.expiration - datetime.now(UTC)).total_seconds()) + 1.1)
    return c


async def test_expired_token_refreshes_and_retries_once(
    local_aws: LocalAws, bucket: TestBucket, clients: S3Client
) -> None:
    bucket.put("k.ts", b"payload")
    # Fresh first: ministack forgets lapsed sessions at the next AssumeRole and then
    # answers 403 InvalidAccessKeyId (as SeaweedFS does) instead of 400 ExpiredToken.
    fresh = sts_creds(local_aws.assume(local_aws.acme_role_arn, local_aws.acme_tenant))
    stale = await expired_creds(local_aws)
    observer = Recorder()
    for call in ("get", "head", "list"):
        source = StaticSource(stale, fresh)
        store = make_store(local_aws, bucket.name, source, clients, observer)
        try:
            if call == "get":
                assert await get(store, "k.ts", 0, None, 7) == b"payload"
            elif call == "head":
                assert (await store.head("k.ts")).size == 7
            else:
                assert [m.key async for m in store.list_objects("")] == ["k.ts"]
        finally:
            await store.close()
        assert source.refreshes == ["expired_token"], call
    assert observer.errors == [
        ("GetObject", "ExpiredToken"),
        ("HeadObject", "400"),
        ("ListObjectsV2", "ExpiredToken"),
    ]


async def test_expired_after_refresh_is_transient(
    local_aws: LocalAws, bucket: TestBucket, clients: S3Client
) -> None:
    bucket.put("k.ts", b"payload")
    stale = await expired_creds(local_aws)
    source = StaticSource(stale)
    store = make_store(local_aws, bucket.name, source, clients)
    try:
        with pytest.raises(TransientError) as e:
            await store.get_range("k.ts", 0, None, Buffer(0, 7))
        assert e.value.reason == "expired_token"
        with pytest.raises(TransientError) as e:
            await store.head("k.ts")
        assert e.value.reason == "expired_token"
    finally:
        await store.close()
    assert source.refreshes == ["expired_token", "expired_token"]


async def test_every_request_signs_with_the_current_credentials(
    local_aws: LocalAws, bucket: TestBucket, clients: S3Client
) -> None:
    """A source whose current() changes between requests (as after a background
    refresh): both planes pick the new keys up without a new client."""
    bucket.put("k.ts", b"payload")
    a = sts_creds(local_aws.assume(local_aws.acme_role_arn, local_aws.acme_tenant))
    b = sts_creds(local_aws.assume(local_aws.acme_role_arn, local_aws.acme_tenant))
    bogus = Credentials("AKIDBOGUS", "secret", None, datetime.now(UTC) + timedelta(hours=1))
    source = StaticSource(a)
    store = make_store(local_aws, bucket.name, source, clients)
    try:
        assert (await store.head("k.ts")).size == 7
        source._creds = [b]
        assert (await store.head("k.ts")).size == 7
        assert await get(store, "k.ts", 0, None, 7) == b"payload"
        source._creds = [bogus]
        with pytest.raises(AccessDenied):
            await store.head("k.ts")
        with pytest.raises(AccessDenied):
            await store.get_range("k.ts", 0, None, Buffer(0, 7))
    finally:
        await store.close()
