"""Checksums as real uploads leave them, verified end to end: objects uploaded
to SeaweedFS by botocore with a checksum algorithm (a composite CRC32 as
boto3's upload_file makes, a full-object CRC64NVME as S3 gives every new
object, a single PUT's CRC32), then HEAD, the part layout and the engine's
ranged GETs through a role session. The engine must report what it checked
(docs/design.md, Transfers: Checksums), and a checksum that does not match
the bytes must fail the download."""

from __future__ import annotations

import base64
import dataclasses
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from awscrt import checksums as crt
from test_s3_live import Recorder, StaticSource, sts_creds

from s3feed.transfer.config import MiB, S3Config, TransferConfig
from s3feed.transfer.engine import Engine
from s3feed.transfer.errors import ChecksumMismatch
from s3feed.transfer.observer import NullTransferObserver
from s3feed.transfer.progress import Progress
from s3feed.transfer.s3.client import S3Client
from s3feed.transfer.s3.objects import S3ObjectStore
from s3feed.transfer.store import ObjectMeta
from s3feed.transfer.uri import parse_uri_path

if TYPE_CHECKING:
    from conftest import Seaweed

pytestmark = pytest.mark.timeout(120)
PART = 5 * MiB


@pytest.fixture
async def store(seaweed: Seaweed) -> AsyncIterator[S3ObjectStore]:
    client = S3Client(S3Config(endpoint_url=seaweed.endpoint_url))
    location = parse_uri_path(
        f"https://{seaweed.bucket}.s3.{seaweed.region}.amazonaws.com/", client.s3
    )
    yield S3ObjectStore(
        location, StaticSource(sts_creds(seaweed.assume())), clients=client, observer=Recorder()
    )
    await client.close()


@pytest.fixture
def admin(seaweed: Seaweed) -> Iterator[Any]:
    with seaweed.closing_client("s3") as s3:
        yield s3


@pytest.fixture
def fd(tmp_path: Path) -> Iterator[int]:
    f = os.open(tmp_path / "data", os.O_RDWR | os.O_CREAT, 0o600)
    yield f
    os.close(f)


def multipart(s3: Any, bucket: str, key: str, data: bytes, alg: str, full: bool) -> dict[str, Any]:
    """As boto3's upload_file (COMPOSITE) or with ChecksumType FULL_OBJECT;
    the HEAD that follows, with checksum mode on."""
    extra = {"ChecksumType": "FULL_OBJECT"} if full else {}
    up = s3.create_multipart_upload(Bucket=bucket, Key=key, ChecksumAlgorithm=alg, **extra)
    parts = []
    for n, at in enumerate(range(0, len(data), PART), start=1):
        answer = s3.upload_part(
            Bucket=bucket,
            Key=key,
            UploadId=up["UploadId"],
            PartNumber=n,
            Body=data[at : at + PART],
            ChecksumAlgorithm=alg,
        )
        parts.append(
            {"PartNumber": n, "ETag": answer["ETag"], f"Checksum{alg}": answer[f"Checksum{alg}"]}
        )
    s3.complete_multipart_upload(
        Bucket=bucket, Key=key, UploadId=up["UploadId"], MultipartUpload={"Parts": parts}
    )
    return dict(s3.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED"))


async def download(
    store: S3ObjectStore, key: str, fd: int, meta: ObjectMeta | None = None
) -> Progress:
    engine = Engine(TransferConfig(part_size=PART), NullTransferObserver())
    progress = Progress()
    await engine.download(store, key, fd, tenant="t", progress=progress, meta=meta)
    return progress


def read_all(fd: int, size: int) -> bytes:
    return os.pread(fd, size, 0)


@pytest.mark.parametrize(
    ("alg", "full", "kind", "verified"),
    [
        ("CRC32", False, "COMPOSITE", "CRC32-COMPOSITE"),
        ("CRC64NVME", True, "FULL_OBJECT", "CRC64NVME"),
        ("CRC32", True, "FULL_OBJECT", "CRC32"),
        ("CRC32C", False, "COMPOSITE", "CRC32C-COMPOSITE"),
    ],
)
async def test_a_multipart_upload_is_verified(
    seaweed: Seaweed,
    admin: Any,
    store: S3ObjectStore,
    fd: int,
    alg: str,
    full: bool,
    kind: str,
    verified: str,
) -> None:
    data = os.urandom(3 * PART + 12345)
    key = f"checksums-{uuid.uuid4().hex[:8]}/{alg}-{kind}.ts"
    head = multipart(admin, seaweed.bucket, key, data, alg, full)
    assert head.get("ChecksumType") == kind, "SeaweedFS keeps what the upload asked for"
    assert f"Checksum{alg}" in head
    progress = await download(store, key, fd)
    assert read_all(fd, len(data) + 1) == data
    assert progress.verified == [verified]


async def test_a_single_put_crc32_is_verified(
    seaweed: Seaweed, admin: Any, store: S3ObjectStore, fd: int
) -> None:
    data = os.urandom(PART + 7)
    key = f"checksums-{uuid.uuid4().hex[:8]}/single.ts"
    admin.put_object(Bucket=seaweed.bucket, Key=key, Body=data, ChecksumAlgorithm="CRC32")
    progress = await download(store, key, fd)
    assert read_all(fd, len(data) + 1) == data
    assert progress.verified == ["CRC32"]


async def test_a_checksum_the_bytes_do_not_have_fails(
    seaweed: Seaweed, admin: Any, store: S3ObjectStore, fd: int
) -> None:
    """The object's real HEAD with its CRC64NVME replaced by that of other bytes:
    the bytes received must be what is checked, not the answer echoed back."""
    data = os.urandom(2 * PART + 3)
    key = f"checksums-{uuid.uuid4().hex[:8]}/wrong.ts"
    multipart(admin, seaweed.bucket, key, data, "CRC64NVME", True)
    meta = await store.head(key)
    wrong = base64.b64encode(crt.crc64nvme(data[:-1]).to_bytes(8, "big")).decode()
    assert meta.checksums == {
        "CRC64NVME": base64.b64encode(crt.crc64nvme(data).to_bytes(8, "big")).decode()
    }
    forged = dataclasses.replace(meta, checksums={"CRC64NVME": wrong})
    with pytest.raises(ChecksumMismatch):
        await download(store, key, fd, meta=forged)
