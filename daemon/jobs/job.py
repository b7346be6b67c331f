"""A job: what an encoder registered, and everything the daemon holds for it.

Design note. A `Job` owns, for its whole life: the role session (auth/, with
its background refresher task), the object store bound to that session, the
transfer records of its fetches and streams, and the tasks that run its
fetches. `JobRegistry` (daemon/jobs/registry.py) owns the jobs. Deleting a job (DELETE, idle reaping,
shutdown) cancels the job's fetch tasks, closes its session (the refresher
stops, the credentials are dropped), closes its store and unpins its cache
entries; a failing fetch only fails its own record.

A job's close and the requests that found it are ordered (docs/design.md,
Roles and isolation: a job's end): `close` leaves `JobState.LIVE` before its
first await, so a request that looked the job up before the DELETE and
resumes after it (a fetch whose HEAD was in flight) can start nothing:
`start_fetch` raises Cancelled. Then close cancels the fetch tasks and waits
until every one has settled; only then does it take back the job's pins and
grants, so no fetch can pin or grant after it. A fetch task cancelled before
its first step still ends its record `cancelled`, so every `?wait=true`
waiter is answered. Streams run in the API
handler's task, not the job's: the job counts them (so an idle job with an
open stream is not reaped) and a stream finds its job closed the next time
it asks for credentials.

Who may do what
(docs/design.md, Roles and isolation): the uid that created a job and its
`EncoderUids` use it; only the creator (and root) deletes it; every other
uid sees NoSuchJob. The same uids may open the cache files the job fetched,
for as long as the job lives (transfer/objectserver.py grants and takes back).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import itertools
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from s3feed.auth import AuthError, RoleSession
from s3feed.daemon.errors import ApiError
from s3feed.daemon.jobs.destination import DestinationRequest
from s3feed.daemon.jobs.records import KEEP_FINISHED, TransferRecord, TransferState
from s3feed.transfer import (
    Authorised,
    Membership,
    ObjectServer,
    ObjectStore,
    Progress,
    S3Location,
    TransferError,
)
from s3feed.transfer.upload import UploadClient

log = logging.getLogger("s3feed.jobs")


@dataclass
class JobDestination:
    """Where the job's outputs go (docs/design.md, Outputs): the Source's
    session (`own_session` False) or a second one of the Destination's role."""

    request: DestinationRequest
    session: RoleSession
    uploader: UploadClient
    own_session: bool


class JobState(enum.Enum):
    LIVE = "live"
    CLOSING = "closing"  # close() runs: nothing new starts
    CLOSED = "closed"


_NEXT_STATES = {
    JobState.LIVE: {JobState.CLOSING},
    JobState.CLOSING: {JobState.CLOSED},
    JobState.CLOSED: set(),
}

