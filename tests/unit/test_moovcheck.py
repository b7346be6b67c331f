"""MoovCheck and pump (daemon/cli/moovcheck.py): the top-level box walk that
lets `s3feed cat` warn of an MP4/MOV with its index after its media, and the
splice loop that moves the bytes on unchanged."""

from __future__ import annotations

import fcntl
import os
import random
import threading
from pathlib import Path

import pytest

from s3feed.daemon.cli.moovcheck import MAX_BOXES, MOVE, MoovCheck, grow_pipe, pump


def box(kind: bytes, payload: bytes = b"", large: bool = False) -> bytes:
    if large:
        return (1).to_bytes(4, "big") + kind + (16 + len(payload)).to_bytes(8, "big") + payload
    return (8 + len(payload)).to_bytes(4, "big") + kind + payload


FTYP = box(b"ftyp", b"isom\0\0\2\0isomiso2avc1mp41")
MDAT = box(b"mdat", random.Random(1).randbytes(70_000))
MOOV = box(b"moov", box(b"mvhd", bytes(100)))


def walk(data: bytes, step: int = 1) -> MoovCheck:
    """Feed `check` what it asks for, `step` bytes at most at a time."""
    check = MoovCheck()
    while not check.done and check.offset < len(data):
        n = min(step, check.wanted())
        check.feed(data[check.offset : check.offset + n])
    return check


@pytest.mark.parametrize(
    ("data", "late", "done"),
    [
        (FTYP + box(b"free") + MDAT + MOOV, True, True),  # ffmpeg's default
        (FTYP + MOOV + box(b"free") + MDAT, False, True),  # -movflags +faststart
        (box(b"ftyp", b"qt  \0\0\2\0qt  ") + box(b"wide") + MDAT + MOOV, True, True),  # a MOV
        (FTYP + box(b"mdat", MDAT[8:], large=True) + MOOV, True, True),  # a 64-bit size
        (box(b"wide") + MDAT + MOOV, True, True),  # an old QuickTime file: no ftyp
        (FTYP + box(b"uuid", bytes(300)) + box(b"free", bytes(5000)) + MOOV + MDAT, False, True),
        (b"\x47\x40\x00\x10" + bytes(184), False, True),  # MPEG-TS: not an MP4
        (box(b"RIFF", bytes(40)), False, True),  # a first box no MP4 starts with
        (FTYP + b"\0\0\0\x10\x00\x01\x02\x03" + MOOV, False, True),  # not a box header
        (FTYP + (0).to_bytes(4, "big") + b"free" + MDAT, False, True),  # size 0: to the end
        (FTYP + box(b"free") * MAX_BOXES + MDAT, False, True),  # gave up looking
        (FTYP, False, False),  # ended first
    ],
)
@pytest.mark.parametrize("step", [1, 3, 16])
def test_the_walk_finds_which_comes_first(data: bytes, late: bool, done: bool, step: int) -> None:
    check = walk(data, step)
    assert (check.late, check.done) == (late, done)


def test_the_walk_reads_headers_only() -> None:
    check = MoovCheck()
    asked = []
    data = FTYP + box(b"free") + MDAT + MOOV
    while not check.done:
        asked.append((check.offset, check.wanted()))
        check.feed(data[check.offset : check.offset + check.wanted()])
    assert asked == [(0, 8), (32, 8), (40, 8)]


@pytest.mark.parametrize("late", [True, False])
def test_pump_moves_every_byte_and_tells_the_verdict_once(late: bool) -> None:
    body = FTYP + (box(b"free") + MDAT + MOOV if late else MOOV + box(b"free") + MDAT)
    data = body + random.Random(2).randbytes(3 * 1024 * 1024)
    src_r, src_w = os.pipe()
    out_r, out_w = os.pipe()
    got = bytearray()

    def write() -> None:
        view = memoryview(data)
        rng = random.Random(3)
        while view:  # small and odd writes, so headers arrive in pieces
            view = view[os.write(src_w, view[: rng.randint(1, 9000)]) :]
        os.close(src_w)

    def read() -> None:
        while chunk := os.read(out_r, 65536):
            got.extend(chunk)

    threads = [threading.Thread(target=write), threading.Thread(target=read)]
    for t in threads:
        t.start()
    verdicts: list[bool] = []
    moved = pump(src_r, out_w, MoovCheck(), verdicts.append)
    os.close(out_w)
    for t in threads:
        t.join()
    os.close(src_r)
    os.close(out_r)
    assert moved == len(data) and bytes(got) == data
    assert verdicts == [late]


def test_pump_raises_broken_pipe_when_the_reader_leaves() -> None:
    src_r, src_w = os.pipe()
    out_r, out_w = os.pipe()
    os.write(src_w, FTYP + MOOV + bytes(10_000))
    os.close(src_w)
    os.close(out_r)
    with pytest.raises(BrokenPipeError):
        pump(src_r, out_w, MoovCheck(), lambda late: None)
    os.close(src_r)
    os.close(out_w)


def test_grow_pipe_grows_a_pipe_only(tmp_path: Path) -> None:
    r, w = os.pipe()
    try:
        assert fcntl.fcntl(r, fcntl.F_GETPIPE_SZ) < MOVE
        grow_pipe(w)
        assert fcntl.fcntl(r, fcntl.F_GETPIPE_SZ) == MOVE
    finally:
        os.close(r)
        os.close(w)
    with (tmp_path / "f").open("wb") as f:
        grow_pipe(f.fileno())  # a file: nothing to grow, no error
    with open(os.devnull, "wb") as null:
        grow_pipe(null.fileno())  # a character device: the same
