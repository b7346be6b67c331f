"""A systemd booted in systemd-nspawn, for the tests of the units and the package.

    with booted(tmp_path, binds={src: dst}, options=[...]) as m:
        m.ok("systemctl", "enable", "--now", "s3feed.socket")

The container is this machine's own /usr (`--volatile=yes`: a fresh tmpfs
root, /usr read-only unless `options` overlay it), with a private network
(loopback only), so nothing it does reaches beyond it. The test drives it from
outside with `nsenter` into its namespaces. Needs root and a kernel that lets
nspawn run; where it cannot, `booted` skips and says why.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

SYSTEM_PYTHON = "/usr/bin/python3"
DEADLINE = 60.0
_containers = itertools.count()

CLIENT = """
import http.client, socket, sys
class C(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(30)
        self.sock.connect("/run/s3feed/s3feed.sock")
try:
    c = C("localhost", timeout=30)
    body = sys.argv[3] if len(sys.argv) > 3 else None
    c.request(sys.argv[2] if len(sys.argv) > 2 else "GET", sys.argv[1], body=body)
    r = c.getresponse()
    print(r.status)
    print(r.read().decode())
except PermissionError:
    print("EACCES")
"""


def _nspawn() -> str:
    tool = shutil.which("systemd-nspawn")
    if tool is None:
        pytest.fail("systemd-nspawn not found: install the Debian package systemd-container")
    return tool


def _nspawn_can_run(tool: str, name: str) -> str | None:
    """None when a trivial container runs here, else nspawn's reason."""
    if os.geteuid() != 0:
        return f"systemd-nspawn needs root; the tests run as uid {os.geteuid()}"
    try:
        result = subprocess.run(
            [
                tool,
                "-D",
                "/",
                "--volatile=yes",
                "--register=no",
                "--keep-unit",
                "--private-network",
                "-q",
                "-M",
                name,
                "/bin/true",
            ],
            capture_output=True,
            text=True,
            timeout=DEADLINE,
        )
    except subprocess.TimeoutExpired:
        return "systemd-nspawn did not finish /bin/true within 60 s"
    if result.returncode != 0:
        return f"systemd-nspawn cannot run a container here: {result.stderr.strip()}"
    return None


class Machine:
    def __init__(self, proc: subprocess.Popen[bytes], leader: int, log: Path) -> None:
        self.proc, self.leader, self.log = proc, leader, log

    @property
    def root(self) -> Path:
        """The container's / as the host sees it (root may read and write there)."""
        return Path(f"/proc/{self.leader}/root")

    def run(self, *argv: str, timeout: float = DEADLINE) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["nsenter", "-t", str(self.leader), "-a", *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def ok(self, *argv: str, timeout: float = DEADLINE) -> str:
        result = self.run(*argv, timeout=timeout)
        assert result.returncode == 0, f"{argv}: {result.stdout}{result.stderr}"
        return result.stdout

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.ok("systemctl", "show", unit, *(f"--property={p}" for p in props))
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def as_user(
        self, user: str, *argv: str, timeout: float = DEADLINE
    ) -> subprocess.CompletedProcess[str]:
        """`argv` as `user`, with that user's groups (as a login would give them)."""
        return self.run(
            "setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", *argv, timeout=timeout
        )

    def get(self, path: str, user: str, method: str = "GET", body: str = "") -> tuple[str, str]:
        """`method` `path` on the API socket as `user` (with that user's groups)."""
        result = self.as_user(user, SYSTEM_PYTHON, "-c", CLIENT, path, method, body)
        assert result.returncode == 0, result.stderr + self.diagnose()
        status, _, body = result.stdout.partition("\n")
        return status, body

    def diagnose(self) -> str:
        status = self.run(
            "systemctl", "status", "--no-pager", "-l", "s3feed.service", "s3feed.socket"
        ).stdout
        status += self.run("systemctl", "list-jobs", "--no-pager").stdout
        return f"\n--- systemctl status ---\n{status}\n--- journal ---\n" + "\n".join(
            self.run(
                "journalctl", "--no-pager", "-n", "60", "-u", "s3feed.service"
            ).stdout.splitlines()
        )

    def journal(self, unit: str) -> str:
        return self.run("journalctl", "--no-pager", "-u", unit, "-o", "cat").stdout

    def wait(self, what: str, check: Callable[[], object], timeout: float = DEADLINE) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.2)


def _leader(nspawn_pid: int, deadline: float) -> int:
    """The container's init: the child of systemd-nspawn that runs systemd."""
    while time.monotonic() < deadline:
        try:
            children = Path(f"/proc/{nspawn_pid}/task/{nspawn_pid}/children").read_text().split()
        except FileNotFoundError:
            raise AssertionError("systemd-nspawn exited during boot") from None
        for child in children:
            try:
                if Path(f"/proc/{child}/comm").read_text().strip() == "systemd":
                    return int(child)
            except FileNotFoundError:
                continue
        time.sleep(0.1)
    raise AssertionError("no systemd in the container")


@contextlib.contextmanager
def booted(files: Path, binds: dict[Path, str], options: tuple[str, ...] = ()) -> Iterator[Machine]:
    """A container booted to basic.target with `binds` (host path: container path)
    read-only and nspawn's `options`; its console log is `files`/console.log."""
    tool = _nspawn()
    name = f"s3feed-test-{os.getpid()}-{next(_containers)}"
    if (reason := _nspawn_can_run(tool, name)) is not None:
        pytest.skip(reason)
    log = files / "console.log"
    argv = [
        tool,
        "-D",
        "/",
        "--volatile=yes",
        "--register=no",
        "--keep-unit",
        "--private-network",
        "--console=pipe",
        "-M",
        name,
        *options,
        *(f"--bind-ro={src}:{dst}" for src, dst in binds.items()),
        "--boot",
        "systemd.unit=basic.target",
    ]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True
        )
    try:
        leader = _leader(proc.pid, time.monotonic() + DEADLINE)
        m = Machine(proc, leader, log)
        # is-system-running --wait returns once boot is done ("degraded" is fine:
        # the host's own services may fail inside).
        m.wait(
            "the container to boot",
            lambda: (
                m.run("systemctl", "is-system-running", "--wait").stdout.strip()
                in ("running", "degraded")
            ),
        )
        yield m
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # nspawn asks the container's systemd to halt
            try:
                proc.wait(timeout=DEADLINE)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=DEADLINE)
        if sys.exc_info()[0] is not None:
            print(log.read_text(errors="replace")[-5000:], file=sys.stderr)
