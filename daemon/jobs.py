"""Jobs: what an encoder registered, and everything the daemon holds for it.

Design note. A `Job` owns, for its whole life: the role session (auth/, with
its background refresher task), the object store bound to that session, the
transfer records of its fetches and streams, and the tasks that run its
fetches. `JobRegistry` owns the jobs. Deleting a job (DELETE, idle reaping,
shutdown) cancels the job's fetch tasks, closes its session (the refresher
stops, the credentials are dropped), closes its store and unpins its cache
entries; a failing fetch only fails its own record. Streams run in the API
handler's task, not the job's: the job counts them (so an idle job with an
open stream is not reaped) and a stream finds its job closed the next time
it asks for credentials.

A JobId is reserved in the registry before the AssumeRole call, so two
concurrent registrations of one id cannot both succeed. Who may do what
(docs/design.md, Roles and isolation): the uid that created a job and its
`EncoderUids` use it; only the creator (and root) deletes it; every other
uid sees NoSuchJob. The same uids may open the cache files the job fetched,
for as long as the job lives (transfer/serve.py grants and takes back).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
import logging
import re
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from s3feed.auth.errors import AuthError
from s3feed.auth.observer import CredentialObserver
from s3feed.auth.policy import session_policy
from s3feed.auth.session import RoleSession
from s3feed.auth.sts import StsClient
from s3feed.auth.validate import parse_role_arn, validate_duration, validate_tenant_name
from s3feed.transfer.config import S3Config
from s3feed.transfer.errors import TransferError
from s3feed.transfer.observer import TransferObserver
from s3feed.transfer.progress import Progress
from s3feed.transfer.s3store import S3Clients, S3ObjectStore
from s3feed.transfer.s3upload import S3Uploader
from s3feed.transfer.serve import Authorised, ObjectServer
from s3feed.transfer.store import ObjectStore
from s3feed.transfer.upload import UploadClient
from s3feed.transfer.uri import S3Location, parse_uri_path

from .destination import (
    DestinationRequest,
    parse_destination,
    write_only_policy,
    write_statements,
)
from .destination import check_envelope as check_destination
from .errors import ApiError, describe, s3_ids

log = logging.getLogger("s3feed.jobs")

JOB_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
MAX_ENCODER_UIDS = 64
MAX_UID = 4294967294  # (uid_t)-1 is "no uid" to the kernel
KEEP_FINISHED = 50  # finished transfer records kept per job for GET /v1/jobs/{id}


class TransferState(enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


_NEXT_STATES = {
    TransferState.QUEUED: {TransferState.RUNNING, TransferState.FAILED, TransferState.CANCELLED},
    TransferState.RUNNING: {TransferState.DONE, TransferState.FAILED, TransferState.CANCELLED},
    TransferState.DONE: set(),
    TransferState.FAILED: set(),
    TransferState.CANCELLED: set(),
}


@dataclass
class TransferRecord:
    """One fetch into the cache (mode "cache") or one stream (mode "stream")."""

    transfer_id: str
    mode: str
    key: str  # relative to the job's folder
    progress: Progress
    state: TransferState = TransferState.QUEUED
    path: Path | None = None
    error: tuple[str, str] | None = None  # (code, message)
    error_ids: dict[str, str] = field(default_factory=dict)  # S3's RequestId, HostId
    verified: tuple[str, ...] = ()
    finished: asyncio.Event = field(default_factory=asyncio.Event)

    def move(self, state: TransferState) -> None:
        if state not in _NEXT_STATES[self.state]:
            raise RuntimeError(f"transfer {self.transfer_id}: {self.state} -> {state}")
        self.state = state
        if state in (TransferState.DONE, TransferState.FAILED, TransferState.CANCELLED):
            self.finished.set()

    def fail(self, exc: BaseException) -> None:
        _, code, message, _ = describe(exc)
        self.error = (code, message)
        self.error_ids = s3_ids(exc)
        self.move(TransferState.FAILED)

    def document(self, now: float) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "Mode": self.mode,
            "Key": self.key,
            "State": self.state.value,
            "BytesDone": self.progress.bytes_done,
            "SizeBytes": self.progress.size,
            "BytesPerSecond": round(self.progress.rate(now)),
        }
        if self.mode == "cache":
            doc["FetchId"] = self.transfer_id
            doc["Path"] = str(self.path) if self.path else None
            doc["Verified"] = list(self.verified)
        if self.error:
            doc["Error"] = {"Code": self.error[0], "Message": self.error[1], **self.error_ids}
        return doc


@dataclass
class JobDestination:
    """Where the job's outputs go (docs/design.md, Outputs): the Source's
    session (`own_session` False) or a second one of the Destination's role."""

    request: DestinationRequest
    session: RoleSession
    uploader: UploadClient
    own_session: bool


