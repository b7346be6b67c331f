"""URL reads through the cache, on SeaweedFS with real ffmpeg and ffprobe
(docs/design.md, URLs for encoders: Reads; Cache: Partial entries).

- ffprobe, two `-c copy` passes and a fetch of a moov-at-end MP4 of 40+ MiB:
  S3 sends it about once (`s3feed_received_bytes_total`), the second pass
  comes from the cache, and the fetch answers at once;
- a seek 80 % into a 1 GiB moov-at-end MP4 reads less than a tenth of it;
- an object of one PUT and no checksum, read through its URL, completes with
  its ETag checked as the MD5 the reads hashed as its bytes landed;
- resets and truncated bodies from the fault proxy during URL reads never put
  a wrong byte in front of ffmpeg: its frame checksums equal the local file's.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import botocore.config
import pytest
from daemonproc import S3FEED, Daemon, running_daemon
from faultproxy import Fault, key_get
from reliability import metric_value, proxied_daemon
from test_faults import new_job as faults_job
from test_outputs import uri

import localaws
from s3feed.client import Client

if TYPE_CHECKING:
    from conftest import LocalAws, Seaweed, TestBucket

MiB = 1024 * 1024
FFMPEG = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y"]
pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg")


def metrics(d: Daemon) -> str:
    with urllib.request.urlopen(f"http://{d.instance}/metrics", timeout=10) as r:
        return str(r.read().decode())


def received(d: Daemon) -> float:
    return metric_value(metrics(d), "s3feed_received_bytes_total")


def url_of(socket: str, job: str, key: str) -> str:
    out = subprocess.run(
        [S3FEED, "--socket", socket, "url", job, key], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def ffmpeg(*args: str) -> str:
    out = subprocess.run([*FFMPEG, *args], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout


def framecrc(source: str, *before: str) -> list[str]:
    """ffmpeg's per-packet checksums of a `-c copy` pass (timestamps, sizes, CRCs)."""
    lines = ffmpeg(*before, "-i", source, "-map", "0", "-c", "copy", "-f", "framecrc", "-")
    return [line for line in lines.splitlines() if not line.startswith("#")]


