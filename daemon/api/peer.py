"""Who is on the other end of the socket, and what they may do there.

The kernel tells: SO_PEERCRED gives the peer's pid, uid and gid as of
connect(2), SO_PEERGROUPS its supplementary groups at that moment. Neither
can be forged by the client. On the loopback listener of URLs the kernel's
owner of the client's socket is the caller's uid (sockdiag.py); only the uid
counts there, as that listener creates and deletes no jobs. Roles (docs/design.md, Roles and isolation):
with `[api] controller_groups` set, only root, the daemon's own uid and
members of those groups (primary or supplementary) may create and delete
jobs; a job's creator and its EncoderUids use it.
"""

from __future__ import annotations

import grp
import os
import pwd
import socket
import struct
from dataclasses import dataclass

from s3feed.daemon.api import sockdiag
from s3feed.daemon.errors import ApiError

SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)  # Linux >= 4.13; not in Python's socket
_MAX_GROUPS = 65536  # NGROUPS_MAX on Linux


@dataclass(frozen=True)
class Peer:
    pid: int
    uid: int
    gid: int
    groups: frozenset[int]  # supplementary and primary


UNKNOWN_CALLER = (
    "the caller's uid could not be learned for this connection: connect from a process on "
    "this host, over loopback, and keep the connection open until the answer"
)


def peer_at_accept(sock: socket.socket | None) -> Peer | None:
    """The caller, learned once per connection: SO_PEERCRED and SO_PEERGROUPS on
    the Unix socket; on the loopback listener the kernel's owner of the
    client's end (uid only: no job is created or deleted there). None when the
    kernel cannot say."""
    if sock is None:
        return None
    if sock.family == socket.AF_UNIX:
        return peer_of(sock)
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        try:
            uid = sockdiag.owner_uid(sock.getpeername()[:2], sock.getsockname()[:2])
        except OSError:  # the client is already gone
            return None
        return None if uid is None else Peer(pid=0, uid=uid, gid=-1, groups=frozenset())
    return None


def peer_of(sock: socket.socket) -> Peer:
    """The Unix socket's peer: pid, uid, gid and groups as of its connect(2)."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", creds)
    return Peer(pid, uid, gid, frozenset(_peer_groups(sock, uid, gid)) | {gid})


def _peer_groups(sock: socket.socket, uid: int, gid: int) -> list[int]:
    size = 64 * 4
    while size <= _MAX_GROUPS * 4:
        try:
            raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, size)
        except OSError as exc:
            if exc.errno == 34:  # ERANGE: the buffer was too small
                size *= 16
                continue
            break  # an older kernel: fall back to the uid's group list
        return list(struct.unpack(f"{len(raw) // 4}I", raw))
    try:
        return os.getgrouplist(pwd.getpwuid(uid).pw_name, gid)
    except KeyError:
        return []


class Controllers:
    """Who may create and delete jobs: `[api] controller_groups`."""

    def __init__(self, group_names: tuple[str, ...], daemon_uid: int | None = None) -> None:
        self.names = group_names
        self.gids = frozenset(resolve_group(name) for name in group_names)
        self.daemon_uid = os.getuid() if daemon_uid is None else daemon_uid

    def check(self, peer: Peer, action: str) -> None:
        if not self.names or peer.uid in (0, self.daemon_uid) or peer.groups & self.gids:
            return
        names = ", ".join(self.names)
        raise ApiError(
            "Forbidden",
            f"uid {peer.uid} may not {action}: [api] controller_groups allows only members of "
            f"{names} (and root); add the job agent's user to {self.names[0]} and start it again "
            "(group membership is read when a process logs in)",
        )


def resolve_group(name: str) -> int:
    """A group name (or a number) as a gid; unknown names raise ValueError."""
    if name.isdigit():
        return int(name)
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise ValueError(f"no group {name!r} on this host (getent group {name})") from None
