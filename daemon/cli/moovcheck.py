"""`s3feed cat` noticing an MP4/MOV whose index (`moov`) comes after its media
(`mdat`) as the bytes pass (docs/design.md, CLI): a reader of a pipe cannot
seek back to the media once it has found the index, and ffmpeg then writes
no frame and exits 0. The bytes flow on unchanged; only a warning is added.

Design note. The object's bytes reach this process through a pipe of its own
(the daemon delivers into it, or the stream is spliced into it) and `pump`
moves them on to stdout with `os.splice` when stdout is a pipe, so they are
never copied into Python (to a socket or terminal they are copied through a
1 MiB read) - except the few top-level box headers `MoovCheck` asks
for (8 or 16 bytes each, usually three boxes in: `ftyp`, maybe `free`, then
`moov` or `mdat`). Once it has a verdict, the rest is spliced in 1 MiB
moves. Memory: the two pipes' buffers, both grown to 1 MiB (`grow_pipe`).
The caller runs the feeding side in another thread; `pump` returns at the
pipe's end, and a reader that closes stdout raises BrokenPipeError here,
whereupon the caller closes the pipe and the feeding side fails too.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
from collections.abc import Callable

MOVE = 1024 * 1024  # per splice, and the size pipes are grown to
# What an ISO BMFF (MP4) or QuickTime (MOV) file starts with; anything else
# is not one, and is passed on without a look.
FIRST_BOXES = frozenset({b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot"})
MAX_BOXES = 64  # past this many top-level boxes with neither: stop looking


class MoovCheck:
    """Walks top-level box headers: `offset` is where the next wanted byte
    is, `wanted` how many (a header's rest); `feed` gives them. `late` ends
    True when an `mdat` header comes before any `moov`; `done` when there is
    nothing more to look for."""

    def __init__(self) -> None:
        self.offset = 0
        self.late = False
        self.done = False
        self._head = bytearray()
        self._start = 0  # the box's first byte
        self._boxes = 0

    def wanted(self) -> int:
        if len(self._head) >= 8 and self._head[:4] == b"\0\0\0\1":
            return 16 - len(self._head)  # a 64-bit size follows the type
        return 8 - len(self._head)

    def feed(self, data: bytes) -> None:
        assert not self.done and len(data) <= self.wanted()
        self._head += data
        self.offset += len(data)
        if self.wanted():
            return
        head, self._head = bytes(self._head), bytearray()
        size, kind = int.from_bytes(head[:4], "big"), head[4:8]
        if size == 1:
            size = int.from_bytes(head[8:16], "big")
        if not kind.isascii() or not all(32 <= c < 127 for c in kind):
            self.done = True  # not a box header: not an MP4
            return
        if self._boxes == 0 and kind not in FIRST_BOXES:
            self.done = True
            return
        self._boxes += 1
        if kind in (b"moov", b"mdat"):
            self.late = kind == b"mdat"
            self.done = True
            return
        if size < len(head) or self._boxes >= MAX_BOXES:  # size 0 (to the end) or broken
            self.done = True
            return
        self._start += size
        self.offset = self._start


def grow_pipe(fd: int) -> None:
    """A pipe to 1 MiB, as the daemon grows one passed to it (docs/design.md,
    CLI): each `pump` splice then moves up to a MiB and the reader wakes once per MiB.
    Left at 64 KiB, stdout held `cat | consume` at 16 pages a splice: the
    daemon's writes into our pipe met it full, and cost 0.1-0.2 CPU-s per GiB
    more across the CLI and the daemon (Performance notes: Pipes)."""
    with contextlib.suppress(OSError):  # capped by /proc/sys/fs/pipe-max-size
        if stat.S_ISFIFO(os.fstat(fd).st_mode) and fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ) < MOVE:
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, MOVE)


def pump(source: int, out: int, check: MoovCheck, verdict: Callable[[bool], None]) -> int:
    """Move everything from pipe `source` to `out` until the pipe's end,
    letting `check` see the box headers it wants; `verdict(late)` once it
    knows. Returns the bytes moved."""
    moved = 0
    # Splice only pipe to pipe. A splice into a socket holds the source pipe's
    # lock while the socket is full, and the daemon's non-blocking write into
    # that pipe would wait on the lock, stalling its event loop.
    splice = stat.S_ISFIFO(os.fstat(out).st_mode)
    while True:
        if not check.done and moved >= check.offset:
            data = os.read(source, check.wanted())
            if not data:
                return moved
            _write_all(out, data)
            moved += len(data)
            check.feed(data)
            if check.done:
                verdict(check.late)
            continue
        want = MOVE if check.done else min(MOVE, check.offset - moved)
        if splice:
            try:
                n = os.splice(source, out, want)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                splice = False  # not a pipe after all: copy instead
                continue
        else:
            data = os.read(source, want)
            _write_all(out, data)
            n = len(data)
        if not n:
            return moved
        moved += n


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
