"""URLs for encoders end to end (docs/design.md, URLs for encoders): `s3feed
serve` with `[api] http_listen` on ministack, real ffmpeg and ffprobe reading
and writing through the loopback listener, run as real uids with setpriv.

- a moov-at-end MP4 (what ffmpeg writes by default), which a pipe cannot feed
  to ffmpeg, is probed and remuxed through its URL, frame for frame;
- an HLS source is read through its playlist's URL, a DASH source through its
  manifest's (relative segment names resolve under the same job);
- an HLS ladder is written with `-f hls -method PUT` and lands complete, with
  each object's Content-Type from its extension;
- a uid outside the job gets NoSuchJob over TCP while the job's encoder uid
  reads.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from daemonproc import S3FEED, Daemon, running_daemon
from test_outputs import _role, uri

from s3feed.client import Client

if TYPE_CHECKING:
    from conftest import LocalAws, TestBucket

ENCODER = 61210  # the job's EncoderUids; no account needed, setpriv takes the number
STRANGER = 61211
pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg")


def as_uid(uid: int, *argv: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    cmd = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *argv]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kw)


def frames(*source: str, uid: int = ENCODER) -> int:
    """Video frames ffmpeg decodes from `source` (as `uid`), by its own count."""
    out = as_uid(
        uid,
        "ffprobe",
        "-v",
        "error",
        "-count_packets",
        "-select_streams",
        "v:0",
        "-show_entries",
        "stream=nb_read_packets",
        "-of",
        "csv=p=0",
        *source,
    )
    assert out.returncode == 0, out.stderr
    return int(out.stdout.split()[0])  # an HLS source lists its stream under its program too


@pytest.fixture(scope="module")
def writer_role(local_aws: LocalAws) -> str:
    return _role(
        local_aws,
        f"s3feed-url-writer-{secrets.token_hex(4)}",
        ["s3:GetObject", "s3:PutObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"],
    )


@pytest.fixture(scope="module")
def daemon(local_aws: LocalAws, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    work = tmp_path_factory.mktemp("urls")
    with running_daemon(local_aws, work / "s3feed", api={"http_listen": "127.0.0.1:0"}) as d:
        yield d


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A moov-at-end MP4 (ffmpeg's default) and an HLS folder of the same picture."""
    out = tmp_path_factory.mktemp("media")
    src = ["-f", "lavfi", "-i", "testsrc=duration=6:size=320x240:rate=25"]
    enc = ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-g", "25"]
    ffmpeg = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y"]
    subprocess.run([*ffmpeg, *src, *enc, str(out / "late.mp4")], check=True)
    (out / "hls").mkdir()
    subprocess.run(
        [
            *ffmpeg,
            *src,
            *enc,
            "-f",
            "hls",
            "-hls_time",
            "1",
            "-hls_list_size",
            "0",
            "-hls_segment_filename",
            str(out / "hls" / "seg%03d.ts"),
            str(out / "hls" / "index.m3u8"),
        ],
        check=True,
    )
    return out


