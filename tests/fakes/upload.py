"""`FakeUploadStore`: an in-memory UploadClient for unit tests.

It keeps what S3 would keep (objects, multipart uploads and their parts),
checks each part's CRC32C as S3 does, and fails on demand: `failures`
maps an operation name ("PutObject", "UploadPart", ...) to the exceptions
its next calls raise, in order; `gate`, when set, holds every UploadPart
until the test opens it (to observe how many parts are in flight).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field

from s3feed.transfer.checksums import composite, crc32c
from s3feed.transfer.errors import ObjectStoreError
from s3feed.transfer.upload.multipart import CHECKSUM, PartDone


@dataclass
class StoredObject:
    data: bytes
    headers: dict[str, str]
    checksum: str


@dataclass
class _Multipart:
    key: str
    headers: dict[str, str]
    parts: dict[int, tuple[bytes, str]] = field(default_factory=dict)


class FakeUploadStore:
    def __init__(self, bucket: str = "fake-bucket") -> None:
        self.bucket = bucket
        self.objects: dict[str, StoredObject] = {}
        self.uploads: dict[str, _Multipart] = {}
        self.failures: dict[str, list[BaseException]] = {}
        self.calls: list[str] = []
        self.gate: asyncio.Event | None = None
        self.in_flight = 0
        self.max_in_flight = 0
        self._ids = itertools.count(1)

    def _fail(self, op: str) -> None:
        self.calls.append(op)
        queued = self.failures.get(op)
        if queued:
            raise queued.pop(0)

    async def put_object(
        self, key: str, body: memoryview, checksum: str, headers: Mapping[str, str]
    ) -> tuple[str, dict[str, str]]:
        self._fail("PutObject")
        data = bytes(body)
        if crc32c(data) != checksum:
            raise ObjectStoreError("BadDigest: the CRC32C does not match the body")
        self.objects[key] = StoredObject(data, dict(headers), checksum)
        return f'"etag-{len(data)}"', {CHECKSUM: checksum}

    async def create_multipart(self, key: str, headers: Mapping[str, str]) -> str:
        self._fail("CreateMultipartUpload")
        upload_id = f"up{next(self._ids)}"
        self.uploads[upload_id] = _Multipart(key, dict(headers))
        return upload_id

    async def upload_part(
        self, key: str, upload_id: str, number: int, body: memoryview, checksum: str
    ) -> str:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.gate is not None:
                await self.gate.wait()
            self._fail("UploadPart")
            data = bytes(body)
            if crc32c(data) != checksum:
                raise ObjectStoreError("BadDigest: the CRC32C does not match the part")
            self.uploads[upload_id].parts[number] = (data, checksum)
            return f'"part-{number}"'
        finally:
            self.in_flight -= 1

    async def complete(
        self, key: str, upload_id: str, parts: list[PartDone]
    ) -> tuple[str, dict[str, str]]:
        self._fail("CompleteMultipartUpload")
        up = self.uploads.pop(upload_id)
        if [p.number for p in parts] != sorted(up.parts) or any(
            up.parts[p.number][1] != p.checksum for p in parts
        ):
            raise ObjectStoreError("InvalidPart")
        data = b"".join(up.parts[p.number][0] for p in parts)
        checksum = composite([p.checksum for p in parts])
        self.objects[key] = StoredObject(data, up.headers, checksum)
        return f'"etag-{len(parts)}"', {CHECKSUM: checksum}

    async def abort(self, key: str, upload_id: str) -> None:
        self._fail("AbortMultipartUpload")
        self.uploads.pop(upload_id, None)

    async def list_multipart_uploads(self, prefix: str) -> list[tuple[str, str]]:
        self._fail("ListMultipartUploads")
        return [(u.key, i) for i, u in self.uploads.items() if u.key.startswith(prefix)]
