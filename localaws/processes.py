"""Processes and ports: spawning a server in its own process group, waiting for
it, finding what it listens on (/proc), and stopping the whole group."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .state import HOST, STOP_TIMEOUT_S, LocalAwsError, log


def run(cmd: list[str], **kw: Any) -> None:
    log("$ " + " ".join(str(c) for c in cmd))
    subprocess.run(cmd, check=True, **kw)


def port_open(port: int, host: str = HOST, timeout: float = 0.2) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        return s.connect_ex((host, port)) == 0


def free_port() -> int:
    """A port nobody listens on right now (the server may still lose a race)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((HOST, 0))
            port = int(s.getsockname()[1])
        if not port_open(port):
            return port
    raise LocalAwsError("no free port on 127.0.0.1")


def _listening_inodes(port: int | None = None) -> dict[int, int]:
    """inode -> port of TCP sockets in LISTEN state on IPv4/IPv6."""
    out: dict[int, int] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] != "0A":  # TCP_LISTEN
                continue
            p = int(fields[1].rsplit(":", 1)[1], 16)
            if port is None or p == port:
                out[int(fields[9])] = p
    return out


def pids_in_group(pgid: int) -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        # fields[0] = state, fields[2] = pgrp
        if int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(d.name))
    return pids


def listening_ports(pgid: int) -> set[int]:
    """TCP ports that processes of a process group listen on."""
    inodes = _listening_inodes()
    ports: set[int] = set()
    for pid in pids_in_group(pgid):
        fd_dir = Path(f"/proc/{pid}/fd")
        try:
            fds = list(fd_dir.iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inode = int(target[8:-1])
                if inode in inodes:
                    ports.add(inodes[inode])
    return ports


def alive(pid: int) -> bool:
    """True while pid exists and is not a zombie (reaping our own children)."""
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


# Popen objects of servers started by this process: kept so they are not
# garbage-collected while running (ResourceWarning) and so stop() reaps them.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def spawn(cmd: list[str], env: dict[str, str], log_path: Path, cwd: Path) -> int:
    with open(log_path, "ab") as log_fh:
        proc = subprocess.Popen(
            cmd,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log_fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own session and process group
        )
    _CHILDREN[proc.pid] = proc
    return proc.pid


def kill_group(pid: int, timeout: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM the process group led by pid, SIGKILL what is left at the deadline."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
        deadline = time.monotonic() + (timeout if sig == signal.SIGTERM else 5.0)
        while time.monotonic() < deadline:
            if not alive(pid) and not pids_in_group(pid):
                break
            time.sleep(0.05)
        else:
            if sig == signal.SIGTERM:
                log(f"pid {pid} ignored SIGTERM for {timeout:.0f}s; sending SIGKILL")
                continue
            raise LocalAwsError(f"process group {pid} survived SIGKILL")
        break
    proc = _CHILDREN.pop(pid, None)
    if proc is not None:
        proc.wait()


def wait_ports_closed(ports: list[int], timeout: float = STOP_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while any(port_open(p) for p in ports):
        if time.monotonic() > deadline:
            raise LocalAwsError(f"ports still open after stop: {ports}")
        time.sleep(0.05)


def wait_until(
    what: str, check: Callable[[], bool], pid: int, log_path: Path, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return
        if not alive(pid):
            raise ServerExited(f"{what}: server exited early; see {log_path}")
        if time.monotonic() > deadline:
            raise LocalAwsError(f"{what}: not ready after {timeout:.0f}s; see {log_path}")
        time.sleep(0.05)


class ServerExited(LocalAwsError):
    pass


def http_status(url: str, timeout: float = 1.0) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        exc.close()
        return int(exc.code)
    except (OSError, ValueError):
        return None


def free_port_pair(taken: set[int]) -> int:
    """A free port p with p + 10000 free too (SeaweedFS puts gRPC there)."""
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randrange(20000, 55000)
        pair = {port, port + 10000}
        if pair & taken or any(port_open(p) for p in pair):
            continue
        ok = True
        for p in pair:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                try:
                    s.bind((HOST, p))
                except OSError:
                    ok = False
        if ok:
            taken |= pair
            return port
    raise LocalAwsError("no free port pair on 127.0.0.1")
