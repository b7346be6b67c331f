"""`Client.open` read by PyAV (FFmpeg's demuxers through a Python file
object), on the local AWS: an MP4 with its index at the end, which PyAV
reaches by seeking, demuxes to the same packets as the file on disk, and a
seek into the middle decodes the same frame (docs/design.md, CLI: clients)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import av
import pytest
from daemonproc import running_daemon

from s3feed.client import Client

if TYPE_CHECKING:
    from conftest import LocalAws, TestBucket

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg")


@pytest.fixture(scope="module")
def late_mp4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pyav") / "late.mp4"
    cmd = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y"]
    cmd += ["-f", "lavfi", "-i", "testsrc=duration=6:size=640x360:rate=25"]
    cmd += ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000:duration=6"]
    cmd += ["-c:v", "libx264", "-preset", "ultrafast", "-qp", "12", "-g", "25"]
    cmd += ["-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest", str(out)]
    subprocess.run(cmd, check=True)
    data = out.read_bytes()
    assert data.find(b"mdat") < data.find(b"moov"), "ffmpeg's default: the index at the end"
    return out


@pytest.fixture
def client(
    local_aws: LocalAws, bucket: TestBucket, tmp_path: Path, late_mp4: Path
) -> Iterator[Client]:
    bucket.put("v/late.mp4", late_mp4)
    with running_daemon(local_aws, tmp_path / "d") as daemon:
        c = Client(str(daemon.socket))
        c.create_job(
            "pyav",
            local_aws.acme_tenant,
            f"https://{bucket.name}.s3.us-east-1.amazonaws.com/v/",
            local_aws.acme_role_arn,
        )
        yield c


def packets(source: Any) -> list[tuple[int, int | None, int]]:
    with av.open(source) as container:
        return [(p.stream.index, p.pts, p.size) for p in container.demux() if p.size]


def frame_at(source: Any, seconds: float) -> tuple[int | None, bytes]:
    with av.open(source) as container:
        video = container.streams.video[0]
        assert video.time_base is not None
        container.seek(int(seconds / video.time_base), stream=video)
        frame = next(container.decode(video))
        return frame.pts, bytes(frame.planes[0])


def test_pyav_demuxes_and_seeks_through_open(client: Client, late_mp4: Path) -> None:
    with client.open("pyav", "late.mp4") as f:
        assert f.size == late_mp4.stat().st_size
        got = packets(f)
    want = packets(str(late_mp4))
    assert len(want) > 150 and got == want
    with client.open("pyav", "late.mp4") as f:
        assert frame_at(f, 3.5) == frame_at(str(late_mp4), 3.5)