@pytest.fixture(scope="module")
def dash(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DASH folder as ffmpeg's dash muxer writes it: manifest.mpd, an init
    segment and 1 s media segments per stream, video and audio."""
    out = tmp_path_factory.mktemp("dash")
    subprocess.run(
        [
            *["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y"],
            *["-f", "lavfi", "-i", "testsrc=duration=6:size=320x240:rate=25"],
            *["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000:duration=6"],
            *["-map", "0:v", "-map", "1:a", "-c:v", "libx264", "-preset", "ultrafast"],
            *["-pix_fmt", "yuv420p", "-g", "25", "-c:a", "aac"],
            *["-f", "dash", "-seg_duration", "1", str(out / "manifest.mpd")],
        ],
        check=True,
    )
    return out


def decoded(source: str, uid: int = ENCODER) -> list[str]:
    """Every decoded frame of every stream of `source` (as `uid`): ffmpeg's
    framemd5 lines (stream, timestamps, size, MD5 of the frame)."""
    out = as_uid(
        uid, "ffmpeg", "-nostdin", "-v", "error", "-i", source, "-map", "0", "-f", "framemd5", "-"
    )
    assert out.returncode == 0, out.stderr
    return [ln for ln in out.stdout.splitlines() if not ln.startswith("#")]


def _url(daemon: Daemon, *args: str) -> str:
    out = subprocess.run(
        [S3FEED, "--socket", str(daemon.socket), "url", *args], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@pytest.fixture
def job(
    daemon: Daemon, local_aws: LocalAws, bucket: TestBucket, media: Path, writer_role: str
) -> str:
    bucket.put("in/show/late.mp4", media / "late.mp4")
    for f in sorted((media / "hls").iterdir()):
        bucket.put(f"in/show/hls/{f.name}", f)
    job_id = f"url-{secrets.token_hex(4)}"
    Client(str(daemon.socket)).create_job(
        job_id,
        local_aws.acme_tenant,
        uri(bucket.name, "in/"),
        writer_role,
        900,
        EncoderUids=[ENCODER],
        Destination={"Provider": "AmazonS3", "UriPath": uri(bucket.name, "renditions/")},
    )
    return job_id


def test_a_moov_at_end_mp4_is_probed_and_remuxed_through_its_url(
    daemon: Daemon, job: str, media: Path, tmp_path: Path
) -> None:
    url = _url(daemon, job, "show/late.mp4")
    assert url.startswith("http://127.0.0.1:") and url.endswith(
        f"/v1/jobs/{job}/objects/show/late.mp4"
    )
    want = frames(str(media / "late.mp4"), uid=0)
    assert want == 150
    assert frames(url) == want
    # a whole remux as the encoder uid, into a file it owns
    out = Path(tempfile.mkdtemp(prefix="s3feed-url-", dir="/tmp"))  # pytest's tmp is root's alone
    out.chmod(0o777)
    done = as_uid(
        ENCODER,
        "ffmpeg",
        "-nostdin",
        "-v",
        "error",
        "-i",
        url,
        "-c",
        "copy",
        "-f",
        "mp4",
        str(out / "copy.mp4"),
    )
    assert done.returncode == 0, done.stderr
    assert frames(str(out / "copy.mp4"), uid=0) == want
    shutil.rmtree(out)


def test_hls_is_read_through_its_playlist_url(daemon: Daemon, job: str, media: Path) -> None:
    url = _url(daemon, job, "show/hls/index.m3u8")
    assert frames(url) == frames(str(media / "hls" / "index.m3u8"), uid=0) == 150


def test_dash_is_read_through_its_manifest_url(
    daemon: Daemon, job: str, bucket: TestBucket, dash: Path
) -> None:
    files = sorted(dash.iterdir())
    assert {f.suffix for f in files} == {".mpd", ".m4s"} and len(files) > 10
    for f in files:
        bucket.put(f"in/show/dash/{f.name}", f)
    url = _url(daemon, job, "show/dash/manifest.mpd")
    assert frames(url) == frames(str(dash / "manifest.mpd"), uid=0) == 150
    want = decoded(str(dash / "manifest.mpd"), uid=0)
    assert {ln.split(",")[0] for ln in want} == {"0", "1"}, "video and audio"
    assert decoded(url) == want, "every segment of both streams, frame for frame"


def test_a_uid_outside_the_job_gets_no_such_job_over_tcp(daemon: Daemon, job: str) -> None:
    url = _url(daemon, job, "show/late.mp4")
    probe = [
        "curl",
        "--silent",
        "--show-error",
        "--output",
        "-",
        "--write-out",
        "\n%{http_code}",
        url,
    ]
    stranger = as_uid(STRANGER, *probe)
    body, status = stranger.stdout.rsplit("\n", 1)
    assert status == "404" and json.loads(body)["Error"]["Code"] == "NoSuchJob"
    ranged = [
        "curl",
        "--silent",
        "--range",
        "0-7",
        "--output",
        "/dev/null",
        "--write-out",
        "%{http_code}",
        url,
    ]
    assert as_uid(ENCODER, *ranged).stdout == "206"


def test_an_hls_ladder_written_with_put_lands_with_its_content_types(
    daemon: Daemon, job: str, bucket: TestBucket
) -> None:
    url = _url(daemon, "--output", job, "ladder/720p/index.m3u8")
    assert f"/v1/jobs/{job}/outputs/ladder/720p/index.m3u8" in url
    done = as_uid(
        ENCODER,
        "ffmpeg",
        "-nostdin",
        "-v",
        "error",
        "-f",
        "lavfi",
        "-i",
        "testsrc=duration=4:size=320x240:rate=25",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-pix_fmt",
        "yuv420p",
        "-g",
        "25",
        "-f",
        "hls",
        "-hls_time",
        "1",
        "-hls_list_size",
        "0",
        "-method",
        "PUT",
        "-http_persistent",
        "1",
        url,
    )
    assert done.returncode == 0, done.stderr
    # ffmpeg sends its last requests and exits without reading the answers:
    # the daemon finishes them after it, so wait for the ladder's last object.
    prefix = "renditions/ladder/720p/"
    deadline = time.monotonic() + 60
    while True:
        listed = bucket.s3.list_objects_v2(Bucket=bucket.name, Prefix=prefix).get("Contents", [])
        keys = sorted(o["Key"].removeprefix(prefix) for o in listed)
        playlist = b""
        if "index.m3u8" in keys:
            playlist = bucket.s3.get_object(Bucket=bucket.name, Key=prefix + "index.m3u8")[
                "Body"
            ].read()
        # segments and playlists may travel on connections of their own
        if (b"#EXT-X-ENDLIST" in playlist and len(keys) == 5) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert b"#EXT-X-ENDLIST" in playlist, (keys, playlist)
    assert keys == ["index.m3u8", "index0.ts", "index1.ts", "index2.ts", "index3.ts"]
    head = bucket.s3.head_object(Bucket=bucket.name, Key=prefix + "index.m3u8")
    assert head["ContentType"] == "application/vnd.apple.mpegurl"
    segment = bucket.s3.head_object(Bucket=bucket.name, Key="renditions/ladder/720p/index0.ts")
    assert segment["ContentType"] == "video/mp2t"


def test_url_without_the_listener_names_the_key(local_aws: LocalAws, tmp_path: Path) -> None:
    with running_daemon(local_aws, tmp_path / "s3feed") as plain:
        out = subprocess.run(
            [S3FEED, "--socket", str(plain.socket), "url", "job-1", "a.mp4"],
            capture_output=True,
            text=True,
        )
    assert (
        out.returncode != 0
        and "[api] http_listen" in out.stderr
        and len(out.stderr.strip().splitlines()) == 1
    )
