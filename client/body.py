"""How the blocking client sends a PUT body (`Client.put`, `s3feed put`).

A sized body goes as it is: bytes in slices, a regular file by sendfile(2).
Anything else (a pipe, a socket, a tty) goes as HTTP/1.1 chunks; a pipe's
bytes by splice(2), so they never pass through this process.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import stat
from collections.abc import Callable
from typing import BinaryIO

from s3feed.client.calls import PIPE_SIZE, READ_CHUNK


def is_pipe(fd: int) -> bool:
    return stat.S_ISFIFO(os.fstat(fd).st_mode)


Body = bytes | bytearray | memoryview | int | BinaryIO  # int: an open file descriptor
Progress = Callable[[int], None]  # bytes sent so far


def regular_size(fd: int) -> int | None:
    """Bytes left in a regular file from its offset; None for pipes, sockets, ttys."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        return None
    return max(0, st.st_size - os.lseek(fd, 0, os.SEEK_CUR))


def send_body(sock: socket.socket, data: Body, size: int | None, progress: Progress) -> None:
    """Content-Length bodies go as they are (a regular file by sendfile);
    anything else chunked, a read at a time."""
    if isinstance(data, bytes | bytearray | memoryview):
        view = memoryview(data)
        for start in range(0, len(view), READ_CHUNK):
            sock.sendall(view[start : start + READ_CHUNK])
            progress(min(len(view), start + READ_CHUNK))
        return
    fd = data if isinstance(data, int) else data.fileno()
    sent = 0
    if size is not None:
        offset = os.lseek(fd, 0, os.SEEK_CUR)
        while sent < size:
            n = os.sendfile(sock.fileno(), fd, offset + sent, min(size - sent, 8 * READ_CHUNK))
            if n == 0:
                raise OSError(f"the file ended after {sent} of {size} bytes")
            sent += n
            progress(sent)
        return
    if is_pipe(fd) and sock.gettimeout() is None:
        sent = _splice_chunks(fd, sock, progress)
    while chunk := os.read(fd, READ_CHUNK):
        sock.sendmsg([b"%x\r\n" % len(chunk), chunk, b"\r\n"])
        sent += len(chunk)
        progress(sent)
    sock.sendall(b"0\r\n\r\n")


def _splice_chunks(fd: int, sock: socket.socket, progress: Progress) -> int:
    """A pipe's bytes into the socket as HTTP chunks without passing through
    this process: splice(2) moves up to a pipe's worth into a pipe of ours
    (which says how many: the chunk's size line), then on into the socket.
    `ffmpeg | s3feed put JOB KEY -` read and written by Python cost the CLI
    much CPU (docs/design.md, Performance notes: Pipes). Returns the bytes
    sent; what it could not splice (an error before the first byte) is left
    to the caller's read loop."""
    sent = 0
    to_socket = True
    r, w = os.pipe()
    try:
        with contextlib.suppress(OSError):
            fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        while True:
            try:
                n = os.splice(fd, w, PIPE_SIZE)
            except OSError:
                if sent:
                    raise
                return 0  # splice refused this pair: read and send instead
            if n == 0:
                return sent
            sock.sendall(b"%x\r\n" % n)
            left = n
            while left:
                moved = 0
                if to_socket:
                    try:
                        moved = os.splice(r, sock.fileno(), left)
                    except OSError as e:
                        if e.errno not in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOSYS):
                            raise
                        to_socket = False  # a kernel that cannot splice into this socket
                if not moved:
                    data = os.read(r, left)
                    sock.sendall(data)
                    moved = len(data)
                left -= moved
            sock.sendall(b"\r\n")
            sent += n
            progress(sent)
    finally:
        os.close(r)
        os.close(w)
