"""Who owns the other end of a loopback TCP connection: the kernel's sock_diag.

Design note (docs/design.md, URLs for encoders). A TCP peer has no
SO_PEERCRED, but on loopback both ends of a connection are sockets of this
host, and the kernel knows who created the client's: NETLINK_SOCK_DIAG
answers an exact lookup of one 4-tuple with that socket's `idiag_uid` and
`idiag_inode` (`ss -e` prints the same fields). The listener asks once per
accepted connection, before it reads a byte, from the event loop: one
request on a fresh netlink socket, answered synchronously by the kernel
(a few microseconds; docs/design.md, Performance notes).

Only a live socket's owner counts: a lookup that finds nothing, or finds a
socket in TIME_WAIT, an orphan (inode 0, its owner gone, its uid reported
as 0) or anything not ESTABLISHED, answers None, and the caller refuses the
connection. The uid is the one the client's socket was created with; a
process that passes its socket to another uid still speaks as itself.

Written by hand (about 60 lines of struct packing) rather than with
pyroute2: that library's diag socket dumps every socket of a family, so a
lookup costs O(sockets on the host), and it imports in tens of milliseconds;
/proc/net/tcp has the uid too but is the same whole-table walk.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 0x1
NLMSG_ERROR = 2
TCP_ESTABLISHED = 1
INET_DIAG_NOCOOKIE = 0xFFFFFFFF

_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_REQ_HEAD = struct.Struct("=BBBxI")  # family, protocol, ext, pad, states
_PORTS = struct.Struct("!HH")  # sport, dport: network order
_TAIL = struct.Struct("=III")  # if, cookie[2]
_MSG = struct.Struct(
    "=BBBB4x32x12xIIIII"
)  # family, state, timer, retrans, id, expires, rqueue, wqueue, uid, inode
_ERRNO = struct.Struct("=i")


def _address(host: str) -> tuple[int, bytes]:
    ip = ipaddress.ip_address(host.split("%", 1)[0])
    if ip.version == 4:
        return socket.AF_INET, ip.packed + bytes(12)
    return socket.AF_INET6, ip.packed


def request(client: tuple[str, int], server: tuple[str, int], seq: int = 1) -> bytes:
    """The netlink message that asks for the socket bound to `client`, connected to `server`."""
    family, src = _address(client[0])
    family_server, dst = _address(server[0])
    if family != family_server:
        raise ValueError(f"{client} and {server} are not of one address family")
    body = (
        _REQ_HEAD.pack(family, socket.IPPROTO_TCP, 0, 1 << TCP_ESTABLISHED)
        + _PORTS.pack(client[1], server[1])
        + src
        + dst
        + _TAIL.pack(0, INET_DIAG_NOCOOKIE, INET_DIAG_NOCOOKIE)
    )
    return (
        _NLMSGHDR.pack(_NLMSGHDR.size + len(body), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, seq, 0)
        + body
    )


def parse(answer: bytes, seq: int = 1) -> int | None:
    """The owner's uid from the kernel's answer, or None when no live socket matched."""
    if len(answer) < _NLMSGHDR.size:
        return None
    _length, kind, _flags, answer_seq, _pid = _NLMSGHDR.unpack_from(answer)
    if answer_seq != seq or kind == NLMSG_ERROR or kind != SOCK_DIAG_BY_FAMILY:
        return None  # ENOENT (no such connection) arrives as an NLMSG_ERROR
    if len(answer) < _NLMSGHDR.size + _MSG.size:
        return None
    _family, state, _timer, _retrans, _expires, _rq, _wq, uid, inode = _MSG.unpack_from(
        answer, _NLMSGHDR.size
    )
    if state != TCP_ESTABLISHED or inode == 0:
        return None  # TIME_WAIT and orphans report uid 0: never take them for root
    return int(uid)


def owner_uid(client: tuple[str, int], server: tuple[str, int]) -> int | None:
    """The uid that created the socket at `client` connected to `server` on this host.

    `client` is the accepted connection's peer address, `server` its local
    address. None when the kernel knows no such live connection (the client
    already closed, or it is not on this host's loopback).
    """
    seq = int.from_bytes(os.urandom(4), "little") or 1
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG) as nl:
        nl.sendto(request(client, server, seq), (0, 0))
        nl.settimeout(1.0)  # the kernel answers at once; never hang the loop on it
        try:
            answer = nl.recv(8192)
        except OSError:
            return None
    return parse(answer, seq)
