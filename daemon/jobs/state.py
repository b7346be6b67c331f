"""Job definitions kept in `[api] state_dir`, so that live jobs survive a restart.

Design note (docs/design.md, Restart and upgrade). One file per job,
`STATE_DIR/jobs/JOBID.json` (a JobId is 1-128 of `[A-Za-z0-9._-]`, so it is
a file name as it is): the POST /v1/jobs body fields (`JobId`, `TenantName`,
`Source`, `EncoderUids`, `Destination`), rebuilt from the parsed
`JobRequest`, plus `CreatorUid` and `CreatedAt`. Never a credential: the
daemon holds none that are not a role session's, and those stay in memory.
One file per job, not a journal, so that registering or deleting a job
writes one small file whatever the number of jobs.

Each file is written atomically (`JOBID.json.tmp`, fsync, rename, fsync of
the directory), 0600 in a 0700 directory of the daemon's. The writes and
unlinks run in one worker thread, in the order the event loop asks for them
(a DELETE right after its POST unlinks after the write): `save` and `remove`
hand their call to the worker before they return, and the future they
return says when it is on disk, so the registry awaits a write before its
201 and closes a deleted job while its unlink runs. A call that fails is
logged (in the worker) and the job goes on without surviving a restart, or
comes back at the next start; the futures never raise.

`load` reads every file back at start, through `parse_job_request`, as a
request body is parsed; a file that cannot be read or parsed is logged on
one line and skipped (kept, for the operator), never fatal.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from s3feed.auth import CodedError
from s3feed.daemon.jobs.request import MAX_UID, JobRequest, parse_job_request
from s3feed.transfer import S3Config

log = logging.getLogger("s3feed.jobs")

VERSION = 1
SUFFIX = ".json"


@dataclass(frozen=True)
class SavedJob:
    """A job read back from the state directory."""

    request: JobRequest
    uid: int
    created_at: datetime


def request_body(request: JobRequest) -> dict[str, Any]:
    """The POST /v1/jobs body that parses to `request` (parse_job_request's inverse)."""
    source: dict[str, Any] = {
        "Provider": "AmazonS3",
        "UriPath": request.location.uri,
        "RoleArnToAssume": request.role_arn.arn,
        "RoleSessionDurationInSeconds": request.duration,
    }
    body: dict[str, Any] = {
        "JobId": request.job_id,
        "TenantName": request.tenant,
        "Source": source,
        "EncoderUids": sorted(request.encoder_uids),
    }
    dest = request.destination
    if dest is not None:
        destination: dict[str, Any] = {
            "Provider": "AmazonS3",
            "UriPath": dest.location.uri,
            "RoleArnToAssume": dest.role_arn.arn,
            "RoleSessionDurationInSeconds": dest.duration,
        }
        if dest.encryption.algorithm:
            destination["ServerSideEncryption"] = dest.encryption.algorithm
        if dest.encryption.kms_key_id:
            destination["SSEKMSKeyId"] = dest.encryption.kms_key_id
        body["Destination"] = destination
    return body


class JobState:
    """The state directory's job files; `directory` None keeps nothing."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="s3feed-jobstate")

    def save(self, request: JobRequest, *, uid: int, created_at: datetime) -> Awaitable[None]:
        """Write the job's file; the future is done when it is on disk."""
        if self.directory is None:
            return _done()
        document = {
            "Version": VERSION,
            **request_body(request),
            "CreatorUid": uid,
            "CreatedAt": created_at.astimezone(UTC).isoformat(),
        }
        data = json.dumps(document, sort_keys=True).encode()
        return self._submit(self._write, request.job_id, data)

    def remove(self, job_id: str) -> Awaitable[None]:
        """Unlink the job's file; the future is done when that is on disk."""
        if self.directory is None:
            return _done()
        return self._submit(self._unlink, job_id)

    async def load(self, s3: S3Config) -> list[SavedJob]:
        """Every job a previous run left; unreadable files are logged and skipped."""
        if self.directory is None:
            return []
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._worker, self._read_all, s3)

    def close(self) -> None:
        self._worker.shutdown(wait=True)

    def _submit(self, call: Callable[..., None], *args: Any) -> Awaitable[None]:
        # Handed to the worker now, before any await: it keeps the loop's order.
        return asyncio.get_running_loop().run_in_executor(self._worker, _logged, call, *args)

    def _path(self, job_id: str) -> Path:
        assert self.directory is not None
        return self.directory / f"{job_id}{SUFFIX}"

    def _ensure_directory(self) -> None:
        assert self.directory is not None
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self.directory.stat().st_mode & 0o777 != 0o700:
            os.chmod(self.directory, 0o700)

    def _write(self, job_id: str, data: bytes) -> None:
        self._ensure_directory()
        path = self._path(job_id)
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        self._sync_directory()

    def _unlink(self, job_id: str) -> None:
        try:
            self._path(job_id).unlink()
        except FileNotFoundError:
            return
        self._sync_directory()

    def _sync_directory(self) -> None:
        assert self.directory is not None
        fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _read_all(self, s3: S3Config) -> list[SavedJob]:
        assert self.directory is not None
        try:
            self._ensure_directory()
            names = sorted(os.listdir(self.directory))
        except OSError as exc:
            log.error(
                "job state directory unreadable; no job restored",
                extra={"path": str(self.directory), "error": f"{exc.strerror or exc}"},
            )
            return []
        jobs = []
        for name in names:
            path = self.directory / name
            if name.endswith(SUFFIX + ".tmp"):  # a write a crash interrupted
                path.unlink(missing_ok=True)
                continue
            if not name.endswith(SUFFIX):
                continue
            try:
                jobs.append(_parse(path, s3))
            except (OSError, ValueError, KeyError, TypeError, CodedError) as exc:
                # One line, no traceback: the file is kept for the operator.
                log.error(
                    "job state file skipped",
                    extra={"path": str(path), "error": " ".join(str(exc).split())[:300]},
                )
        return jobs


def _done() -> Awaitable[None]:
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    future.set_result(None)
    return future


def _logged(call: Callable[..., None], job_id: str, *args: Any) -> None:
    """In the worker: a failed write or unlink is logged, never raised."""
    try:
        call(job_id, *args)
    except OSError as exc:
        log.error(
            "job state not changed; the job may not survive a restart, or come back after one",
            extra={"job_id": job_id, "error": f"{exc.strerror or exc}"},
        )


def _parse(path: Path, s3: S3Config) -> SavedJob:
    document = json.loads(path.read_bytes())
    if not isinstance(document, dict):
        raise ValueError("not a JSON object")
    if document.pop("Version", None) != VERSION:
        raise ValueError(f"not a version {VERSION} job file")
    uid = document.pop("CreatorUid")
    created = datetime.fromisoformat(document.pop("CreatedAt"))
    if isinstance(uid, bool) or not isinstance(uid, int) or not 0 <= uid <= MAX_UID:
        raise ValueError(f"CreatorUid {uid!r} is not a uid")
    if created.tzinfo is None:
        raise ValueError("CreatedAt has no time zone")
    request = parse_job_request(document, s3)
    if path.name != f"{request.job_id}{SUFFIX}":
        raise ValueError(f"holds job {request.job_id!r}, not the one its name says")
    return SavedJob(request, uid, created)
