"""systemd glue without libsystemd: socket activation and sd_notify.

Both protocols are a few lines (sd_listen_fds(3), sd_notify(3)); the
python-systemd binding would bring libsystemd and a C build for that.

Socket activation: systemd passes fds 3.. with LISTEN_PID (ours, so that a
child does not take them too), LISTEN_FDS (how many) and LISTEN_FDNAMES
(colon-separated, from the socket unit's FileDescriptorName=; "unknown" when
unset). The variables are removed once read, so nothing we spawn inherits them.

Notifications are datagrams to $NOTIFY_SOCKET (a path, or "@name" for the
abstract namespace). Sending never raises: a daemon must not die because its
supervisor's socket went away, so failures answer False.
"""

from __future__ import annotations

import os
import socket
import time

SD_LISTEN_FDS_START = 3
_ENV = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


def listen_fds_with_names(unset_environment: bool = True) -> list[tuple[str, socket.socket]]:
    """Sockets passed by systemd with their names, in fd order; [] when none."""
    try:
        pid_matches = os.environ.get("LISTEN_PID") == str(os.getpid())
        count = int(os.environ.get("LISTEN_FDS", "0")) if pid_matches else 0
    except ValueError:
        count = 0
    raw_names = os.environ.get("LISTEN_FDNAMES")
    names = raw_names.split(":") if raw_names else []
    if unset_environment:
        for name in _ENV:
            os.environ.pop(name, None)
    if len(names) != count:  # absent or malformed: sd_listen_fds_with_names says "unknown"
        names = ["unknown"] * count
    passed = []
    for name, fd in zip(
        names, range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + count), strict=True
    ):
        os.set_inheritable(fd, False)
        sock = socket.socket(fileno=fd)
        sock.setblocking(False)
        passed.append((name, sock))
    return passed


def listen_fds(unset_environment: bool = True) -> list[socket.socket]:
    """Sockets passed by systemd (LISTEN_PID/LISTEN_FDS), in order; [] when none."""
    return [sock for _, sock in listen_fds_with_names(unset_environment)]


def notify(message: str) -> bool:
    """Send `message` (e.g. "READY=1") to $NOTIFY_SOCKET; False when not under
    systemd or when the message could not be delivered."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    elif not address.startswith("/"):
        return False  # vsock and other schemes: not for a local daemon
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError:
        return False
    return True


def watchdog_interval() -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC), or None when off."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2 / 1_000_000


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, for RELOADING=1's MONOTONIC_USEC."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
