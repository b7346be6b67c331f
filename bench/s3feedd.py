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
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from localaws.daemon import S3FEED, Daemon, Identity
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
def running(
    store: Store,
    work: Path,
    transfer: dict[str, Any] | None = None,
    *,
    endpoint_url: str | None = None,
    ca_bundle: Path | None = None,
    api: dict[str, Any] | None = None,
) -> Iterator[Daemon]:
    """A fresh daemon; with `endpoint_url` and `ca_bundle`, S3 and STS over HTTPS
    trusting that CA (`[s3] ca_bundle`, `[sts] ca_bundle`: see `supports_ca_bundle`)."""
    identity = Identity(
        endpoint_url or store.endpoint_url, store.region, store.daemon_key_id, store.daemon_secret
    )
    overrides: dict[str, dict[str, Any]] = {"transfer": dict(transfer or {}), "cache": CACHE}
    if api:
        overrides["api"] = dict(api)  # e.g. http_listen for the URL rows
    if ca_bundle is not None:
        overrides["s3"] = {"ca_bundle": ca_bundle}
        overrides["sts"] = {"ca_bundle": ca_bundle}
    with running_daemon(
        identity, work, overrides, log_level="WARNING", fresh=True, remove_cache=True
    ) as daemon:
        yield daemon


def supports_ca_bundle(work: Path, ca: Path) -> bool:
    """Whether this s3feed takes `[s3] ca_bundle` and `[sts] ca_bundle`:
    `s3feed config check` of a configuration that sets them."""
    work.mkdir(parents=True, exist_ok=True)
    probe = work / "ca-probe.toml"
    probe.write_text(f'[s3]\nca_bundle = "{ca}"\n\n[sts]\nca_bundle = "{ca}"\n')
    out = subprocess.run(
        [str(S3FEED), "config", "check", str(probe)], capture_output=True, timeout=60
    )
    return out.returncode == 0
