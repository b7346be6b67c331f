"""`s3feed serve` as a real subprocess on the local AWS, for integration tests.

    with running_daemon(local_aws, tmp_path, transfer={"concurrency": 1}) as d:
        Client(str(d.socket)).create_job(...)

The daemon runs with its own IAM keys (as with an instance profile) and
every endpoint pointed at the local AWS; extra config keys per section
override the defaults below. It must exit 0 on SIGTERM.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from s3feed.daemon.client import Client

if TYPE_CHECKING:
    from conftest import LocalAws

S3FEED = str(Path(sys.executable).parent / "s3feed")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Daemon:
    process: subprocess.Popen[bytes]
    socket: Path
    metrics_port: int
    log: Path
    cache_dir: Path
    config: Path

    @property
    def instance(self) -> str:
        return f"127.0.0.1:{self.metrics_port}"

    @property
    def env(self) -> dict[str, str]:
        """Environment for CLI subprocesses talking to this daemon."""
        return {**os.environ, "S3FEED_SOCKET": str(self.socket)}


def _toml(value: Any) -> str:
    return f'"{value}"' if isinstance(value, str | Path) else str(value)


def write_config(path: Path, sections: dict[str, dict[str, Any]]) -> None:
    lines = []
    for name, keys in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{key} = {_toml(value)}" for key, value in keys.items()]
        lines.append("")
    path.write_text("\n".join(lines))


def wait_for_socket(daemon: Daemon, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert daemon.process.poll() is None, (
            f"s3feed serve exited with {daemon.process.returncode}:\n{daemon.log.read_text()[-3000:]}"
        )
        if daemon.socket.exists():
            with contextlib.suppress(OSError):  # an answer, not a connect: the daemon serves
                Client(str(daemon.socket), timeout=5).health()
                return
        time.sleep(0.05)
    raise AssertionError(f"s3feed serve did not open {daemon.socket} in {timeout} s")


def stop(process: subprocess.Popen[bytes], grace: float = 40) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    return process.returncode


@contextlib.contextmanager
def running_daemon(
    local_aws: LocalAws, work: Path, **overrides: dict[str, Any]
) -> Iterator[Daemon]:
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    sections: dict[str, dict[str, Any]] = {
        "api": {"socket": work / "s3feed.sock"},
        "metrics": {"listen": f"127.0.0.1:{port}"},
        "sts": {"region": local_aws.region, "endpoint_url": local_aws.endpoint_url},
        "s3": {"endpoint_url": local_aws.endpoint_url},
        "transfer": {"part_size": "1MiB"},
        "cache": {"dir": work / "cache", "max_size": "2GiB", "min_free": "0"},
    }
    for name, keys in overrides.items():
        sections.setdefault(name, {}).update(keys)
    config = work / "s3feed.toml"
    write_config(config, sections)
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": local_aws.daemon_access_key_id,
        "AWS_SECRET_ACCESS_KEY": local_aws.daemon_secret_access_key,
        "AWS_DEFAULT_REGION": local_aws.region,
    }
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "S3FEED_SOCKET"):
        env.pop(name, None)
    log = work / "s3feed.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [S3FEED, "serve", "--config", str(config)], env=env, stdout=out, stderr=out
        )
    daemon = Daemon(process, Path(sections["api"]["socket"]), port, log, work / "cache", config)
    try:
        wait_for_socket(daemon)
        yield daemon
    finally:
        code = stop(process)
        assert code == 0, f"s3feed serve exited with {code}:\n{log.read_text()[-3000:]}"
