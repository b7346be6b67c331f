"""Transfer records: one fetch into the cache, stream or upload, as a job document shows it.

A record's state is an enum whose transitions are checked (queued -> running ->
done | failed | cancelled); `finished` is set on entering a terminal state, so
a `?wait=true` caller awaits it. Records are created and moved on the event
loop by their job (daemon/jobs/job.py) and by the API's handlers
(daemon/api/objects.py, outputs.py); nothing here blocks or runs a task.

Entering a terminal state is also where the transfer's log record is written
(docs/design.md, Logs): every kind ends through `move`, whoever ends it (the
handler, DELETE, the job's close at shutdown), so each transfer logs exactly
once, with the bytes and the source its transfer reported.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from s3feed.daemon.errors import describe, s3_ids
from s3feed.transfer import Progress

KEEP_FINISHED = 50  # finished transfer records kept per job for GET /v1/jobs/{id}

transfer_log = logging.getLogger("s3feed.transfer")

# The log record's `kind` of a record that names none: by its mode.
_KIND_OF_MODE = {"cache": "fetch", "stream": "stream", "upload": "upload"}
KINDS = ("fetch", "stream", "delivery", "url", "upload")


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
    """One fetch into the cache (mode "cache"), stream (mode "stream") or upload."""

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
    job_id: str = ""
    tenant: str = ""
    # fetch, stream, delivery, url or upload (docs/design.md, Logs); "" = by mode.
    kind: str = ""
    # Where the bytes came from: cache, s3 or mixed, as the transfer reported
    # it; None for a fetch = from its progress (what was on disk already).
    source: str | None = None
    clock: Callable[[], float] = field(default=time.monotonic, repr=False, compare=False)
    started: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.kind = self.kind or _KIND_OF_MODE.get(self.mode, self.mode)
        if self.kind not in KINDS:
            raise ValueError(f"unknown transfer kind {self.kind!r}")
        self.started = self.clock()

    def move(self, state: TransferState) -> None:
        if state not in _NEXT_STATES[self.state]:
            raise RuntimeError(f"transfer {self.transfer_id}: {self.state} -> {state}")
        self.state = state
        if state in (TransferState.DONE, TransferState.FAILED, TransferState.CANCELLED):
            self.finished.set()
            log_ended(self)

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


def _source_of(record: TransferRecord) -> str:
    if record.source is not None:
        return record.source
    p = record.progress
    if p.size and p.resumed >= p.size:
        return "cache"  # the entry was complete: no byte came from S3
    return "mixed" if p.resumed else "s3"


def log_ended(record: TransferRecord) -> None:
    """The one log record of an ended transfer (docs/design.md, Logs)."""
    outcome = record.state.value
    fields: dict[str, Any] = {
        "event": "transfer",
        "job_id": record.job_id,
        "tenant": record.tenant,
        "transfer_id": record.transfer_id,
        "key": record.key,
        "kind": record.kind,
        "outcome": outcome,
        "bytes": record.progress.bytes_done,
        "seconds": round(max(0.0, record.clock() - record.started), 3),
        "source": _source_of(record),
        "request_id": record.error_ids.get("RequestId"),
        "host_id": record.error_ids.get("HostId"),
    }
    if outcome != "done":
        fields["code"] = record.error[0] if record.error else "Cancelled"
    if outcome == "failed" and record.error:
        fields["error"] = record.error[1]
    transfer_log.info("%s %s", record.kind, outcome, extra=fields)
