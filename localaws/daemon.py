"""`s3feed serve` as a real subprocess on a local store: the one harness the
integration tests (tests/integration/daemonproc.py), the benchmark
(bench/s3feedd.py) and the demo start it with.

    identity = Identity(endpoint_url, region, daemon_key_id, daemon_secret)
    with running(identity, work, {"transfer": {"concurrency": 1}}) as d:
        Client(str(d.socket)).create_job(...)

The daemon runs with its own IAM keys in its environment (as an instance
profile would give them; nothing else of the caller's AWS_* or ~/.aws), every
endpoint pointed at the local store, its socket, config, log and cache under
`work`. It is ready when it answers GET /v1/health on the socket (not when
the socket merely accepts a connect), and it must exit 0 on SIGTERM.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from s3feed.client import Client

from .processes import free_port

# The console script next to the interpreter running us: the project's .venv.
S3FEED = str(Path(sys.executable).parent / "s3feed")
START_TIMEOUT_S = 60.0
STOP_GRACE_S = 40.0  # above the daemon's default drain grace

Sections = dict[str, dict[str, Any]]


class DaemonError(AssertionError):
    """The daemon did not start, died, or did not exit 0 on SIGTERM.

    An AssertionError so that pytest shows it as a failed check, with the log tail.
    """


@dataclass(frozen=True)
class Identity:
    """Where the store is and the daemon's own keys there."""

    endpoint_url: str
    region: str
    access_key_id: str
    secret_access_key: str


@dataclass
class Daemon:
    process: subprocess.Popen[bytes]
    socket: Path
    metrics_port: int
    log: Path
    cache_dir: Path
    config: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def instance(self) -> str:
        """Its metrics address, as Prometheus labels it."""
        return f"127.0.0.1:{self.metrics_port}"

    @property
    def env(self) -> dict[str, str]:
        """Environment for CLI subprocesses talking to this daemon."""
        return {**os.environ, "S3FEED_SOCKET": str(self.socket)}

    def client(self, timeout: float = 30) -> Client:
        return Client(str(self.socket), timeout=timeout)

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""

    def metric(self, name: str) -> float | None:
        """One unlabelled sample from /metrics, or None."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            for line in resp.read().decode().splitlines():
                if line.startswith(name + " "):
                    return float(line.split()[1])
        return None


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | Path):
        return f'"{value}"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return str(value)


def write_config(path: Path, sections: Mapping[str, Mapping[str, Any]]) -> None:
    lines = []
    for name, keys in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{key} = {_toml(value)}" for key, value in keys.items()]
        lines.append("")
    path.write_text("\n".join(lines))


def merge(base: Sections, overrides: Mapping[str, Mapping[str, Any]]) -> Sections:
    """`base` with each override section's keys laid over it (a new dict)."""
    out = {name: dict(keys) for name, keys in base.items()}
    for name, keys in overrides.items():
        out.setdefault(name, {}).update(keys)
    return out


def base_sections(identity: Identity, work: Path, metrics_port: int) -> Sections:
    """Socket, metrics, STS and S3 endpoints, and cache directory; nothing else."""
    return {
        "api": {"socket": work / "s3feed.sock"},
        "metrics": {"listen": f"127.0.0.1:{metrics_port}"},
        "sts": {"region": identity.region, "endpoint_url": identity.endpoint_url},
        "s3": {"endpoint_url": identity.endpoint_url},
        "cache": {"dir": work / "cache"},
    }


def daemon_env(identity: Identity) -> dict[str, str]:
    """The caller's environment without its AWS and s3feed settings, plus the
    daemon's own keys."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3FEED_"))}
    env.update(
        AWS_ACCESS_KEY_ID=identity.access_key_id,
        AWS_SECRET_ACCESS_KEY=identity.secret_access_key,
        AWS_DEFAULT_REGION=identity.region,
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
    )
    return env


def start(
    config: Path,
    sections: Sections,
    env: Mapping[str, str],
    log: Path,
    *,
    log_level: str | None = None,
    timeout: float = START_TIMEOUT_S,
) -> Daemon:
    """Write `sections` to `config`, start `s3feed serve` (output appended to
    `log`) and wait until it answers; stops it again if it does not."""
    write_config(config, sections)
    cmd = [S3FEED, "serve", "--config", str(config)]
    if log_level is not None:
        cmd += ["--log-level", log_level]
    with log.open("ab") as out:
        process = subprocess.Popen(
            cmd, env=dict(env), stdin=subprocess.DEVNULL, stdout=out, stderr=out
        )
    metrics_port = int(str(sections["metrics"]["listen"]).rsplit(":", 1)[1])
    daemon = Daemon(
        process,
        Path(sections["api"]["socket"]),
        metrics_port,
        log,
        Path(sections["cache"]["dir"]),
        config,
    )
    try:
        wait_for_socket(daemon, timeout)
    except BaseException:
        stop(process, grace=10)
        raise
    return daemon


def wait_for_socket(daemon: Daemon, timeout: float = START_TIMEOUT_S) -> None:
    """Until the daemon answers GET /v1/health on its socket (an answer, not a
    connect: the daemon serves); DaemonError if it exits or the time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if daemon.process.poll() is not None:
            raise DaemonError(
                f"s3feed serve exited with {daemon.process.returncode}:\n{daemon.log_tail()}"
            )
        if daemon.socket.exists():
            with contextlib.suppress(OSError):
                daemon.client(timeout=5).health()
                return
        time.sleep(0.05)  # polling a process we do not control: no event to await
    raise DaemonError(f"s3feed serve did not answer on {daemon.socket} in {timeout} s")


def stop(process: subprocess.Popen[bytes], grace: float = STOP_GRACE_S) -> int:
    """SIGTERM, then SIGKILL after `grace` seconds; the exit code (negative: a signal)."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    return process.returncode


@contextlib.contextmanager
def running(
    identity: Identity,
    work: Path,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    log_level: str | None = None,
    fresh: bool = False,
    remove_cache: bool = False,
    check_exit: bool = True,
) -> Iterator[Daemon]:
    """A daemon for the `with` block: config `base_sections` + `overrides`.

    fresh: empty `work` first. remove_cache: delete the cache directory
    afterwards. check_exit: DaemonError unless SIGTERM ended it with exit 0.
    """
    if fresh:
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    sections = merge(base_sections(identity, work, free_port()), overrides or {})
    log = work / "s3feed.log"
    daemon = start(work / "s3feed.toml", sections, daemon_env(identity), log, log_level=log_level)
    try:
        yield daemon
    finally:
        code = stop(daemon.process)
        if remove_cache:
            shutil.rmtree(daemon.cache_dir, ignore_errors=True)
        if check_exit and code != 0:
            raise DaemonError(f"s3feed serve exited with {code}:\n{daemon.log_tail()}")