CLIP = 12  # seconds of picture encoded; looped with -c copy for size
LOOPS = 3


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A moov-at-end MP4 (ffmpeg's default) of 40+ MiB: 12 s of 720p MPEG-4
    part 2 at its best quality, three times over (no re-encode)."""
    out = tmp_path_factory.mktemp("url-media")
    source = f"testsrc2=size=1280x720:rate=25:duration={CLIP}"
    encode = ["-c:v", "mpeg4", "-q:v", "1", "-g", "25"]
    ffmpeg("-f", "lavfi", "-i", source, *encode, str(out / "clip.mp4"))
    loop = ["-stream_loop", str(LOOPS - 1), "-i", str(out / "clip.mp4"), "-c", "copy"]
    ffmpeg(*loop, str(out / "late.mp4"))
    assert (out / "late.mp4").stat().st_size >= 40 * MiB
    return out


@pytest.fixture(scope="module")
def daemon(seaweed: Seaweed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    work = tmp_path_factory.mktemp("url-reads")
    with running_daemon(seaweed, work / "s3feed", api={"http_listen": "127.0.0.1:0"}) as d:  # type: ignore[arg-type]
        yield d


def new_job(d: Daemon, seaweed: Seaweed, folder: str) -> str:
    job = f"ur-{secrets.token_hex(4)}"
    Client(str(d.socket)).create_job(
        job, "seaweed-tenant", uri(seaweed.bucket, folder), seaweed.role_arn
    )
    return job


def put(seaweed: Seaweed, key: str, path: Path) -> None:
    with seaweed.closing_client("s3") as s3:
        localaws.put_object(s3, seaweed.bucket, key, path, part_size=64 * MiB)


def test_probe_two_passes_and_a_fetch_make_s3_send_the_object_about_once(
    daemon: Daemon, seaweed: Seaweed, media: Path
) -> None:
    folder = f"url-once-{secrets.token_hex(3)}/"
    put(seaweed, folder + "late.mp4", media / "late.mp4")
    size = (media / "late.mp4").stat().st_size
    job = new_job(daemon, seaweed, folder)
    url = url_of(str(daemon.socket), job, "late.mp4")
    before = received(daemon)
    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-show_format", "-of", "json", url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert probe.returncode == 0, probe.stderr
    assert int(json.loads(probe.stdout)["format"]["size"]) == size
    want = framecrc(str(media / "late.mp4"))
    assert framecrc(url) == want  # pass 1
    from_cache = metric_value(metrics(daemon), "s3feed_cache_read_bytes_total", source="cache")
    assert framecrc(url) == want  # pass 2
    text = metrics(daemon)
    again = metric_value(text, "s3feed_cache_read_bytes_total", source="cache") - from_cache
    assert again >= size * 0.99, "the second pass came from the cache"
    fetched = Client(str(daemon.socket)).fetch(job, "late.mp4")
    assert Path(fetched["Path"]).read_bytes() == (media / "late.mp4").read_bytes()
    sent = received(daemon) - before
    assert sent <= 1.1 * size, f"S3 sent {sent / size:.2f}x the object"


def test_a_seek_far_into_a_large_object_reads_little_of_it(
    daemon: Daemon, seaweed: Seaweed, media: Path, tmp_path: Path
) -> None:
    big = tmp_path / "big.mp4"  # 1 GiB and more, moov at the end, no re-encode
    loops = -(-1024 * MiB // (media / "late.mp4").stat().st_size)
    ffmpeg("-stream_loop", str(loops - 1), "-i", str(media / "late.mp4"), "-c", "copy", str(big))
    size = big.stat().st_size
    assert size >= 1024 * MiB
    folder = f"url-seek-{secrets.token_hex(3)}/"
    put(seaweed, folder + "big.mp4", big)
    big.unlink()
    job = new_job(daemon, seaweed, folder)
    url = url_of(str(daemon.socket), job, "big.mp4")
    duration = CLIP * LOOPS * loops
    before = received(daemon)
    frames = ffmpeg(
        "-ss", f"{0.8 * duration:.1f}", "-i", url, "-t", "2", "-c", "copy", "-f", "framecrc", "-"
    )
    assert len([line for line in frames.splitlines() if not line.startswith("#")]) >= 40
    sent = received(daemon) - before
    assert sent < 0.1 * size, f"a seek to 80 % read {sent / size:.1%} of the object from S3"


def test_faults_during_url_reads_never_put_wrong_bytes_before_ffmpeg(
    local_aws: LocalAws, bucket: TestBucket, tmp_path: Path, media: Path
) -> None:
    small = tmp_path / "small.mp4"
    ffmpeg("-i", str(media / "late.mp4"), "-t", "4", "-c", "copy", str(small))
    want = framecrc(str(small))
    bucket.put("in/small.mp4", small)
    with proxied_daemon(local_aws, tmp_path / "rig", api={"http_listen": "127.0.0.1:0"}) as rig:
        job = faults_job(Client(rig.socket), local_aws, bucket.name, "in/")
        get = key_get("in/small.mp4")
        rig.s3.add(Fault("reset", get, after=1, fraction=0.3, times=3))
        rig.s3.add(Fault("truncate", get, after=3, fraction=0.5, times=2))
        url = url_of(rig.socket, job, "small.mp4")
        assert framecrc(url) == want
        assert rig.s3.injected["reset"] + rig.s3.injected["truncate"] >= 3


def test_reads_check_a_single_put_objects_etag_as_its_md5(
    daemon: Daemon, seaweed: Seaweed, media: Path, tmp_path: Path
) -> None:
    """One PUT, no checksum: the ETag is the object's MD5, hashed by the reads
    behind the bytes as they land; the entry they complete says so."""
    small = tmp_path / "small.mp4"
    ffmpeg("-i", str(media / "late.mp4"), "-t", "6", "-c", "copy", str(small))
    folder = f"url-md5-{secrets.token_hex(3)}/"
    # botocore's default would add a CRC32 to the PUT, and S3 would keep it.
    plain = botocore.config.Config(request_checksum_calculation="when_required")
    params = {"Bucket": seaweed.bucket, "Key": folder + "small.mp4"}
    a, s, r = seaweed.admin_access_key_id, seaweed.admin_secret_access_key, seaweed.region
    with localaws.closing_client("s3", seaweed.endpoint_url, a, s, None, r, plain) as s3:
        s3.put_object(**params, Body=small.read_bytes())
        head = s3.head_object(**params, ChecksumMode="ENABLED")
    assert "-" not in head["ETag"] and not [k for k in head if k.startswith("Checksum")]
    job = new_job(daemon, seaweed, folder)
    url = url_of(str(daemon.socket), job, "small.mp4")
    assert framecrc(url) == framecrc(str(small))
    before = received(daemon)
    fetched = Client(str(daemon.socket)).fetch(job, "small.mp4")
    assert received(daemon) == before, "the reads completed the entry"
    assert fetched["Verified"] == ["MD5"]
    assert Path(fetched["Path"]).read_bytes() == small.read_bytes()
