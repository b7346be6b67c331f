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
(a DELETE right after its POST unlinks after the write), and the caller
awaits its own: a 201 means the job survives a crash from then on. A write
that fails is logged and the job lives on without surviving a restart.

`load` reads every file back at start, through `parse_job_request`, as a
request body is parsed; a file that cannot be read or parsed is logged on
one line and skipped (kept, for the operator), never fatal.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
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

    async def save(self, request: JobRequest, *, uid: int, created_at: datetime) -> None:
        if self.directory is None:
            return
        document = {
            "Version": VERSION,
            **request_body(request),
            "CreatorUid": uid,
            "CreatedAt": created_at.astimezone(UTC).isoformat(),
        }
        data = json.dumps(document, sort_keys=True).encode()
        await self._run(self._write, request.job_id, data)

    async def remove(self, job_id: str) -> None:
        if self.directory is None:
            return
        await self._run(self._unlink, job_id)

    async def load(self, s3: S3Config) -> list[SavedJob]:
        """Every job a previous run left; unreadable files are logged and skipped."""
        if self.directory is None:
            return []
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._worker, self._read_all, s3)

    def close(self) -> None:
        self._worker.shutdown(wait=True)

    async def _run(self, call: Any, *args: Any) -> None:
        # Submitted now, before any await: the worker keeps the loop's order.
        future = asyncio.get_running_loop().run_in_executor(self._worker, call, *args)
        try:
            await future
        except OSError as exc:
            log.error(
                "job state not written; the job will not survive a restart",
                extra={"job_id": args[0], "error": f"{exc.strerror or exc}"},
            )

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
