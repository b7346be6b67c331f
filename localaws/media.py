"""Sample media (an MPEG-TS and an MP4 with its index at the end, made by
ffmpeg) and the deterministic objects the fixtures upload."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from pathlib import Path

from .processes import run
from .state import REPO_ROOT, LocalAwsError, Paths, log

MEDIA_TS_KEY = "media/sample.ts"
MEDIA_MP4_KEY = "media/sample.mp4"
MEDIA_DURATION_S = 4


def ensure_ffmpeg() -> str | None:
    found = shutil.which("ffmpeg")
    if found:
        return found
    helper = REPO_ROOT / "scripts" / "debian-packages"
    try:
        run([str(helper), "ffmpeg"])
    except (OSError, subprocess.CalledProcessError) as exc:
        log(f"ffmpeg is missing and could not be installed ({exc}); no sample media")
        return None
    return shutil.which("ffmpeg")


def mp4_top_level_boxes(path: Path) -> list[str]:
    """The types of an MP4 file's top-level boxes, in file order."""
    boxes = []
    with open(path, "rb") as fh:
        size_total = os.fstat(fh.fileno()).st_size
        pos = 0
        while pos + 8 <= size_total:
            fh.seek(pos)
            header = fh.read(16)
            size = int.from_bytes(header[:4], "big")
            boxes.append(header[4:8].decode("latin-1"))
            if size == 1:
                size = int.from_bytes(header[8:16], "big")
            elif size == 0:
                break
            if size < 8:
                raise LocalAwsError(f"{path}: bad MP4 box size {size} at {pos}")
            pos += size
    return boxes


def make_media(paths: Paths) -> None:
    """sample.ts (MPEG-TS, pipe-friendly) and sample.mp4 (moov at the end)."""
    if paths.media_ts.exists() and paths.media_mp4.exists():
        return
    ffmpeg = ensure_ffmpeg()
    if ffmpeg is None:
        return
    paths.media.mkdir(parents=True, exist_ok=True)
    inputs = [
        "-f",
        "lavfi",
        "-i",
        f"testsrc=duration={MEDIA_DURATION_S}:size=320x240:rate=25",
        "-f",
        "lavfi",
        "-i",
        f"sine=frequency=440:sample_rate=48000:duration={MEDIA_DURATION_S}",
    ]
    codecs = ["-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", "-c:a", "aac"]
    common = [ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *inputs, *codecs]
    for out, fmt in ((paths.media_ts, "mpegts"), (paths.media_mp4, "mp4")):
        tmp = out.with_name(out.stem + ".tmp" + out.suffix)
        run([*common, "-shortest", "-f", fmt, str(tmp)])
        tmp.replace(out)
    boxes = mp4_top_level_boxes(paths.media_mp4)
    if "moov" not in boxes or boxes.index("moov") < boxes.index("mdat"):
        raise LocalAwsError(f"{paths.media_mp4}: expected moov after mdat, got {boxes}")


def sample_bytes(name: str, size: int) -> bytes:
    """Deterministic pseudo-random content, reproducible from (name, size)."""
    return random.Random(f"{name}:{size}").randbytes(size)


def acme_objects(paths: Paths) -> dict[str, bytes | Path]:
    objects: dict[str, bytes | Path] = {
        "media/readme.txt": b"acme-films sample sources for s3feed tests\n",
        "media/empty.bin": b"",
        "media/random-1MiB.bin": sample_bytes("random-1MiB", 1 << 20),
        "media/nested/deep/clip.bin": sample_bytes("clip", 300_000),
        "media/with space & +plus/ünïcode.txt": b"keys with spaces and UTF-8\n",
        "outside-media/other.txt": b"not under media/\n",
    }
    if paths.media_ts.exists():
        objects[MEDIA_TS_KEY] = paths.media_ts
    if paths.media_mp4.exists():
        objects[MEDIA_MP4_KEY] = paths.media_mp4
    return objects


MULTIPART_KEY = "media/multipart-12MiB.bin"
MULTIPART_PART_SIZE = 5 << 20
