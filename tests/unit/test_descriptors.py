"""daemon/api/descriptors.py: which descriptors a delivery takes, and its
writes into them (regular files from a thread of their own, pipes on the
loop) with the caller's errors answered 400, never 500."""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from s3feed.daemon.api.descriptors import FdWriter, check_output_fd
from s3feed.daemon.errors import ApiError, OutputClosed


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    r, w = os.pipe()
    yield r, w
    for fd in (r, w):
        with contextlib.suppress(OSError):  # the writer closed its end
            os.close(fd)


def _refused(fd: int, says: str) -> None:
    with pytest.raises(ApiError) as err:
        check_output_fd(fd)
    assert err.value.code == "InvalidRequest"
    assert says in err.value.message


def test_what_a_delivery_refuses_before_a_byte_moves(tmp_path: Path) -> None:
    fds = [
        (os.open(tmp_path, os.O_RDONLY), "a directory"),
        (os.open(tmp_path / "r", os.O_RDONLY | os.O_CREAT, 0o600), "not open for writing"),
        (os.open(tmp_path / "d", os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o600), "O_DIRECT"),
    ]
    sealed = os.memfd_create("t", os.MFD_ALLOW_SEALING)
    fcntl.fcntl(sealed, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE)
    fds.append((sealed, "sealed against writes"))
    try:
        for fd, says in fds:
            _refused(fd, says)
    finally:
        for fd, _ in fds:
            os.close(fd)


async def test_a_regular_file_is_written_in_order_off_the_loop(tmp_path: Path) -> None:
    fd = os.open(tmp_path / "out", os.O_WRONLY | os.O_CREAT, 0o600)
    writer = FdWriter(fd)
    await writer.check()
    threads: set[str] = set()
    real_write = os.write

    def spy(fd_: int, data: bytes) -> int:
        threads.add(threading.current_thread().name)
        return real_write(fd_, data)

    os.write = spy  # type: ignore[assignment]
    try:
        for i in range(50):
            await writer.write(bytes([i]) * 1000)
    finally:
        os.write = real_write
        writer.close()
    assert writer.written == 50_000
    assert threads and threading.current_thread().name not in threads
    assert (tmp_path / "out").read_bytes() == b"".join(bytes([i]) * 1000 for i in range(50))


async def test_a_pipe_is_written_on_the_loop_and_its_flags_put_back(
    pipe: tuple[int, int],
) -> None:
    r, w = pipe
    flags = fcntl.fcntl(w, fcntl.F_GETFL)
    writer = FdWriter(os.dup(w))
    await writer.check()
    assert fcntl.fcntl(w, fcntl.F_GETFL) & os.O_NONBLOCK  # the shared open file description
    await writer.write(b"x" * 1000)
    writer.close()
    assert fcntl.fcntl(w, fcntl.F_GETFL) == flags
    assert os.read(r, 2000) == b"x" * 1000


async def test_the_callers_write_errors_are_400_or_output_closed(pipe: tuple[int, int]) -> None:
    grow_sealed = os.memfd_create("t", os.MFD_ALLOW_SEALING)
    fcntl.fcntl(grow_sealed, fcntl.F_ADD_SEALS, fcntl.F_SEAL_GROW)  # size 0: no write fits
    unconnected = socket.socket(socket.AF_INET, socket.SOCK_DGRAM).detach()
    for fd, says in [(grow_sealed, "EPERM"), (unconnected, "EDESTADDRREQ")]:
        writer = FdWriter(fd)
        await writer.check()
        with pytest.raises(ApiError) as err:
            await writer.write(b"x")
        writer.close()
        assert (err.value.code, type(err.value)) == ("InvalidRequest", ApiError)
        assert says in err.value.message and "after 0 bytes" in err.value.message
    r, w = pipe
    os.close(r)
    writer = FdWriter(w)
    await writer.check()
    with pytest.raises(OutputClosed):
        await writer.write(b"x")
    writer.close()
