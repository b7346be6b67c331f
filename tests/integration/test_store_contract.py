"""The ObjectStore contract (transfer/store.py), one suite for every store:
the fake, and the real S3ObjectStore on SeaweedFS and on ministack, each
through a role session's credentials. What the engine relies on must hold
alike everywhere: HEAD, ranged GET, If-Match (412), 416, the part layout of
a multipart object (HEAD ?partNumber=1), listing pages, NoSuchKey,
AccessDenied; and FailingObjectStore wraps any of them."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest
from test_s3_live import Buffer, Recorder, StaticSource, sts_creds

import localaws
from s3feed.transfer.config import S3Config, TransferConfig
from s3feed.transfer.engine import Engine
from s3feed.transfer.errors import (
    AccessDenied,
    InvalidRange,
    NoSuchKey,
    SourceChanged,
    TransientError,
)
from s3feed.transfer.retry import RetryBudget
from s3feed.transfer.s3.client import S3Client
from s3feed.transfer.s3.objects import S3ObjectStore
from s3feed.transfer.store import ObjectStore
from s3feed.transfer.uri import parse_uri_path
from tests.fakes.store import FailingObjectStore, FakeObjectStore, Fault

if TYPE_CHECKING:
    from conftest import LocalAws, Seaweed

pytestmark = pytest.mark.timeout(120)
MiB = 1024 * 1024


@dataclass
class Subject:
    """A store under test, how to write into its bucket, and a store whose
    role may not read the bucket it points at (with one key there)."""

    store: ObjectStore
    put: Callable[..., str]  # put(key, data, part_size=None) -> ETag
    denied: ObjectStore
    denied_key: str
    prefix: str  # a folder of this test's own
    name: str = "fake"


def _real(
    client: S3Client, endpoint: Any, bucket: str, creds: dict[str, Any], region: str
) -> S3ObjectStore:
    location = parse_uri_path(f"https://{bucket}.s3.{region}.amazonaws.com/", client.s3)
    return S3ObjectStore(
        location, StaticSource(sts_creds(creds)), clients=client, observer=Recorder()
    )


@pytest.fixture(params=["fake", "seaweed", "ministack"])
async def subject(request: pytest.FixtureRequest) -> AsyncIterator[Subject]:
    prefix = f"contract-{uuid.uuid4().hex[:8]}/"
    if request.param == "fake":
        fake, other = FakeObjectStore(), FakeObjectStore(bucket="other")
        other.put("secret.ts", b"not yours")
        other.deny()
        yield Subject(fake, fake.put, other, "secret.ts", prefix)
        return
    if request.param == "seaweed":
        sw: Seaweed = request.getfixturevalue("seaweed")
        client = S3Client(S3Config(endpoint_url=sw.endpoint_url))
        creds = sw.assume()
        store = _real(client, sw, sw.bucket, creds, sw.region)
        denied = _real(client, sw, "seaweed-other", creds, sw.region)
        admin = sw.client("s3")
        denied_key, bucket = "secret.txt", sw.bucket
    else:
        aws: LocalAws = request.getfixturevalue("local_aws")
        tb = request.getfixturevalue("bucket")
        other = request.getfixturevalue("globex_bucket")
        other.put("secret.ts", b"globex only")
        client = S3Client(S3Config(endpoint_url=aws.endpoint_url))
        creds = aws.assume(aws.acme_role_arn, aws.acme_tenant)
        store = _real(client, aws, tb.name, creds, aws.region)
        denied = _real(client, aws, other.name, creds, aws.region)
        admin = aws.client("s3")
        denied_key, bucket = "secret.ts", tb.name

    def put(key: str, data: bytes, part_size: int | None = None) -> str:
        return str(localaws.put_object(admin, bucket, key, data, part_size))

    try:
        yield Subject(store, put, denied, denied_key, prefix, request.param)
    finally:
        admin.close()
        await client.close()


async def get(store: ObjectStore, key: str, start: int, end: int | None, n: int) -> bytes:
    sink = Buffer(start, n)
    await store.get_range(key, start, end, sink, stall_timeout=10)
    assert sink.written == n
    return bytes(sink.data)


async def test_head_and_ranged_get(subject: Subject) -> None:
    data = os.urandom(3 * MiB + 5)
    key = subject.prefix + "a.ts"
    etag = subject.put(key, data)
    meta = await subject.store.head(key)
    assert (meta.key, meta.size, meta.etag) == (key, len(data), etag)
    assert meta.last_modified.tzinfo is not None
    assert await get(subject.store, key, 0, None, len(data)) == data
    assert await get(subject.store, key, MiB - 1, 2 * MiB, MiB + 2) == data[MiB - 1 : 2 * MiB + 1]
    sink = Buffer(len(data) - 5, 5)
    got = await subject.store.get_range(key, len(data) - 5, len(data) + 100, sink)
    assert bytes(sink.data) == data[-5:] and (got.size, got.etag) == (len(data), etag)


async def test_if_match_is_source_changed_and_416_is_invalid_range(subject: Subject) -> None:
    key = subject.prefix + "b.ts"
    old = subject.put(key, b"first version")
    assert (await subject.store.head(key, if_match=old)).etag == old
    subject.put(key, b"second version!")
    sink = Buffer(0, 4)
    with pytest.raises(SourceChanged):
        await subject.store.get_range(key, 0, 3, sink, if_match=old)
    assert sink.written == 0, "not one byte of the new object"
    with pytest.raises(SourceChanged):
        await subject.store.head(key, if_match=old)
    with pytest.raises(InvalidRange) as e:
        await subject.store.get_range(key, 100, 200, Buffer(100, 101))
    assert e.value.size == len(b"second version!")


async def test_part_layout_of_a_multipart_object(subject: Subject) -> None:
    data = os.urandom(11 * MiB + 3)
    key, single = subject.prefix + "multi.bin", subject.prefix + "single.bin"
    etag = subject.put(key, data, part_size=5 * MiB)
    assert etag.endswith('-3"')
    subject.put(single, b"x" * 1000)
    assert await subject.store.part_size(single) == 1000
    meta = await subject.store.head(key)
    parts, exact = await Engine(TransferConfig()).layout(subject.store, meta, RetryBudget(0))
    if subject.name == "ministack":  # ignores partNumber: the store says it cannot tell
        assert await subject.store.part_size(key, if_match=etag) is None
        assert not exact and parts is not None and len(parts) == 3  # guessed
        return
    assert await subject.store.part_size(key, if_match=etag) == 5 * MiB
    assert exact and parts == [(0, 5 * MiB - 1), (5 * MiB, 10 * MiB - 1), (10 * MiB, len(data) - 1)]
    assert (
        await get(subject.store, key, 5 * MiB - 2, 5 * MiB + 1, 4)
        == data[5 * MiB - 2 : 5 * MiB + 2]
    )


async def test_listing_pages_stay_under_the_prefix(subject: Subject) -> None:
    keys = [f"{subject.prefix}show/{n:02d} a+b%.ts" for n in range(5)]
    for key in [*keys, subject.prefix + "shower.ts", subject.prefix + "a.ts"]:
        subject.put(key, b"xy")
    seen, sizes, token = [], [], None
    while True:
        page = await subject.store.list_page(subject.prefix + "show/", max_keys=2, token=token)
        sizes.append(len(page.objects))
        seen += [(m.key, m.size) for m in page.objects]
        if page.next_token is None:
            break
        token = page.next_token
    assert seen == [(k, 2) for k in keys] and sizes == [2, 2, 1]
    every = [m.key async for m in subject.store.list_objects(subject.prefix)]
    assert sorted(every) == sorted([*keys, subject.prefix + "shower.ts", subject.prefix + "a.ts"])


async def test_missing_and_denied(subject: Subject) -> None:
    missing = subject.prefix + "missing.ts"
    with pytest.raises(NoSuchKey):
        await subject.store.head(missing)
    with pytest.raises(NoSuchKey):
        await subject.store.get_range(missing, 0, 9, Buffer(0, 10))
    with pytest.raises(AccessDenied):
        await subject.denied.head(subject.denied_key)
    with pytest.raises(AccessDenied):
        await subject.denied.get_range(subject.denied_key, 0, 3, Buffer(0, 4))
    with pytest.raises(AccessDenied):
        await subject.denied.list_page("")


async def test_failing_store_wraps_any_store(subject: Subject) -> None:
    key = subject.prefix + "f.ts"
    subject.put(key, b"0123456789")
    failing = FailingObjectStore(
        subject.store,
        {0: Fault("reset", after_bytes=4)},
        heads={0: Fault("throttled")},
        lists={0: Fault("server_error"), 1: Fault("access_denied")},
    )
    with pytest.raises(TransientError) as e:
        await failing.head(key)
    assert e.value.reason == "throttled"
    assert (await failing.head(key)).size == 10
    sink = Buffer(0, 10)
    with pytest.raises(TransientError):
        await failing.get_range(key, 0, None, sink)
    assert bytes(sink.data[:4]) == b"0123" and sink.written == 4  # delivered, then failed
    await failing.get_range(key, 4, None, sink)
    assert bytes(sink.data) == b"0123456789"
    with pytest.raises(TransientError):
        await failing.list_page(subject.prefix)
    with pytest.raises(AccessDenied):
        await failing.list_page(subject.prefix)
    assert [m.key for m in (await failing.list_page(subject.prefix)).objects] == [key]
    assert [c.op for c in failing.calls] == [
        "HeadObject",
        "HeadObject",
        "GetObject",
        "GetObject",
        "ListObjectsV2",
        "ListObjectsV2",
        "ListObjectsV2",
    ]
