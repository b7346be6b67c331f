"""The caller's own descriptor as a delivery's output (docs/design.md, Socket API: deliveries).

Design note. What runs where: no call on the caller's descriptor runs on the
event loop, whatever its type. A regular file cannot be made non-blocking: a
write into a frozen or hung file system (fsfreeze, a hard NFS mount, a FUSE
server that never answers) blocks in the kernel however the descriptor was
opened, and so may its fstat. Nor can a pipe be trusted: O_NONBLOCK spares a
writer a full pipe, not the pipe's lock, which a reader holds while it
splice(2)s the pipe into a socket that does not drain; and the last close of
a pipe takes that lock too. So every call on the descriptor (the checks, each
write, the close) runs in a thread of this delivery's own, in the order
issued (docs/design.md, Socket API: deliveries): a hung file system or a
held pipe holds that thread and that delivery (whose request still counts in
its uid's `streams_per_uid`), never the loop nor another delivery. A pipe,
FIFO or socket is still O_NONBLOCK: its thread writes until EAGAIN, and the
loop waits for writability, so a reader that stops reading holds no thread.
It is a daemon thread, so one stuck in the kernel does not keep the daemon
from exiting; it is not asyncio's default pool, which a few hung writes
would fill. The hop per chunk costs ~0.05 CPU-s per GiB (Performance notes).

Who waits on whom: the delivery awaits each write before it asks the window
for the next chunk, so the window's count of bytes ahead of the reader stays
exact and the thread holds at most one chunk. A cancelled delivery stops
waiting; the write in flight ends (or hangs) in the thread, and the close
queued behind it runs after it.

Errors the descriptor causes are the caller's: EPIPE and ECONNRESET (the
reader left) are `OutputClosed` 409; the rest (EFBIG, EINVAL of an O_DIRECT
file, EPERM of a sealed memfd, ENOSPC of the caller's file system, ...) are
`InvalidRequest` 400 naming the errno and the bytes written; O_DIRECT and a
memfd sealed against writes are refused before any byte moves.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import queue
import stat
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from s3feed.daemon.errors import ApiError, OutputClosed

T = TypeVar("T")

log = logging.getLogger("s3feed.stream")

PIPE_SIZE = 1024 * 1024  # the encoder wakes once per MiB, not per 64 KiB
F_SEAL_FUTURE_WRITE = 0x0010  # Linux 5.1; not in the fcntl module


def check_output_fd(fd: int) -> int:
    """The descriptor's st_mode, if it is a regular file, or a pipe/FIFO/socket,
    open for writing, that a write can reach; else ApiError 400.

    The fd is the caller's own (it came over its connection), so the daemon
    writes only where the caller already could (docs/design.md, Socket API:
    deliveries). May block (fstat of a hung file system): run it off the loop."""
    mode = os.fstat(fd).st_mode
    if not (stat.S_ISREG(mode) or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)):
        kind = (
            "a directory" if stat.S_ISDIR(mode) else "neither a regular file, a pipe nor a socket"
        )
        raise ApiError(
            "InvalidRequest",
            f"the passed descriptor is {kind}; pass a file, pipe or socket open for writing",
        )
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    if flags & getattr(os, "O_PATH", 0) or (flags & os.O_ACCMODE) not in (os.O_WRONLY, os.O_RDWR):
        raise ApiError("InvalidRequest", "the passed descriptor is not open for writing")
    if flags & os.O_DIRECT:
        raise ApiError(
            "InvalidRequest",
            "the passed descriptor was opened with O_DIRECT, which takes only writes "
            "aligned to the device's blocks; open the file without O_DIRECT",
        )
    if stat.S_ISREG(mode):
        seals = 0
        with contextlib.suppress(OSError):  # EINVAL: not a memfd, so no seals
            seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
        if seals & (fcntl.F_SEAL_WRITE | F_SEAL_FUTURE_WRITE):
            raise ApiError(
                "InvalidRequest",
                "the passed descriptor is a memfd sealed against writes (F_SEAL_WRITE); "
                "pass one without that seal",
            )
    return mode


class _Thread:
    """Calls run in order in one daemon thread of their own; each answers a
    future of the loop that submitted it."""

    def __init__(self, name: str) -> None:
        self._loop = asyncio.get_running_loop()
        self._calls: queue.SimpleQueue[
            tuple[Callable[..., Any], tuple[Any, ...], asyncio.Future[Any]] | None
        ] = queue.SimpleQueue()
        threading.Thread(target=self._run, name=name, daemon=True).start()

    def submit(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        future: asyncio.Future[T] = self._loop.create_future()
        self._calls.put((fn, args, future))
        return future

    def stop(self) -> None:
        """The thread ends after the calls submitted so far (nothing waits for it)."""
        self._calls.put(None)

    def _run(self) -> None:
        while (call := self._calls.get()) is not None:
            fn, args, future = call
            try:
                outcome: tuple[Any, BaseException | None] = (fn(*args), None)
            except BaseException as exc:
                outcome = (None, exc)
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                self._loop.call_soon_threadsafe(_settle, future, *outcome)


def _settle(future: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if future.done():  # its delivery stopped waiting
        if exc is not None:
            log.debug("a delivery's file call failed after it ended: %r", exc)
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)


def _write_all(fd: int, chunk: bytes | memoryview) -> tuple[int, OSError | None]:
    """Write `chunk`; the bytes written, and the error that stopped it
    (BlockingIOError: a non-blocking descriptor is full)."""
    view = memoryview(chunk)
    done = 0
    while done < len(view):
        try:
            done += os.write(fd, view[done:])
        except OSError as exc:
            return done, exc
    return done, None


def _pollable(fd: int, fifo: bool) -> int:
    """Make a pipe, FIFO or socket non-blocking (a pipe also PIPE_SIZE large:
    resizing takes the pipe's lock); its own flags, to put back at close."""
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)
    if fifo:
        with contextlib.suppress(OSError):
            if fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ) < PIPE_SIZE:
                fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    return flags


