"""`s3feed serve` for the benchmark: one fresh daemon (and empty cache) per run.

Design note. A run gets its own daemon so that its CPU (a /proc delta taken
around the measured request only: start-up, imports and the job's AssumeRole
are outside) and its peak RSS (VmHWM: the high-water mark since start) are
that run's alone, and so that cache mode always starts from an empty cache.
The daemon uses the project's own virtualenv, the store's daemon identity
(keys in its environment, as an instance profile would give them), default
[transfer] settings unless the caller overrides them, and a private socket
and cache directory under the run's work directory, removed on exit.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from s3feed.daemon.client import Client

from .store import Store

REPO = Path(__file__).resolve().parent.parent
S3FEED = REPO / ".venv" / "bin" / "s3feed"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _toml_value(value: Any) -> str:
    return f'"{value}"' if isinstance(value, str | Path) else str(value)


@dataclass
class Daemon:
    process: subprocess.Popen[bytes]
    socket: Path
    metrics_port: int
    cache_dir: Path
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def metric(self, name: str) -> float | None:
        """One unlabelled sample from /metrics, or None."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            for line in resp.read().decode().splitlines():
                if line.startswith(name + " "):
                    return float(line.split()[1])
        return None


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
) -> Iterator[Daemon]:
    """A fresh daemon; with `endpoint_url` and `ca_bundle`, S3 and STS over HTTPS
    trusting that CA (`[s3] ca_bundle`, `[sts] ca_bundle`: see `supports_ca_bundle`)."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    port = free_port()
    sections: dict[str, dict[str, Any]] = {
        "api": {"socket": work / "s3feed.sock"},
        "metrics": {"listen": f"127.0.0.1:{port}"},
        "sts": {"region": store.region, "endpoint_url": endpoint_url or store.endpoint_url},
        "s3": {"endpoint_url": endpoint_url or store.endpoint_url},
        "transfer": dict(transfer or {}),
        "cache": {"dir": work / "cache", "max_size": "64GiB", "min_free": "1GiB"},
    }
    if ca_bundle is not None:
        sections["s3"]["ca_bundle"] = ca_bundle
        sections["sts"]["ca_bundle"] = ca_bundle
    lines = []
    for name, keys in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in keys.items()]
        lines.append("")
    config = work / "s3feed.toml"
    config.write_text("\n".join(lines))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3FEED_"))}
    env.update(
        AWS_ACCESS_KEY_ID=store.daemon_key_id,
        AWS_SECRET_ACCESS_KEY=store.daemon_secret,
        AWS_DEFAULT_REGION=store.region,
        AWS_CONFIG_FILE="/dev/null",
        AWS_SHARED_CREDENTIALS_FILE="/dev/null",
    )
    log = work / "s3feed.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(S3FEED), "serve", "--config", str(config), "--log-level", "WARNING"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
        )
    daemon = Daemon(process, work / "s3feed.sock", port, work / "cache", log)
    try:
        _wait_for_socket(daemon)
        yield daemon
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=40)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        shutil.rmtree(work / "cache", ignore_errors=True)


def supports_ca_bundle(work: Path, ca: Path) -> bool:
    """Whether this s3feed takes `[s3] ca_bundle` and `[sts] ca_bundle` (issue 14's
    HTTPS work): `s3feed config check` of a configuration that sets them."""
    work.mkdir(parents=True, exist_ok=True)
    probe = work / "ca-probe.toml"
    probe.write_text(f'[s3]\nca_bundle = "{ca}"\n\n[sts]\nca_bundle = "{ca}"\n')
    out = subprocess.run(
        [str(S3FEED), "config", "check", str(probe)], capture_output=True, timeout=60
    )
    return out.returncode == 0


def _wait_for_socket(daemon: Daemon, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if daemon.process.poll() is not None:
            raise RuntimeError(
                f"s3feed serve exited with {daemon.process.returncode}:\n"
                + daemon.log.read_text()[-3000:]
            )
        if daemon.socket.exists():
            with contextlib.suppress(OSError):  # an answer, not a connect: the daemon serves
                Client(str(daemon.socket), timeout=5).health()
                return
        time.sleep(0.05)
    raise RuntimeError(f"s3feed serve did not open {daemon.socket} in {timeout} s")
