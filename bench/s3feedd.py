"""`s3feed serve` for the benchmark: one fresh daemon (and empty cache) per run.

Design note. A run gets its own daemon so that its CPU (a /proc delta taken
around the measured request only: start-up, imports and the job's AssumeRole
are outside) and its peak RSS (VmHWM: the high-water mark since start) are
that run's alone, and so that cache mode always starts from an empty cache.
The daemon uses the project's own virtualenv, the store's daemon identity
(keys in its environment, as an instance profile would give them), default
[transfer] settings unless the caller overrides them, and a private socket
and cache directory under the run's work directory, removed on exit.

The harness itself is localaws/daemon.py, shared with the integration tests
and the demo; this module adds the benchmark's defaults.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from localaws.daemon import Daemon, Identity
from localaws.daemon import running as running_daemon

from .store import Store

__all__ = ["Daemon", "job_uri", "running"]

# Room for the largest benchmark object; the floor keeps a full disk from
# failing a run halfway.
CACHE = {"max_size": "64GiB", "min_free": "1GiB"}


def job_uri(store: Store, folder: str) -> str:
    """The AWS form a customer writes; the daemon's endpoint override maps it."""
    return f"https://{store.bucket}.s3.{store.region}.amazonaws.com/{folder}"


@contextlib.contextmanager
def running(store: Store, work: Path, transfer: dict[str, Any] | None = None) -> Iterator[Daemon]:
    identity = Identity(store.endpoint_url, store.region, store.daemon_key_id, store.daemon_secret)
    overrides = {"transfer": dict(transfer or {}), "cache": CACHE}
    with running_daemon(
        identity, work, overrides, log_level="WARNING", fresh=True, remove_cache=True
    ) as daemon:
        yield daemon
