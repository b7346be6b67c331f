"""daemon/api/sockdiag.py: the owner of a loopback connection's client end, from the kernel.

Real sockets on 127.0.0.1 and ::1, a client started under another uid with
setpriv (the suite runs as root in CI, as the daemon's tests of isolation do).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

from s3feed.daemon.api import sockdiag

OTHER_UID = 4242  # no account needed: the kernel records the number


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        yield srv


def _owner(conn: socket.socket) -> int | None:
    return sockdiag.owner_uid(conn.getpeername(), conn.getsockname())


def test_a_connection_of_this_process_is_owned_by_our_uid(listener: socket.socket) -> None:
    with socket.create_connection(listener.getsockname()) as client:
        conn, _ = listener.accept()
        with conn:
            assert _owner(conn) == os.geteuid()
            # the server's own end is not the one asked about
            assert sockdiag.owner_uid(conn.getsockname(), client.getsockname()) == os.geteuid()


@pytest.mark.skipif(os.geteuid() != 0, reason="setpriv to another uid needs root (CI runs as root)")
def test_a_client_under_another_uid_is_reported_as_that_uid(listener: socket.socket) -> None:
    host, port = listener.getsockname()
    code = f"import socket,sys; s=socket.create_connection(({host!r},{port})); sys.stdin.read()"
    child = subprocess.Popen(
        [
            "setpriv",
            f"--reuid={OTHER_UID}",
            f"--regid={OTHER_UID}",
            "--clear-groups",
            sys.executable,
            "-c",
            code,
        ],
        stdin=subprocess.PIPE,
    )
    try:
        conn, _ = listener.accept()
        with conn:
            assert _owner(conn) == OTHER_UID
            assert child.stdin is not None
            child.stdin.close()  # the client exits: its end is gone, not root's
            assert child.wait(timeout=30) == 0
            assert _owner(conn) is None
    finally:
        child.kill()
        child.wait()


def test_a_closed_client_end_has_no_owner(listener: socket.socket) -> None:
    client = socket.create_connection(listener.getsockname())
    conn, _ = listener.accept()
    with conn:
        client.close()  # now FIN_WAIT2 or TIME_WAIT: reported with uid 0, never root
        assert conn.recv(1) == b""  # the close has reached our end
        assert _owner(conn) is None


def test_an_address_nobody_is_connected_from_has_no_owner(listener: socket.socket) -> None:
    assert sockdiag.owner_uid(("127.0.0.1", 1), listener.getsockname()) is None


def test_ipv6_loopback() -> None:
    with socket.socket(socket.AF_INET6) as srv:
        try:
            srv.bind(("::1", 0))
        except OSError as exc:  # a host (or container) without IPv6 on lo
            pytest.skip(f"no ::1 here: {exc.strerror}")
        srv.listen()
        with socket.create_connection(srv.getsockname()[:2]):
            conn, _ = srv.accept()
            with conn:
                assert (
                    sockdiag.owner_uid(conn.getpeername()[:2], conn.getsockname()[:2])
                    == os.geteuid()
                )


def _answer(
    state: int, uid: int, inode: int, kind: int = sockdiag.SOCK_DIAG_BY_FAMILY, seq: int = 7
) -> bytes:
    body = bytes([socket.AF_INET, state, 0, 0]) + bytes(48) + (0).to_bytes(4, "little") * 3
    body += uid.to_bytes(4, "little") + inode.to_bytes(4, "little")
    return sockdiag._NLMSGHDR.pack(16 + len(body), kind, 0, seq, 0) + body


@pytest.mark.parametrize(
    ("answer", "uid"),
    [
        (_answer(sockdiag.TCP_ESTABLISHED, 1000, 99), 1000),
        (_answer(6, 0, 0), None),  # TIME_WAIT: uid 0, inode 0
        (_answer(sockdiag.TCP_ESTABLISHED, 0, 0), None),  # an orphan
        (_answer(5, 1000, 99), None),  # FIN_WAIT2
        (_answer(sockdiag.TCP_ESTABLISHED, 1000, 99, kind=sockdiag.NLMSG_ERROR), None),
        (_answer(sockdiag.TCP_ESTABLISHED, 1000, 99, seq=8), None),  # not our question
        (b"", None),
        (_answer(sockdiag.TCP_ESTABLISHED, 1000, 99)[:40], None),
    ],
)
def test_parse_takes_only_a_live_socket_owner(answer: bytes, uid: int | None) -> None:
    assert sockdiag.parse(answer, seq=7) == uid


def test_the_request_names_the_client_end_first() -> None:
    raw = sockdiag.request(("127.0.0.1", 40000), ("127.0.0.1", 7468), seq=3)
    length, kind, flags, seq, _ = sockdiag._NLMSGHDR.unpack_from(raw)
    assert (length, kind, flags, seq) == (
        len(raw),
        sockdiag.SOCK_DIAG_BY_FAMILY,
        sockdiag.NLM_F_REQUEST,
        3,
    )
    assert raw[16] == socket.AF_INET and raw[17] == socket.IPPROTO_TCP
    assert raw[24:28] == (40000).to_bytes(2, "big") + (7468).to_bytes(2, "big")
    assert raw[28:32] == bytes([127, 0, 0, 1]) and raw[44:48] == bytes([127, 0, 0, 1])
    with pytest.raises(ValueError, match="address family"):
        sockdiag.request(("::1", 1), ("127.0.0.1", 2))
