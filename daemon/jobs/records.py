"""Transfer records: one fetch into the cache or one stream, as a job document shows it.

A record's state is an enum whose transitions are checked (queued -> running ->
done | failed | cancelled); `finished` is set on entering a terminal state, so
a `?wait=true` caller awaits it. Records are created and moved on the event
loop by their job (daemon/jobs/job.py) and by the stream handler
(daemon/api/objects.py); nothing here blocks or runs a task.
"""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from s3feed.daemon.errors import describe, s3_ids
from s3feed.transfer import Progress

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