def _put_flags(fd: int, flags: int) -> None:
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, fcntl.F_SETFL, flags)


def _close_quietly(fd: int) -> None:
    # The daemon's copy of the caller's descriptor: the caller's own copy
    # stays open and reports what its file system has to say.
    with contextlib.suppress(OSError):
        os.close(fd)


async def ready(loop: asyncio.AbstractEventLoop, fd: int, *, reading: bool) -> None:
    """Until `fd` is readable (or writable)."""
    fut: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not fut.done():
            fut.set_result(None)

    (loop.add_reader if reading else loop.add_writer)(fd, wake)
    try:
        await fut
    finally:
        (loop.remove_reader if reading else loop.remove_writer)(fd)


class FdWriter:
    """Writes a delivery's chunks into the caller's descriptor, which it owns
    from its creation on (`close` closes it). `check` first, then `write`."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.written = 0
        self._loop = asyncio.get_running_loop()
        self._thread: _Thread | None = _Thread(f"s3feed-deliver-fd{fd}")
        self._flags: int | None = None  # a pollable descriptor's own flags, put back at close

    async def check(self) -> None:
        """ApiError 400 unless the descriptor can take the bytes (check_output_fd)."""
        assert self._thread is not None
        try:
            mode = await self._thread.submit(check_output_fd, self.fd)
        except OSError as exc:
            raise self._failed(exc, "checking") from None
        if not stat.S_ISREG(mode):
            self._flags = await self._thread.submit(_pollable, self.fd, stat.S_ISFIFO(mode))

    async def write(self, chunk: bytes) -> None:
        assert self._thread is not None, "check() first; not after close()"
        view = memoryview(chunk)
        while view:
            n, exc = await self._thread.submit(_write_all, self.fd, view)
            self.written += n
            view = view[n:]
            if isinstance(exc, BlockingIOError):  # a pollable descriptor is full
                await ready(self._loop, self.fd, reading=False)
            elif exc is not None:
                raise self._failed(exc)

    def _failed(self, exc: OSError, doing: str = "writing") -> ApiError:
        if isinstance(exc, BrokenPipeError):
            return OutputClosed(f"the output's reader closed it after {self.written} bytes")
        if isinstance(exc, ConnectionResetError):
            return OutputClosed(f"the output's peer reset it after {self.written} bytes")
        name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
        return ApiError(
            "InvalidRequest",
            f"{doing} the passed descriptor failed after {self.written} bytes: {name} "
            f"({exc.strerror}); the descriptor cannot take the object's bytes, pass another",
        )

    def close(self) -> None:
        """Put a pipe's or socket's flags back, then close the descriptor after
        the writes queued before, in its thread, without waiting (its reader
        sees EOF once the caller's copy closes too)."""
        if self._thread is None:
            return
        if self._flags is not None:
            # F_SETFL takes no pipe lock: on the loop, so the flags are the
            # caller's again before the answer goes out.
            _put_flags(self.fd, self._flags)
        self._thread.submit(_close_quietly, self.fd)
        self._thread.stop()
        self._thread = None
