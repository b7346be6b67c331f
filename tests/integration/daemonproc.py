"""`s3feed serve` as a real subprocess on the local AWS, for integration tests.

    with running_daemon(local_aws, tmp_path, transfer={"concurrency": 1}) as d:
        Client(str(d.socket)).create_job(...)

The harness is localaws/daemon.py, shared with the benchmark and the demo;
this adds the tests' defaults (1 MiB parts, a 2 GiB cache with no free-space
floor) and takes the daemon's keys from a `local_aws` or `seaweed` fixture.
Extra config keys per section override the defaults. It must exit 0 on SIGTERM.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from localaws.daemon import (
    S3FEED,
    Daemon,
    DaemonError,
    Identity,
    running,
    stop,
    wait_for_socket,
    write_config,
)
from localaws.processes import free_port

if TYPE_CHECKING:
    from conftest import LocalAws, Seaweed

__all__ = [
    "S3FEED",
    "Daemon",
    "DaemonError",
    "free_port",
    "identity",
    "running_daemon",
    "stop",
    "wait_for_socket",
    "write_config",
]

TEST_DEFAULTS: dict[str, dict[str, Any]] = {
    # One part per GET: fault tests pace and count GETs. A test of larger
    # cache-fetch ranges (docs/design.md, Transfers: Ranges) sets max_range.
    "transfer": {"part_size": "1MiB", "max_range": "1MiB"},
    "cache": {"max_size": "2GiB", "min_free": "0"},
}


def identity(store: LocalAws | Seaweed) -> Identity:
    """The daemon's own keys on a local server fixture."""
    return Identity(
        store.endpoint_url,
        store.region,
        store.daemon_access_key_id,
        store.daemon_secret_access_key,
    )


@contextlib.contextmanager
def running_daemon(
    local_aws: LocalAws | Seaweed, work: Path, **overrides: dict[str, Any]
) -> Iterator[Daemon]:
    sections = {name: dict(keys) for name, keys in TEST_DEFAULTS.items()}
    for name, keys in overrides.items():
        sections.setdefault(name, {}).update(keys)
    with running(identity(local_aws), work, sections) as daemon:
        yield daemon
