"""`PUT /v1/jobs/{JobId}/outputs/{Key}`: an encoder's output, uploaded while it arrives.

Design note (docs/design.md, Outputs). The upload runs in the API handler's
task (transfer/upload/multipart.py reads `request.content`, so the socket is the
backpressure); the job registers that task as one of its uploads, so the job
is busy while it runs (not reaped, drained on SIGTERM) and `Job.close`
cancels it (the engine then aborts the multipart upload, before the job's
session is closed). Each upload is a transfer record of mode "upload" in
the job document.

`Expect: 100-continue` is answered by the handler, not by aiohttp: a body
known to need a multipart upload gets its 100 only after
CreateMultipartUpload succeeded, so a role without s3:PutObject is a 403
before the encoder sends a byte.

`UploadJournal` is the state directory's `uploads.json`: every multipart
upload between CreateMultipartUpload and its end, with what it takes to
abort it again (tenant, role, UriPath). Rewritten atomically (temporary
file, fsync, rename) at each start and end; `abort_leftovers` runs when the
daemon starts and aborts what a crashed daemon left, with a short role
session of its own.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import StreamReader, web
from aiohttp.http import HttpProcessingError

from s3feed.auth import (
    CredentialObserver,
    RoleSession,
    SessionDuration,
    StsClient,
    abort_policy,
    parse_role_arn,
    validate_tenant_name,
)
from s3feed.daemon.errors import ApiError
from s3feed.daemon.jobs import Job, TransferState
from s3feed.transfer import S3Config, S3Location, UploadObserver, parse_uri_path
from s3feed.transfer.upload import (
    BodyError,
    Upload,
    UploadClient,
    UploadConfig,
    UploadMemory,
    content_type_for,
    upload,
)

log = logging.getLogger("s3feed.outputs")

RECOVERY_DURATION = SessionDuration(900)  # STS's shortest session: enough for a few aborts


class UploadJournal:
    """The multipart uploads this daemon started and has not ended."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._entries: dict[str, dict[str, str]] = {}
        if path is not None and path.exists():
            try:
                data = json.loads(path.read_text())
                for entry in data.get("Uploads", []):
                    self._entries[entry["UploadId"]] = {k: str(v) for k, v in entry.items()}
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                log.exception("the upload journal is unreadable; starting a new one")

    @property
    def entries(self) -> list[dict[str, str]]:
        return list(self._entries.values())

    def add(self, entry: dict[str, str]) -> None:
        self._entries[entry["UploadId"]] = entry
        self._write()

    def remove(self, upload_id: str) -> None:
        if self._entries.pop(upload_id, None) is not None:
            self._write()

    def _write(self) -> None:
        if self.path is None:
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        data = json.dumps({"Uploads": list(self._entries.values())}).encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def for_job(self, *, job_id: str, tenant: str, role_arn: str, uri: str) -> JobJournal:
        return JobJournal(
            self, {"JobId": job_id, "Tenant": tenant, "RoleArn": role_arn, "UriPath": uri}
        )


class JobJournal:
    """transfer/upload/multipart.py's UploadJournal for one job's destination."""

    def __init__(self, journal: UploadJournal, fields: dict[str, str]) -> None:
        self._journal = journal
        self._fields = fields

    def started(self, bucket: str, key: str, upload_id: str) -> None:
        self._journal.add({**self._fields, "Bucket": bucket, "Key": key, "UploadId": upload_id})

    def ended(self, bucket: str, key: str, upload_id: str) -> None:
        self._journal.remove(upload_id)


async def abort_leftovers(
    journal: UploadJournal,
    *,
    sts: StsClient,
    s3: S3Config,
    observer: CredentialObserver,
    make_uploader: Callable[[S3Location, RoleSession], UploadClient],
) -> int:
    """Abort the multipart uploads a previous run left; -> how many were aborted.
    An entry whose abort fails stays for the next start. The journal is read
    from disk, so its role, tenant and UriPath are parsed like a request's."""
    aborted = 0
    for entry in journal.entries:
        session: RoleSession | None = None
        try:
            location = parse_uri_path(entry["UriPath"], s3)
            session = await RoleSession.assume(
                sts,
                job_id=f"recover-{entry['JobId']}",
                role_arn=parse_role_arn(entry["RoleArn"]),
                external_id=validate_tenant_name(entry["Tenant"]),
                duration=RECOVERY_DURATION,
                observer=observer,
                policy=abort_policy(location),
            )
            await make_uploader(location, session).abort(entry["Key"], entry["UploadId"])
        except Exception as exc:
            log.warning(
                "could not abort a multipart upload left by the last run",
                extra={"key": entry.get("Key"), "job_id": entry.get("JobId"), "error": str(exc)},
            )
            continue
        finally:
            if session is not None:
                await session.close()
        journal.remove(entry["UploadId"])
        aborted += 1
        log.info(
            "aborted a multipart upload left by the last run",
            extra={"key": entry["Key"], "job_id": entry["JobId"]},
        )
    return aborted


