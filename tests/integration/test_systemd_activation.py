"""`s3feed serve` under systemd-socket-activate, with a fake NOTIFY_SOCKET.

systemd-socket-activate binds the API socket, waits for the first
connection, then execs the daemon with LISTEN_FDS=1 (fd 3, named "api").
The test is the service manager's other half: a datagram socket it reads as
NOTIFY_SOCKET, and WATCHDOG_USEC of one second so pings come every half
second. It expects READY=1, STATUS= and WATCHDOG=1, then after SIGHUP
RELOADING=1 (with this machine's CLOCK_MONOTONIC) and READY=1 again, then
after SIGTERM STOPPING=1 and exit 0, with the passed socket file left in
place. STS points at a closed local port and AWS keys are dummies: learning
the daemon's identity fails, which must not stop it from starting.
"""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

DEADLINE = 30.0  # seconds for any one expected event


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float = DEADLINE) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(str(self.path))
        self.sock = sock


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port  # nothing listens there once closed


class Notifications:
    """What the daemon sends to NOTIFY_SOCKET, read with deadlines."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.seen: list[dict[str, str]] = []

    def next(self, deadline: float) -> dict[str, str]:
        self.sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data = self.sock.recv(65536).decode()
        except TimeoutError:
            raise AssertionError(f"no notification in time; so far: {self.seen}") from None
        message = dict(line.split("=", 1) for line in data.splitlines() if line)
        self.seen.append(message)
        return message

    def wait_for(self, key: str, timeout: float = DEADLINE) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while True:
            message = self.next(deadline)
            if key in message:
                return message


@pytest.fixture
def activated(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path, Notifications]]:
    tool = shutil.which("systemd-socket-activate")
    if tool is None:
        pytest.fail("systemd-socket-activate not found: install the Debian package systemd")
    api = tmp_path / "api.sock"
    config = tmp_path / "s3feed.toml"
    config.write_text(
        f'[api]\nsocket = "{tmp_path}/not-used.sock"\ndrain_grace = 2\n'
        f'[metrics]\nlisten = ""\n'
        f'[sts]\nregion = "us-east-1"\nendpoint_url = "http://127.0.0.1:{closed_port()}"\n'
        f'[cache]\ndir = "{tmp_path}/cache"\n'
    )
    notifications = Notifications(tmp_path / "notify")
    env = {
        "NOTIFY_SOCKET": str(tmp_path / "notify"),
        "WATCHDOG_USEC": "1000000",
        "AWS_ACCESS_KEY_ID": "AKIDEXAMPLEDUMMY0000",
        "AWS_SECRET_ACCESS_KEY": "dummy-secret-not-used",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
    }
    argv = [tool, "-l", str(api), "--fdname=api"]
    argv += [f"-E{k}={v}" for k, v in env.items()]
    argv += [sys.executable, "-m", "s3feed.daemon", "serve", "--config", str(config)]
    with (tmp_path / "stderr").open("wb") as stderr:
        proc = subprocess.Popen(argv, stderr=stderr, start_new_session=True)
    try:
        deadline = time.monotonic() + DEADLINE
        while not api.exists():  # bound by systemd-socket-activate, not yet by the daemon
            assert proc.poll() is None, (tmp_path / "stderr").read_text()
            assert time.monotonic() < deadline, "systemd-socket-activate did not bind"
            time.sleep(0.05)
        yield proc, api, notifications
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=DEADLINE)
        notifications.sock.close()
        if proc.returncode != 0:
            print((tmp_path / "stderr").read_text(), file=sys.stderr)


def test_socket_activation_and_notify_protocol(
    activated: tuple[subprocess.Popen[bytes], Path, Notifications], tmp_path: Path
) -> None:
    proc, api, notes = activated

    # The first connection is what starts the daemon; it waits in the backlog.
    conn = UnixHTTPConnection(api)
    conn.request("GET", "/healthz")
    response = conn.getresponse()
    body = orjson.loads(response.read())
    conn.close()
    assert response.status == 200, body
    # STS is down: not fatal, the daemon serves, and /healthz says what is wrong.
    assert (body["Status"], body["Principal"]) == ("degraded", None)
    assert [p["Code"] for p in body["Problems"]] == ["StsUnavailable"]

    ready = notes.wait_for("READY")
    assert ready["READY"] == "1" and "jobs" in ready["STATUS"]
    pings = [notes.wait_for("WATCHDOG") for _ in range(3)]  # at ~0.5 s intervals
    assert all(p["WATCHDOG"] == "1" and "STATUS" in p for p in pings)

    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    proc.send_signal(signal.SIGHUP)
    reloading = notes.wait_for("RELOADING")
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert reloading["RELOADING"] == "1"
    assert before <= int(reloading["MONOTONIC_USEC"]) <= after
    assert notes.wait_for("READY")["READY"] == "1"

    # Still serving on the passed socket after the reload.
    conn = UnixHTTPConnection(api)
    conn.request("GET", "/healthz")
    assert conn.getresponse().status == 200
    conn.close()

    proc.send_signal(signal.SIGTERM)
    assert notes.wait_for("STOPPING")["STOPPING"] == "1"
    assert proc.wait(timeout=DEADLINE) == 0

    kinds = [
        next(k for k in ("READY", "RELOADING", "STOPPING", "WATCHDOG") if k in m)
        for m in notes.seen
        if set(m) & {"READY", "RELOADING", "STOPPING", "WATCHDOG"}
    ]
    first = {k: kinds.index(k) for k in ("READY", "WATCHDOG", "RELOADING", "STOPPING")}
    assert first["READY"] < first["WATCHDOG"] < first["RELOADING"] < first["STOPPING"], kinds
    assert kinds[first["RELOADING"] + 1] == "READY", kinds
    assert kinds[-1] == "STOPPING", kinds

    assert api.exists(), "the daemon removed a socket it was passed"
    assert not (tmp_path / "not-used.sock").exists(), "the daemon bound its own socket"