# A record whose fetch the job's end stopped (before or while it ran).


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
        created_at: datetime | None = None,  # a restored job's first registration
    ) -> None:
        self.job_id = job_id
        self.state = JobState.LIVE
        self.destination = destination
        self._uploads: set[asyncio.Task[Any]] = set()
        self.tenant = tenant
        self.uid = uid
        self.location = location
        self.session = session
        self.store = store
        self.server = server
        self.encoder_uids = encoder_uids
        self.created_at = created_at or datetime.now(UTC)
        # Why a fetch still running ends (code, message), set when the job closes.
        self._ending = ("Cancelled", "the job was deleted before the fetch finished")
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

    def _move(self, state: JobState) -> None:
        if state not in _NEXT_STATES[self.state]:
            raise RuntimeError(f"job {self.job_id}: {self.state} -> {state}")
        self.state = state

    def check_live(self) -> None:
        """Cancelled once the job's close began: a request that found the job
        before its end and resumed after it starts nothing more."""
        if self.state is not JobState.LIVE:
            raise ApiError(
                "Cancelled",
                f"job {self.job_id!r} ended (deleted, reaped or the daemon stopping) "
                "while this request ran",
            )

    def touch(self) -> None:
        self.last_used = self._monotonic()

    @property
    def ending(self) -> tuple[str, str] | None:
        """(ShuttingDown, message) once the daemon closed the job at the end of
        its drain grace (what still runs answers that), else None."""
        return self._ending if self._ending[0] == "ShuttingDown" else None

    @property
    def busy(self) -> bool:
        """A fetch, a stream or an upload of this job is running."""
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

    def _task_done(self, record: TransferRecord, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not record.finished.is_set():  # cancelled before its first step
            self._end(record)
        self._on_activity()

    def _end(self, record: TransferRecord) -> None:
        """A fetch cut short by the job's end: Cancelled when the job was
        deleted, ShuttingDown (failed) after the drain grace."""
        record.error = self._ending
        record.move(
            TransferState.CANCELLED if self._ending[0] == "Cancelled" else TransferState.FAILED
        )

    def new_record(
        self, mode: str, key: str, progress: Progress | None = None, *, kind: str = ""
    ) -> TransferRecord:
        """`kind` names it in the log (docs/design.md, Logs); "" = by `mode`."""
        self._forget_old_records()
        record = TransferRecord(
            f"{mode[0]}{next(self._ids)}",
            mode,
            key,
            progress or Progress(),
            job_id=self.job_id,
            tenant=self.tenant,
            kind=kind,
            clock=self._monotonic,
        )
        self.transfers[record.transfer_id] = record
        return record

    def _forget_old_records(self) -> None:
        finished = [r for r in self.transfers.values() if r.finished.is_set()]
        for record in finished[: max(0, len(finished) - KEEP_FINISHED)]:
            del self.transfers[record.transfer_id]

    def start_fetch(
        self, key: str, auth: Authorised, transfer: Membership | None = None
    ) -> TransferRecord:
        """Queue a download into the cache, owned by this job, of what this
        job's HEAD (`auth`) just allowed. Cancelled when the job is ending:
        its close takes back pins only after its tasks settled, so none may
        start now. `transfer`: the fetch's join of the limiter, made before
        that HEAD; left when the fetch ends."""
        self.check_live()
        record = self.new_record("cache", key)
        task = asyncio.create_task(
            self._fetch(record, auth, transfer), name=f"fetch {self.job_id} {record.transfer_id}"
        )
        self._tasks.add(task)
        task.add_done_callback(functools.partial(self._task_done, record))
        if transfer is not None:  # also when the task is cancelled before it ran
            task.add_done_callback(lambda _: transfer.leave())
        return record

    async def _fetch(
        self, record: TransferRecord, auth: Authorised, transfer: Membership | None
    ) -> None:
        record.move(TransferState.RUNNING)
        try:
            entry = await self.server.fetch(
                auth,
                tenant=self.tenant,
                owner=self.pin_owner,
                readers=self.readers,
                progress=record.progress,
                transfer=transfer,
            )
        except asyncio.CancelledError:
            self._end(record)
            raise
        except (AuthError, TransferError) as exc:
            record.fail(exc)  # its log record says why (records.py)
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
        other fetch waits for that entry (transfer/cache/flight.py; docs/design.md,
        Socket API)."""
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
            log.warning(
                "could not prepare the S3 client",
                exc_info=True,
                extra={"job_id": self.job_id, "tenant": self.tenant},
            )

    async def close(self, *, shutting_down: bool = False) -> None:
        """End the job (once; a second call returns at once). See the design
        note for the order: nothing starts, fetches settle, then pins go.
        `shutting_down`: the daemon stops after its drain grace, and what still
        runs ends with ShuttingDown (docs/design.md, Restart and upgrade), not
        as a job deleted."""
        if self.state is not JobState.LIVE:
            return
        if shutting_down:
            self._ending = (
                "ShuttingDown",
                "the daemon is shutting down and its drain grace is over; retry once it is back",
            )
        self._move(JobState.CLOSING)  # before any await: nothing new starts from here
        try:
            self._connecting.cancel()
            for task in self._tasks:  # before any await: a cancelled fetch grants nothing
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._connecting
            while self._tasks:  # none is added any more (start_fetch checks)
                await asyncio.wait(list(self._tasks))
            # Uploads abort their multipart uploads while the credentials still work.
            uploads = list(self._uploads)
            for task in uploads:
                task.cancel()
            if uploads:
                await asyncio.wait(uploads, timeout=30)
        finally:
            # Every fetch task is done or cancelled (a cancelled one cannot
            # grant any more): the job's pins and its uids' access end here.
            self.server.release(self.pin_owner)
        await self.store.close()
        code, reason = self._ending if shutting_down else ("CredentialsExpired", None)
        if self.destination is not None and self.destination.own_session:
            await self.destination.session.close(code=code, reason=reason)
        await self.session.close(code=code, reason=reason)
        self._move(JobState.CLOSED)
