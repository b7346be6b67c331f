"""daemon/systemd.py: sd_listen_fds and sd_notify against real sockets."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from s3feed.daemon import systemd


@pytest.fixture
def receiver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.settimeout(2)
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
    yield sock
    sock.close()


def test_notify_sends_one_datagram(receiver: socket.socket) -> None:
    assert systemd.notify("READY=1\nSTATUS=0 jobs")
    assert receiver.recv(4096) == b"READY=1\nSTATUS=0 jobs"


def test_notify_abstract_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"s3feed-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert systemd.notify("WATCHDOG=1")
        assert sock.recv(4096) == b"WATCHDOG=1"


def test_notify_without_systemd_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert not systemd.notify("READY=1")


def test_notify_to_a_vanished_socket_does_not_raise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))
    assert not systemd.notify("READY=1")


_CHILD = """
import json, socket
from s3feed.daemon import systemd
passed = systemd.listen_fds_with_names()
import os
print(json.dumps({
    "passed": [[name, s.fileno(), s.family == socket.AF_UNIX, s.getblocking(),
                os.get_inheritable(s.fileno())] for name, s in passed],
    "env_left": [k for k in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES") if k in os.environ],
}))
"""


def _run_with_fds(tmp_path: Path, count: int, names: str | None) -> dict[str, Any]:
    """Start a Python child with `count` listening sockets on fds 3.., as systemd does."""
    socks = []
    for i in range(count):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(tmp_path / f"s{i}"))
        sock.listen()
        socks.append(sock)

    def put_on_3() -> None:
        # Two steps, so that a source fd that is itself in 3.. is not overwritten.
        high = [os.dup(s.fileno()) for s in socks]
        for i, fd in enumerate(high):
            os.dup2(fd, systemd.SD_LISTEN_FDS_START + i)

    script = "import os; os.environ['LISTEN_PID'] = str(os.getpid())\n" + _CHILD
    try:
        out = subprocess.run(
            [sys.executable, "-c", script],
            env={
                **{k: v for k, v in os.environ.items() if not k.startswith("LISTEN_")},
                **({"LISTEN_FDNAMES": names} if names is not None else {}),
                "LISTEN_FDS": str(count),
            },
            pass_fds=range(3, 3 + count) if count else (),
            preexec_fn=put_on_3,
            capture_output=True,
            timeout=30,
            check=True,
        )
    finally:
        for sock in socks:
            sock.close()
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def test_listen_fds_with_names(tmp_path: Path) -> None:
    got = _run_with_fds(tmp_path, 2, "api:metrics")
    assert got["passed"] == [["api", 3, True, False, False], ["metrics", 4, True, False, False]]
    assert got["env_left"] == []


@pytest.mark.parametrize("names", [None, "", "a:b"])
def test_listen_fds_without_usable_names_says_unknown(tmp_path: Path, names: str | None) -> None:
    got = _run_with_fds(tmp_path, 1, names)
    assert got["passed"] == [["unknown", 3, True, False, False]]


def test_listen_fds_for_another_pid_are_not_ours(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LISTEN_PID", str(os.getpid() + 1))
    monkeypatch.setenv("LISTEN_FDS", "1")
    assert systemd.listen_fds() == []
    assert "LISTEN_FDS" not in os.environ


def test_listen_fds_none(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        monkeypatch.delenv(name, raising=False)
    assert systemd.listen_fds() == []


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        ("20000000", None, 10.0),
        ("20000000", "self", 10.0),
        ("20000000", "other", None),
        ("0", None, None),
        ("", None, None),
        ("x", None, None),
    ],
)
def test_watchdog_interval(
    monkeypatch: pytest.MonkeyPatch, usec: str, pid: str | None, expected: float | None
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", usec)
    if pid is None:
        monkeypatch.delenv("WATCHDOG_PID", raising=False)
    else:
        monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + (pid == "other")))
    assert systemd.watchdog_interval() == expected


def test_monotonic_usec_is_clock_monotonic() -> None:
    before = time.monotonic_ns() // 1000
    now = systemd.monotonic_usec()
    assert before <= now <= time.monotonic_ns() // 1000