def _rfc3339(t: datetime | None) -> str | None:
    if t is None:
        return None
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Job:
    def __init__(
        self,
        *,
        job_id: str,
        tenant: str,
        uid: int,
        location: S3Location,
        session: RoleSession,
        store: ObjectStore,
        server: ObjectServer,
        monotonic: Callable[[], float],
        encoder_uids: frozenset[int] = frozenset(),
        on_activity: Callable[[], None] = lambda: None,
        destination: JobDestination | None = None,
    ) -> None:
        self.job_id = job_id
        self.destination = destination
        self._uploads: set[asyncio.Task[Any]] = set()
        self.tenant = tenant
        self.uid = uid
        self.location = location
        self.session = session
        self.store = store
        self.server = server
        self.encoder_uids = encoder_uids
        self.created_at = datetime.now(UTC)
        self._monotonic = monotonic
        self.last_used = monotonic()
        self.pin_owner = f"{job_id}#{uuid.uuid4().hex[:12]}"
        self.transfers: dict[str, TransferRecord] = {}
        self.open_streams = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._ids = itertools.count(1)
        self._on_activity = on_activity
        # The store's clients are built while the encoder gets ready to read.
        self._connecting = asyncio.create_task(self._connect(), name=f"connect {job_id}")

    @property
    def readers(self) -> frozenset[int]:
        """The uids that may open this job's cache files."""
        return self.encoder_uids | {self.uid}

    def may_use(self, uid: int) -> bool:
        return uid == 0 or uid == self.uid or uid in self.encoder_uids

    def touch(self) -> None:
        self.last_used = self._monotonic()

    @property
    def busy(self) -> bool:
        """A fetch or a stream of this job is running."""
        return bool(self.open_streams or self._tasks or self._uploads)

    def idle_for(self) -> float:
        if self.busy:
            return 0.0
        return self._monotonic() - self.last_used

    def stream_opened(self) -> None:
        self.open_streams += 1

    def stream_closed(self) -> None:
        self.open_streams -= 1
        self.touch()
        self._on_activity()

    def upload_opened(self, task: asyncio.Task[Any]) -> None:
        """An upload runs in `task` (its API handler); `close` cancels it."""
        self._uploads.add(task)

    def upload_closed(self, task: asyncio.Task[Any]) -> None:
        self._uploads.discard(task)
        self.touch()
        self._on_activity()

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._on_activity()

    def new_record(self, mode: str, key: str, progress: Progress | None = None) -> TransferRecord:
        self._forget_old_records()
        record = TransferRecord(f"{mode[0]}{next(self._ids)}", mode, key, progress or Progress())
        self.transfers[record.transfer_id] = record
        return record

    def _forget_old_records(self) -> None:
        finished = [r for r in self.transfers.values() if r.finished.is_set()]
        for record in finished[: max(0, len(finished) - KEEP_FINISHED)]:
            del self.transfers[record.transfer_id]

    def start_fetch(self, key: str, auth: Authorised) -> TransferRecord:
        """Queue a download into the cache, owned by this job, of what this
        job's HEAD (`auth`) just allowed."""
        record = self.new_record("cache", key)
        task = asyncio.create_task(
            self._fetch(record, auth), name=f"fetch {self.job_id} {record.transfer_id}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return record

    async def _fetch(self, record: TransferRecord, auth: Authorised) -> None:
        record.move(TransferState.RUNNING)
        try:
            entry = await self.server.fetch(
                auth,
                tenant=self.tenant,
                owner=self.pin_owner,
                readers=self.readers,
                progress=record.progress,
            )
        except asyncio.CancelledError:
            record.error = ("Cancelled", "the job was deleted before the fetch finished")
            record.move(TransferState.CANCELLED)
            raise
        except (AuthError, TransferError) as exc:
            record.fail(exc)
            log.warning(
                "fetch failed",
                extra={"job_id": self.job_id, "tenant": self.tenant, "key": record.key,
                       "code": record.error[0] if record.error else None,
                       "request_id": record.error_ids.get("RequestId"),
                       "host_id": record.error_ids.get("HostId")},
            )  # fmt: skip
        except Exception as exc:
            record.fail(exc)
            log.exception("fetch crashed", extra={"job_id": self.job_id, "tenant": self.tenant})
        else:
            record.path = entry.path
            record.verified = tuple(entry.verified)
            record.move(TransferState.DONE)
        finally:
            self.touch()

    async def cancel_fetch(self, fetch_id: str) -> TransferRecord:
        """End fetch `fetch_id` as `cancelled` (a finished one stays as it is).
        Its wait on the cache entry ends; the download itself stops only if no
        other fetch waits for that entry (transfer/cache.py; docs/design.md,
        Fetch cancel)."""
        record = self.transfers.get(fetch_id)
        if record is None or record.mode != "cache":
            raise ApiError("NoSuchFetch", f"job {self.job_id!r} has no fetch {fetch_id!r}")
        if record.finished.is_set():
            return record
        name = f"fetch {self.job_id} {fetch_id}"
        task = next((t for t in self._tasks if t.get_name() == name), None)
        if task is not None:
            task.cancel()
            await asyncio.wait([task])  # not `await task`: our own cancellation must not be lost
        if not record.finished.is_set():  # cancelled before it ran
            record.move(TransferState.CANCELLED)
        if record.state is TransferState.CANCELLED:
            record.error = ("Cancelled", f"fetch {fetch_id} was cancelled (DELETE)")
            log.info("fetch cancelled", extra={"job_id": self.job_id, "tenant": self.tenant,
                                               "key": record.key})  # fmt: skip
        return record

    def document(self) -> dict[str, Any]:
        status = self.session.status()
        now = self._monotonic()
        return {
            "JobId": self.job_id,
            "TenantName": self.tenant,
            "EncoderUids": sorted(self.encoder_uids),
            "UriPath": self.location.uri,
            "Bucket": self.location.bucket,
            "Prefix": self.location.prefix,
            "Region": self.location.region,
            "RoleArn": status.role_arn,
            "RoleSessionName": status.session_name,
            "CredentialsExpireAt": _rfc3339(status.expires_at),
            "SessionDurationSeconds": status.granted_duration_seconds,
            "Refreshes": status.refreshes,
            "LastRefreshError": status.last_refresh_error,
            "Warnings": list(status.warnings),
            "SessionPolicy": status.policy,
            "CreatedAt": _rfc3339(self.created_at),
            "Transfers": [r.document(now) for r in self.transfers.values()],
            **({"Destination": self.destination.request.document()} if self.destination else {}),
        }

    async def _connect(self) -> None:
        try:
            await self.store.connect()
        except Exception:  # the first request will build it, and say what is wrong
            log.warning("could not prepare the S3 client", exc_info=True,
                        extra={"job_id": self.job_id, "tenant": self.tenant})  # fmt: skip

    async def close(self) -> None:
        self._connecting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._connecting
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        # Uploads abort their multipart uploads while the credentials still work.
        uploads = list(self._uploads)
        for task in uploads:
            task.cancel()
        if uploads:
            await asyncio.wait(uploads, timeout=30)
        self.server.release(self.pin_owner)
        await self.store.close()
        if self.destination is not None and self.destination.own_session:
            await self.destination.session.close()
        await self.session.close()


@dataclass(frozen=True)
class JobRequest:
    job_id: str
    tenant: str
    role_arn: str
    duration: int
    encoder_uids: frozenset[int] = frozenset()
    destination: DestinationRequest | None = None


_ENVELOPE = {"JobId": str, "TenantName": str, "Source": dict}
_OPTIONAL = {"EncoderUids": list, "Destination": dict}
_SOURCE_FIELDS = ("Provider", "UriPath", "RoleArnToAssume", "RoleSessionDurationInSeconds")


def parse_job_request(body: object, s3: S3Config) -> tuple[JobRequest, S3Location]:
    """Validate a POST /v1/jobs body in the order of docs/design.md (Socket API): envelope, JobId, Source, tenant."""
    if not isinstance(body, Mapping):
        raise ApiError("InvalidRequest", "the request body must be a JSON object")
    for name in body:
        if name not in _ENVELOPE and name not in _OPTIONAL:
            raise ApiError(
                "InvalidRequest",
                f"unknown field {name!r}; allowed: JobId, TenantName, Source, EncoderUids, "
                "Destination",
            )
    for name, kind in _ENVELOPE.items():
        if name not in body:
            raise ApiError("InvalidRequest", f"missing field {name!r}")
        if not isinstance(body[name], kind):
            expected = "an object" if kind is dict else "a string"
            raise ApiError("InvalidRequest", f"field {name!r} must be {expected}")
    source = body["Source"]
    for name in source:
        if name not in _SOURCE_FIELDS:
            raise ApiError(
                "InvalidRequest",
                f"unknown field 'Source.{name}'; allowed: {', '.join(_SOURCE_FIELDS)}",
            )
    for name in _SOURCE_FIELDS[:3]:
        if name not in source:
            raise ApiError("InvalidRequest", f"missing field 'Source.{name}'")
    if "Destination" in body:
        check_destination(body["Destination"])
    job_id = body["JobId"]
    if not JOB_ID.fullmatch(job_id):
        raise ApiError(
            "InvalidRequest", "JobId must be 1-128 characters of letters, digits, '.', '_', '-'"
        )
    if source["Provider"] != "AmazonS3":
        raise ApiError("InvalidProvider", 'Source.Provider must be "AmazonS3"')
    location = parse_uri_path(source["UriPath"], s3)
    role = parse_role_arn(source["RoleArnToAssume"])
    duration = validate_duration(source.get("RoleSessionDurationInSeconds"))
    destination = None
    if "Destination" in body:
        destination = parse_destination(
            body["Destination"], s3, source_role=role.arn, source_duration=duration
        )
    tenant = validate_tenant_name(body["TenantName"])
    encoders = parse_encoder_uids(body.get("EncoderUids", []))
    return JobRequest(job_id, tenant, role.arn, duration, encoders, destination), location


def parse_encoder_uids(value: object) -> frozenset[int]:
    """`EncoderUids`: 0..64 uids (integers 0..4294967294) besides the creator."""
    if not isinstance(value, list):
        raise ApiError("InvalidRequest", "field 'EncoderUids' must be a list of integer uids")
    if len(value) > MAX_ENCODER_UIDS:
        raise ApiError(
            "InvalidRequest",
            f"EncoderUids has {len(value)} entries; at most {MAX_ENCODER_UIDS} are allowed",
        )
    for uid in value:
        if isinstance(uid, bool) or not isinstance(uid, int) or not 0 <= uid <= MAX_UID:
            raise ApiError(
                "InvalidRequest",
                f"EncoderUids: {uid!r} is not a uid (an integer 0..{MAX_UID}); "
                "give numeric uids, e.g. from `id -u USER`",
            )
    return frozenset(value)


class JobRegistry:
    def __init__(
        self,
        *,
        sts: StsClient,
        s3_clients: S3Clients,
        s3_config: S3Config,
        server: ObjectServer,
        credential_observer: CredentialObserver,
        transfer_observer: TransferObserver,
        make_store: Callable[[S3Location, RoleSession], ObjectStore] | None = None,
        make_uploader: Callable[[S3Location, RoleSession], UploadClient] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        jobs_changed: Callable[[int], None] = lambda count: None,
    ) -> None:
        self._sts = sts
        self._jobs_changed = jobs_changed
        self._s3_clients = s3_clients
        self.s3_config = s3_config
        self.server = server
        self._credential_observer = credential_observer
        self._transfer_observer = transfer_observer
        self._make_store = make_store or self._real_store
        self._make_uploader = make_uploader or self._real_uploader
        self._monotonic = monotonic
        self._jobs: dict[str, Job] = {}
        self._reserved: set[str] = set()
        self._activity = asyncio.Event()  # set when a job's fetch or stream ends

    def _real_store(self, location: S3Location, session: RoleSession) -> ObjectStore:
        return S3ObjectStore(
            location, session, clients=self._s3_clients, observer=self._transfer_observer
        )

    def _real_uploader(self, location: S3Location, session: RoleSession) -> UploadClient:
        return S3Uploader(
            location, session, http=self._s3_clients.http, observer=self._transfer_observer
        )

    def __len__(self) -> int:
        return len(self._jobs)

    def all_jobs(self) -> list[Job]:
        return list(self._jobs.values())

    async def create(self, uid: int, body: object) -> Job:
        request, location = parse_job_request(body, self.s3_config)
        if request.job_id in self._jobs or request.job_id in self._reserved:
            raise ApiError(
                "JobExists",
                f"a job {request.job_id!r} is live; DELETE it first or use another JobId",
            )
        self._reserved.add(request.job_id)
        dest = request.destination
        shared = dest is not None and dest.role_arn == request.role_arn
        second: RoleSession | None = None
        try:
            session = await RoleSession.assume(
                self._sts,
                job_id=request.job_id,
                role_arn=request.role_arn,
                external_id=request.tenant,
                duration=request.duration,
                observer=self._credential_observer,
                # Least privilege (docs/design.md, Session policy): the job's
                # credentials read its folder only, whatever the role allows.
                policy=session_policy(
                    partition=location.partition,
                    bucket=location.bucket,
                    prefix=location.prefix,
                    region=location.region,
                    statements=write_statements(dest) if dest is not None and shared else (),
                ),
            )
            destination = None
            if dest is not None:
                try:
                    if not shared:
                        second = await RoleSession.assume(
                            self._sts,
                            job_id=f"{request.job_id}.outputs",
                            role_arn=dest.role_arn,
                            external_id=request.tenant,
                            duration=dest.duration,
                            observer=self._credential_observer,
                            policy=write_only_policy(dest),
                        )
                except BaseException:
                    await session.close()
                    raise
                dest_session = second or session
                destination = JobDestination(
                    dest, dest_session, self._make_uploader(dest.location, dest_session),
                    own_session=second is not None,
                )  # fmt: skip
            job = Job(
                job_id=request.job_id,
                tenant=request.tenant,
                uid=uid,
                location=location,
                session=session,
                store=self._make_store(location, session),
                server=self.server,
                monotonic=self._monotonic,
                encoder_uids=request.encoder_uids,
                on_activity=self._activity.set,
                destination=destination,
            )
            self._jobs[job.job_id] = job
            self._jobs_changed(len(self._jobs))
        finally:
            self._reserved.discard(request.job_id)
        log.info("job registered", extra={"job_id": job.job_id, "tenant": job.tenant})
        return job

    def get(self, uid: int, job_id: str) -> Job:
        """The job, if `uid` may use it (its creator, its encoders, root)."""
        job = self._jobs.get(job_id)
        if job is None or not job.may_use(uid):
            raise ApiError(
                "NoSuchJob", f"no job {job_id!r} for this caller; list them with GET /v1/jobs"
            )
        job.touch()
        return job

    def visible(self, uid: int) -> list[Job]:
        return [j for j in self._jobs.values() if j.may_use(uid)]

    async def delete(self, uid: int, job_id: str) -> None:
        job = self.get(uid, job_id)
        if uid not in (0, job.uid):
            raise ApiError(
                "Forbidden",
                f"job {job_id!r} was created by uid {job.uid}; an encoder uid may use it "
                "but only its creator (or root) may delete it",
            )
        del self._jobs[job_id]
        self._jobs_changed(len(self._jobs))
        await job.close()
        log.info("job deleted", extra={"job_id": job_id, "tenant": job.tenant})

    async def reap_idle(self, ttl: float) -> list[str]:
        """Close the jobs idle longer than `ttl`. Each await of a close lets a
        DELETE or a re-creation run, so every candidate is checked again right
        before: still this very object under its id, still idle (docs/design.md,
        Jobs). One job failing to close does not spare the others."""
        reaped: list[str] = []
        for job in [j for j in self._jobs.values() if j.idle_for() > ttl]:
            if self._jobs.get(job.job_id) is not job or job.idle_for() <= ttl:
                continue
            del self._jobs[job.job_id]
            self._jobs_changed(len(self._jobs))
            reaped.append(job.job_id)
            try:
                await job.close()
            except Exception:
                log.exception("idle job reaped; closing it failed",
                              extra={"job_id": job.job_id, "tenant": job.tenant})  # fmt: skip
            else:
                log.info("idle job reaped", extra={"job_id": job.job_id, "tenant": job.tenant})
        return reaped

    async def drain(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for every running fetch and stream to
        end; True if they all did."""
        try:
            async with asyncio.timeout(timeout):
                while any(j.busy for j in self._jobs.values()):
                    self._activity.clear()
                    await self._activity.wait()
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        jobs, self._jobs = list(self._jobs.values()), {}
        self._jobs_changed(0)
        for job in jobs:
            await job.close()
