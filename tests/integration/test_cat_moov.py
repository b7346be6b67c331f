"""`s3feed cat` of an MP4/MOV with its index (`moov`) after its media (`mdat`):
one line on stderr naming `s3feed url`, the bytes unchanged, the exit code
unchanged (docs/design.md, CLI). Real ffmpeg-made files on the local AWS:
ffmpeg's default MP4 and MOV put the index at the end, `-movflags +faststart`
puts it first."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from daemonproc import S3FEED, Daemon, running_daemon

from s3feed.client import Client

if TYPE_CHECKING:
    from conftest import LocalAws, TestBucket

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg")
FFMPEG = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y"]


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("moov")
    # Larger than ffmpeg's read buffer (about 140 KB), which a pipe reader can seek back in.
    src = ["-f", "lavfi", "-i", "testsrc=duration=3:size=640x360:rate=25"]
    enc = ["-c:v", "libx264", "-preset", "ultrafast", "-qp", "10", "-pix_fmt", "yuv420p"]
    subprocess.run([*FFMPEG, *src, *enc, str(out / "late.mp4")], check=True)
    late = str(out / "late.mp4")
    subprocess.run([*FFMPEG, "-i", late, "-c", "copy", str(out / "late.mov")], check=True)
    fast = ["-c", "copy", "-movflags", "+faststart"]
    subprocess.run([*FFMPEG, "-i", late, *fast, str(out / "fast.mp4")], check=True)
    subprocess.run([*FFMPEG, "-i", late, "-c", "copy", str(out / "clip.ts")], check=True)
    return {p.name: p.read_bytes() for p in out.iterdir()}


@pytest.fixture
def job(
    local_aws: LocalAws, bucket: TestBucket, tmp_path: Path, media: dict[str, bytes]
) -> Iterator[Daemon]:
    for name, data in media.items():
        bucket.put(f"m/{name}", data)
    with running_daemon(local_aws, tmp_path / "d") as daemon:
        Client(str(daemon.socket)).create_job(
            "moov",
            local_aws.acme_tenant,
            f"https://{bucket.name}.s3.us-east-1.amazonaws.com/m/",
            local_aws.acme_role_arn,
        )
        yield daemon


def cat(daemon: Daemon, *args: str) -> tuple[int, bytes, str]:
    proc = subprocess.run(
        [S3FEED, "cat", "moov", *args], env=daemon.env, capture_output=True, timeout=120
    )
    return proc.returncode, proc.stdout, proc.stderr.decode()


@pytest.mark.parametrize("through_socket", [False, True])
def test_an_index_at_the_end_is_named_once_and_the_bytes_flow(
    job: Daemon, media: dict[str, bytes], through_socket: bool
) -> None:
    extra = ["--through-socket"] if through_socket else []
    for name in ("late.mp4", "late.mov"):
        code, out, err = cat(job, name, *extra)
        assert (code, out) == (0, media[name])
        [line] = err.splitlines()
        assert line.startswith("s3feed: warning:") and f"s3feed url moov {name}" in line
    for name in ("fast.mp4", "clip.ts"):
        code, out, err = cat(job, name, *extra)
        assert (code, out, err) == (0, media[name], "")


def test_a_range_from_the_middle_and_a_file_are_not_looked_at(
    job: Daemon, media: dict[str, bytes], tmp_path: Path
) -> None:
    code, out, err = cat(job, "late.mp4", "--range", "100-")
    assert (code, out, err) == (0, media["late.mp4"][100:], "")
    code, out, err = cat(job, "late.mp4", "--range", "0-")
    assert (code, out) == (0, media["late.mp4"]) and "s3feed url" in err
    # A file can be seeked by whoever reads it later: no warning.
    target = tmp_path / "copy.mp4"
    with target.open("wb") as f:
        proc = subprocess.run(
            [S3FEED, "cat", "moov", "late.mp4"], env=job.env, stdout=f, stderr=subprocess.PIPE
        )
    assert (proc.returncode, proc.stderr) == (0, b"")
    assert target.read_bytes() == media["late.mp4"]


def test_ffmpeg_reading_the_pipe_and_a_reader_that_leaves_early(
    job: Daemon, media: dict[str, bytes]
) -> None:
    # Why the warning: from a pipe, ffmpeg gets no frame of the late file, all of the fast one.
    for name, frames in (("late.mp4", 0), ("fast.mp4", 75)):
        pipeline = (
            f"set -o pipefail; {S3FEED} cat moov {name} | ffmpeg -nostdin -hide_banner "
            "-i pipe:0 -map 0:v -c copy -f null - 2>&1 | grep -o 'frame= *[0-9]*' | tail -1"
        )
        proc = subprocess.run(
            ["bash", "-c", pipeline], env=job.env, capture_output=True, text=True, timeout=120
        )
        got = int(proc.stdout.split("=")[-1]) if proc.stdout.strip() else 0
        assert got == frames, (name, proc.stdout, proc.stderr)
        assert ("s3feed url" in proc.stderr) == (name == "late.mp4")
    # A reader that had enough (head): cat still exits 0, having warned.
    proc = subprocess.run(
        ["bash", "-c", f"set -o pipefail; {S3FEED} cat moov late.mp4 | head -c 100 | wc -c"],
        env=job.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (proc.returncode, proc.stdout.strip()) == (0, "100"), proc.stderr
    assert "s3feed url" in proc.stderr
