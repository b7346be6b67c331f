"""The job registry: the live jobs by id, their creation, lookup, deletion and reaping.

What runs where: everything runs on the event loop, in the API handler's task
(create, get, delete) or the reaper's (reap_idle); the registry starts no task
of its own. A JobId is reserved before the AssumeRole call, so two concurrent
registrations of one id cannot both succeed; a failed AssumeRole frees it.
After the AssumeRole, S3 is asked once per bucket whether it answers in the
UriPath's region (daemon/jobs/regions.py); a wrong region fails the
registration with its sessions closed.
Who may see a job (docs/design.md, Roles and isolation): its creator, its
`EncoderUids` and root; everyone else gets NoSuchJob. Closing a job cancels
its fetches and waits for them (daemon/jobs/job.py), so delete, reap and close
return once the job's tasks are gone. `drain` waits on an event each job sets
when a fetch or stream ends, never on a timer.

With a state directory (daemon/jobs/state.py; docs/design.md, Restart and
upgrade) a registered job's definition is saved before its 201, removed
when it ends by DELETE or reaping, and kept when the daemon stops: `restore`
makes those jobs live again at the next start, their sessions assumed in
the background (auth/session.py `RoleSession.restore`). `close(shutting_down=True)`
ends what still runs with ShuttingDown.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from s3feed.auth import (
    CredentialObserver,
    RoleArn,
    RoleSession,
    SessionDuration,
    StsClient,
    job_policy,
    outputs_policy,
)
from s3feed.daemon.errors import ApiError
from s3feed.daemon.jobs.job import Job, JobDestination
from s3feed.daemon.jobs.regions import RegionCheck
from s3feed.daemon.jobs.request import JobRequest
from s3feed.daemon.jobs.state import JobState, SavedJob
from s3feed.transfer import ObjectServer, ObjectStore, S3Location, TransferObserver
from s3feed.transfer.s3 import S3Client, S3ObjectStore, S3Uploader
from s3feed.transfer.upload import UploadClient

log = logging.getLogger("s3feed.jobs")


class JobRegistry:
    def __init__(
        self,
        *,
        sts: StsClient,
        s3_clients: S3Client,
        server: ObjectServer,
        credential_observer: CredentialObserver,
        transfer_observer: TransferObserver,
        make_store: Callable[[S3Location, RoleSession], ObjectStore] | None = None,
        make_uploader: Callable[[S3Location, RoleSession], UploadClient] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        jobs_changed: Callable[[int], None] = lambda count: None,
        state: JobState | None = None,
    ) -> None:
        self._sts = sts
        self.state = state or JobState(None)
        self._jobs_changed = jobs_changed
        self._s3_clients = s3_clients
        self.server = server
        self._credential_observer = credential_observer
        self._transfer_observer = transfer_observer
        self._make_store = make_store or self._real_store
        self._make_uploader = make_uploader or self._real_uploader
        self._monotonic = monotonic
        self._jobs: dict[str, Job] = {}
        self._reserved: set[str] = set()
        self._regions = RegionCheck()  # one request per new bucket (daemon/jobs/regions.py)
        self._activity = asyncio.Event()  # set when a job's fetch or stream ends

    def _real_store(self, location: S3Location, session: RoleSession) -> ObjectStore:
        return S3ObjectStore(
            location, session, clients=self._s3_clients, observer=self._transfer_observer
        )

    def _real_uploader(self, location: S3Location, session: RoleSession) -> UploadClient:
        return S3Uploader(
            location, session, client=self._s3_clients, observer=self._transfer_observer
        )

    def __len__(self) -> int:
        return len(self._jobs)

    def all_jobs(self) -> list[Job]:
        return list(self._jobs.values())

    async def create(self, request: JobRequest, *, uid: int) -> Job:
        """Register the job `uid` asked for; `request` was parsed at the API
        (daemon/jobs/request.py) and is used as it is."""
        if request.job_id in self._jobs or request.job_id in self._reserved:
            raise ApiError(
                "JobExists",
                f"a job {request.job_id!r} is live; DELETE it first or use another JobId",
            )
        self._reserved.add(request.job_id)
        try:
            job = await self._open(request, uid=uid, restored=None)
            self._jobs[job.job_id] = job
            self._jobs_changed(len(self._jobs))
        finally:
            self._reserved.discard(request.job_id)
        log.info("job registered", extra={"job_id": job.job_id, "tenant": job.tenant})
        await self.state.save(request, uid=uid, created_at=job.created_at)
        return job

    async def restore(self, saved: list[SavedJob]) -> None:
        """Make the jobs a previous run saved live again (docs/design.md, Restart
        and upgrade). No STS call is awaited: each session assumes its role in
        the background, and a job whose role cannot be assumed stays listed
        with LastRefreshError."""
        for entry in saved:
            if entry.request.job_id in self._jobs:
                continue
            try:
                job = await self._open(entry.request, uid=entry.uid, restored=entry.created_at)
            except Exception as exc:  # one job must not stop the start
                log.error(
                    "job not restored",
                    extra={"job_id": entry.request.job_id, "error": f"{type(exc).__name__}: {exc}"},
                )
                continue
            self._jobs[job.job_id] = job
            log.info("job restored", extra={"job_id": job.job_id, "tenant": job.tenant})
        self._jobs_changed(len(self._jobs))

    async def _open(self, request: JobRequest, *, uid: int, restored: datetime | None) -> Job:
        """The job's sessions, store and uploader: assumed now, or (`restored`,
        its first CreatedAt) in the background."""
        location = request.location
        dest = request.destination
        shared = dest is not None and dest.role_arn == request.role_arn

        async def session_for(
            job_id: str, role: RoleArn, duration: SessionDuration, policy: dict[str, Any]
        ) -> RoleSession:
            if restored is not None:
                return RoleSession.restore(
                    self._sts,
                    job_id=job_id,
                    role_arn=role,
                    external_id=request.tenant,
                    duration=duration,
                    observer=self._credential_observer,
                    policy=policy,
                )
            return await RoleSession.assume(
                self._sts,
                job_id=job_id,
                role_arn=role,
                external_id=request.tenant,
                duration=duration,
                observer=self._credential_observer,
                policy=policy,
            )

        # Least privilege (docs/design.md, Session policy): the job's
        # credentials read its folder only, whatever the role allows.
        session = await session_for(
            request.job_id,
            request.role_arn,
            request.duration,
            job_policy(location, outputs=dest.outputs if dest is not None and shared else None),
        )
        destination = None
        if dest is not None:
            second: RoleSession | None = None
            try:
                if not shared:
                    second = await session_for(
                        f"{request.job_id}.outputs",
                        dest.role_arn,
                        dest.duration,
                        outputs_policy(dest.outputs),
                    )
            except BaseException:
                await session.close()
                raise
            dest_session = second or session
            destination = JobDestination(
                dest,
                dest_session,
                self._make_uploader(dest.location, dest_session),
                own_session=second is not None,
            )
        store = self._make_store(location, session)
        if restored is None:  # a registration: a bucket in another region is its 400
            try:
                await self._regions.check(store, location)
            except BaseException:
                await store.close()
                if destination is not None and destination.own_session:
                    await destination.session.close()
                await session.close()
                raise
        return Job(
            job_id=request.job_id,
            tenant=request.tenant,
            uid=uid,
            location=location,
            session=session,
            store=store,
            server=self.server,
            monotonic=self._monotonic,
            encoder_uids=request.encoder_uids,
            on_activity=self._activity.set,
            destination=destination,
            created_at=restored,
        )

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
        removed = self.state.remove(job_id)  # handed over now: no await before close
        await job.close()
        await removed
        log.info("job deleted", extra={"job_id": job_id, "tenant": job.tenant})

    async def reap_idle(self, ttl: float) -> list[str]:
        """Close the jobs idle longer than `ttl`. Each await of a close lets a
        DELETE or a re-creation run, so every candidate is checked again right
        before: still this very object under its id, still idle (docs/design.md,
        Socket API). One job failing to close does not spare the others."""
        reaped: list[str] = []
        for job in [j for j in self._jobs.values() if j.idle_for() > ttl]:
            if self._jobs.get(job.job_id) is not job or job.idle_for() <= ttl:
                continue
            del self._jobs[job.job_id]
            self._jobs_changed(len(self._jobs))
            reaped.append(job.job_id)
            removed = self.state.remove(job.job_id)
            try:
                await job.close()
                await removed
            except Exception:
                log.exception(
                    "idle job reaped; closing it failed",
                    extra={"job_id": job.job_id, "tenant": job.tenant},
                )
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

    async def close(self, *, shutting_down: bool = False) -> None:
        """End every job; their saved definitions stay for the next start.
        `shutting_down`: what still runs ends with ShuttingDown (503), not as
        if the job had been deleted (docs/design.md, Restart and upgrade)."""
        jobs, self._jobs = list(self._jobs.values()), {}
        self._jobs_changed(0)
        for job in jobs:
            await job.close(shutting_down=shutting_down)
        self.state.close()
