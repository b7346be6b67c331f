"""The job agent's CLI against the in-process daemon (fake S3 and uploads):
`job create` with a Destination, `put --recursive` of a whole HLS ladder,
`ls -h`, and error messages that name the CLI's commands, not the API's."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import Any

from harness import ACME_ROLE, ACME_URI, Harness
from test_cli_and_lifecycle import cli

from s3feed.transfer.errors import AccessDenied, S3Unavailable

OUT_URI = "https://acme-out.s3.eu-west-1.amazonaws.com/renditions/"
KMS_KEY = "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"


async def create(harness: Harness, job: str, *extra: str) -> tuple[int, str, str]:
    return await cli(
        harness,
        "job",
        "create",
        job,
        "--tenant",
        "acme-films",
        "--uri",
        ACME_URI,
        "--role",
        ACME_ROLE,
        *extra,
    )


def ladder(root: Path) -> dict[str, bytes]:
    """An HLS ladder as ffmpeg writes it: a master playlist, 3 renditions of a
    playlist and 3 segments each (13 files), in folders."""
    files = {"master.m3u8": b"#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=800000\n360p/index.m3u8\n"}
    for rendition in ("360p", "720p", "1080p"):
        files[f"{rendition}/index.m3u8"] = f"#EXTM3U\n# {rendition}\n".encode()
        for n in range(3):
            files[f"{rendition}/seg{n}.ts"] = bytes([n]) * (188 * (n + 1))
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return files


async def test_job_create_with_a_destination_then_a_ladder_in_one_put(
    harness: Harness, tmp_path: Path
) -> None:
    code, out, err = await create(
        harness,
        "out-1",
        "--destination",
        OUT_URI,
        "--sse",
        "aws:kms",
        "--sse-kms-key-id",
        KMS_KEY,
        "--duration",
        "1800",
    )
    assert code == 0, err
    code, out, _ = await cli(harness, "--json", "job", "show", "out-1")
    job = json.loads(out)
    assert job["SessionDurationSeconds"] == 1800
    assert job["Destination"]["Bucket"] == "acme-out"
    assert "EncryptViaS3" in {s["Sid"] for s in job["SessionPolicy"]["Statement"]}

    files = ladder(tmp_path / "hls")
    assert len(files) == 13
    code, out, err = await cli(harness, "put", "out-1", "ep1/hls", str(tmp_path / "hls"), "-r")
    assert code == 0, err
    assert err.strip().startswith("13 of 13 files uploaded"), err
    assert sorted(line.split("\t")[0] for line in out.splitlines()) == sorted(
        f"s3://acme-out/renditions/ep1/hls/{name}" for name in files
    )
    stored = harness.uploads["acme-out"].objects
    assert {key: obj.data for key, obj in stored.items()} == {
        f"renditions/ep1/hls/{name}": data for name, data in files.items()
    }
    types = {key.rsplit(".", 1)[1]: obj.headers["Content-Type"] for key, obj in stored.items()}
    assert types == {"m3u8": "application/vnd.apple.mpegurl", "ts": "video/mp2t"}
    # SSE-KMS reached every upload
    assert {obj.headers.get("x-amz-server-side-encryption") for obj in stored.values()} == {
        "aws:kms"
    }


async def test_recursive_put_exits_with_the_worst_failure(harness: Harness, tmp_path: Path) -> None:
    assert (await create(harness, "out-2", "--destination", OUT_URI))[0] == 0
    ladder(tmp_path / "hls")
    store = harness.uploads["acme-out"]
    # Two files fail: one worth retrying (S3 unavailable, 5), one not (denied, 4): 4 wins.
    unavailable = S3Unavailable("S3 kept failing: SlowDown")
    store.failures["PutObject"] = [unavailable, AccessDenied("Access Denied")]
    code, out, err = await cli(
        harness, "put", "out-2", "x/", str(tmp_path / "hls"), "--recursive", "--parallel", "1"
    )
    lines = err.strip().splitlines()
    assert code == 4, err
    assert lines[-1].startswith("11 of 13 files uploaded") and lines[-1].endswith("; 2 failed")
    assert [line.split(": ")[2] for line in lines[:-1]] == ["S3Unavailable", "AccessDenied"]
    assert len(out.splitlines()) == 11
    # Only retryable failures: exit 5, worth retrying.
    store.failures["PutObject"] = [unavailable]
    code, out, err = await cli(harness, "--json", "put", "out-2", "y", str(tmp_path / "hls"), "-r")
    assert code == 5, err
    doc = json.loads(out)
    assert len(doc["Uploaded"]) == 12 and len(doc["Failed"]) == 1
    assert doc["Failed"][0]["Error"]["Code"] == "S3Unavailable"
    assert doc["Failed"][0]["Key"].startswith("y/")


async def test_cli_messages_name_cli_commands(harness: Harness, tmp_path: Path) -> None:
    code, _, err = await cli(harness, "job", "show", "nope")
    assert code == 3
    assert "list them with `s3feed job list`" in err and "/v1/" not in err
    code, _, err = await cli(harness, "--json", "job", "show", "nope")
    assert "GET /v1/jobs" in json.loads(err)["Error"]["Message"]  # the server's document
    assert (await create(harness, "plain"))[0] == 0
    code, _, err = await create(harness, "plain")
    assert code == 7 and "`s3feed job delete`" in err
    body = tmp_path / "out.ts"
    body.write_bytes(b"x")
    code, _, err = await cli(harness, "put", "plain", "out.ts", str(body))
    assert code == 7 and "NoDestination" in err and "--destination URI" in err, err
    code, _, err = await cli(harness, "put", "plain", "out/", str(tmp_path))
    assert code == 1 and "--recursive" in err, err


async def test_destination_options_need_a_destination(harness: Harness) -> None:
    for extra in (["--sse", "AES256"], ["--destination-role", ACME_ROLE]):
        code, _, err = await create(harness, "no-dest", *extra)
        assert code == 1 and f"{extra[0]} needs --destination URI" in err
    code, _, err = await create(
        harness, "no-dest", "--destination", OUT_URI, "--sse-kms-key-id", KMS_KEY
    )
    assert code == 1 and "--sse-kms-key-id needs --sse aws:kms" in err
    assert (await harness.request("GET", "/v1/jobs")).json == {"Jobs": []}


async def test_ls_human_sizes(harness: Harness) -> None:
    harness.store().put("sources/a.ts", b"x" * (3 * 1024 * 1024 + 512 * 1024))
    harness.store().put("sources/b.ts", b"x" * 10)
    assert (await create(harness, "ls-1"))[0] == 0
    code, out, _ = await cli(harness, "ls", "ls-1", "-h")
    assert code == 0
    assert [line.split("\t")[1].strip() for line in out.splitlines()] == ["3.5 MiB", "10 B"]
    code, out, _ = await cli(harness, "ls", "ls-1")
    assert [line.split("\t")[1].strip() for line in out.splitlines()] == ["3670016", "10"]
    code, out, _ = await cli(harness, "ls", "--json", "ls-1")
    assert [o["Size"] for o in json.loads(out)["Objects"]] == [3670016, 10]


async def test_ctrl_c_aborts_an_upload_cut_off_mid_body(harness: Harness, tmp_path: Path) -> None:
    """A body the daemon has received whole is carried out even if its client
    leaves (docs/design.md, URLs for encoders: clients that leave early); one cut
    off mid-body is aborted. With every part held, the daemon stops reading a
    body beyond its part buffers (64 MiB), so a 72 MiB file is cut off."""
    assert (await create(harness, "out-3", "--destination", OUT_URI))[0] == 0
    big = tmp_path / "big"
    big.mkdir()
    (big / "0.ts").write_bytes(b"\0" * (72 * 1024 * 1024))
    (big / "1.m3u8").write_bytes(b"#EXTM3U\n")
    store = harness.uploads["acme-out"]
    store.gate = asyncio.Event()  # every part waits here
    arrived, aborted = asyncio.Event(), asyncio.Event()
    upload_part, abort = store.upload_part, store.abort

    async def part(*args: Any) -> str:
        arrived.set()
        return await upload_part(*args)

    async def abort_seen(*args: Any) -> None:
        await abort(*args)
        aborted.set()

    store.upload_part = part  # type: ignore[method-assign]
    store.abort = abort_seen  # type: ignore[method-assign]
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "s3feed.daemon",
        "--socket",
        harness.socket,
        "put",
        "out-3",
        "big/",
        str(big),
        "--recursive",
        "--parallel",
        "1",
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        await arrived.wait()
        proc.send_signal(signal.SIGINT)
        _, err = await proc.communicate()
        await aborted.wait()
    assert proc.returncode == 130
    assert "interrupted after 0 of 2 files" in err.decode()
    assert store.objects == {} and store.uploads == {}