async def expect_handler(request: web.Request) -> None:
    """Leave `Expect: 100-continue` to the handler (see the module's note)."""
    expect = request.headers.get("Expect", "")
    if expect and expect.lower() != "100-continue":
        raise web.HTTPExpectationFailed(text=f"Unknown Expect: {expect}")


async def _send_continue(request: web.Request) -> None:
    if request.version >= (1, 1) and request.headers.get("Expect", "").lower() == "100-continue":
        # Straight to the transport, not through the response's writer: an
        # interim answer is no part of the response, and bytes the writer
        # counted as sent would stop aiohttp from sending an error answer later.
        transport = request.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the client went away before 100 Continue")
        transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")


class RequestBody:
    """A request's body as the upload engine's `BodySource`.

    aiohttp's errors for a body it could not read become `BodyError` (one it
    cannot decode; with its pure-Python parser, a bad chunk too), so transfer/
    knows nothing of aiohttp. The client going away stays a ConnectionError.
    """

    BROKEN = (web.RequestPayloadError, web.PayloadAccessError, HttpProcessingError)

    def __init__(self, content: StreamReader) -> None:
        self._content = content

    async def read(self, n: int) -> bytes:
        try:
            return await self._content.read(n)
        except self.BROKEN as e:
            raise BodyError(str(e)) from e


async def put_output(
    request: web.Request,
    job: Job,
    key: str,
    *,
    config: UploadConfig,
    observer: UploadObserver,
    journal: UploadJournal,
    memory: UploadMemory | None = None,
) -> dict[str, Any]:
    """Upload the request body to the job's destination; -> the 201 document."""
    dest = job.destination
    if dest is None:
        raise ApiError(
            "NoDestination",
            f"job {job.job_id!r} has no Destination; register the job with one to upload outputs",
        )
    full_key = dest.request.location.key_for(key)
    record = job.new_record("upload", key)
    record.source = "s3"  # the far end of an upload (docs/design.md, Logs)
    record.progress.size = request.content_length
    record.progress.started = time.monotonic()
    record.progress.moving.set()

    def sent(n: int) -> None:
        record.progress.add(n)
        observer.bytes_sent(job.tenant, n)

    state = Upload(full_key, request.content_length, on_sent=sent, on_part=observer.upload_part)
    task = asyncio.current_task()
    assert task is not None
    record.move(TransferState.RUNNING)
    observer.upload_started()
    job.upload_opened(task)
    started = time.monotonic()
    outcome = "failed"
    try:
        result = await upload(
            RequestBody(request.content),
            dest.uploader,
            full_key,
            config=config,
            state=state,
            encryption=dest.request.encryption,
            content_type=content_type_for(full_key, request.headers.get("Content-Type")),
            journal=journal.for_job(
                job_id=job.job_id,
                tenant=job.tenant,
                role_arn=dest.request.role_arn.arn,
                uri=dest.request.location.uri,
            ),
            ready=lambda: _send_continue(request),
            memory=memory,
        )
    except asyncio.CancelledError:
        outcome = "cancelled"
        ending = job.ending
        if ending is not None and task.uncancel() == 0:
            # The daemon's drain grace is over (docs/design.md, Restart and
            # upgrade): the upload was aborted, and the encoder hears why.
            outcome = "failed"
            record.error = ending
            record.move(TransferState.FAILED)
            raise ApiError(*ending) from None
        record.error = ("Cancelled", "the job was deleted or the daemon stopped during the upload")
        record.move(TransferState.CANCELLED)
        raise
    except Exception as exc:
        record.fail(exc)  # its log record says why (daemon/jobs/records.py)
        raise
    else:
        outcome = "success"
        record.progress.finish(time.monotonic(), result.checksum)
        record.move(TransferState.DONE)
    finally:
        observer.upload_finished(outcome, time.monotonic() - started)
        job.upload_closed(task)
    return {
        "Key": result.key,
        "Bucket": result.bucket,
        "ETag": result.etag,
        "Size": result.size,
        "Checksum": result.checksum,
    }
