"""`s3feed serve` on the local AWS, driven as encoders drive it: curl over the
socket, the CLI, the Python client, ffprobe reading what it delivers."""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from daemonproc import S3FEED, Daemon, running_daemon
from reliability import blob, sha

from s3feed.client import Client, S3feedError

if TYPE_CHECKING:
    from conftest import LocalAws, Seaweed, TestBucket

MiB = 1024 * 1024


@pytest.fixture
def daemon(local_aws: LocalAws, tmp_path: Path) -> Iterator[Daemon]:
    with running_daemon(local_aws, tmp_path / "s3feed") as d:
        yield d


def uri(bucket: str, folder: str = "") -> str:
    """The AWS virtual-hosted form a customer puts in their job request."""
    return f"https://{bucket}.s3.us-east-1.amazonaws.com/{folder}"


def curl(daemon: Daemon, *args: str) -> tuple[int, object]:
    out = subprocess.run(
        ["curl", "-sS", "--unix-socket", str(daemon.socket), "-w", "\n%{http_code}", *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    body, _, status = out.stdout.rpartition("\n")
    return int(status), json.loads(body) if body.strip() else None


def test_encoder_flow_with_curl_cli_and_ffprobe(daemon: Daemon, local_aws: LocalAws) -> None:
    assert local_aws.media_ts_key and local_aws.media_mp4_path, "the local AWS made sample media"
    job = {
        "JobId": "enc-1",
        "TenantName": local_aws.acme_tenant,
        "Source": {
            "Provider": "AmazonS3",
            "UriPath": uri(local_aws.acme_bucket, "media/"),
            "RoleArnToAssume": local_aws.acme_role_arn,
            "RoleSessionDurationInSeconds": 900,
        },
    }
    status, doc = curl(
        daemon,
        "-X",
        "POST",
        "-H",
        "Content-Type: application/json",
        "-d",
        json.dumps(job),
        "http://localhost/v1/jobs",
    )
    assert status == 201, doc
    assert isinstance(doc, dict) and doc["SessionDurationSeconds"] == 900

    # A cached MP4 whose index is at the end: ffprobe needs to seek, so a file.
    path = subprocess.run(
        [S3FEED, "fetch", "enc-1", "sample.mp4"],
        env=daemon.env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.strip()
    assert Path(path).read_bytes() == local_aws.media_mp4_path.read_bytes()
    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "stream=codec_name", "-of", "json", path],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert {s["codec_name"] for s in json.loads(probe.stdout)["streams"]} == {"h264", "aac"}

    # A streamed MPEG-TS through a pipe.
    cat = subprocess.Popen(
        [S3FEED, "cat", "enc-1", "sample.ts"], env=daemon.env, stdout=subprocess.PIPE
    )
    probe = subprocess.run(
        [
            "ffprobe",
            "-v",
            "error",
            "-count_packets",
            "-show_entries",
            "stream=codec_name,nb_read_packets",
            "-of",
            "json",
            "-i",
            "pipe:0",
        ],
        stdin=cat.stdout,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cat.stdout is not None
    cat.stdout.close()
    assert cat.wait(timeout=60) == 0
    assert probe.returncode == 0, probe.stderr
    streams = json.loads(probe.stdout)["streams"]
    assert {s["codec_name"] for s in streams} == {"h264", "aac"}
    assert all(int(s["nb_read_packets"]) > 10 for s in streams)

    status, _ = curl(daemon, "-X", "DELETE", "http://localhost/v1/jobs/enc-1")
    assert status == 204


@pytest.mark.parametrize(
    "size", [0, 1, MiB, MiB + 1, 5 * MiB + 17], ids=["0B", "1B", "one-part", "part+1", "5MiB+17"]
)
def test_byte_exact_in_both_modes(
    daemon: Daemon, local_aws: LocalAws, bucket: TestBucket, size: int
) -> None:
    data = blob(size, seed=size)
    bucket.put("in/obj.bin", data)
    client = Client(str(daemon.socket))
    client.create_job(
        "exact", local_aws.acme_tenant, uri(bucket.name, "in/"), local_aws.acme_role_arn
    )
    fetched = client.fetch("exact", "obj.bin")
    assert fetched["State"] == "done" and fetched["SizeBytes"] == size
    assert sha(Path(fetched["Path"]).read_bytes()) == sha(data)
    assert sha(b"".join(client.read_object("exact", "obj.bin"))) == sha(data)
    if size > 10:
        part = b"".join(client.read_object("exact", "obj.bin", f"3-{size - 2}"))
        assert part == data[3 : size - 1]


def test_multipart_object_of_hundreds_of_mib(
    daemon: Daemon, local_aws: LocalAws, bucket: TestBucket
) -> None:
    data = blob(300 * MiB + 12345, seed=7)
    etag = bucket.put("big/master.mxf", data, part_size=8 * MiB)
    assert etag.strip('"').endswith("-38")
    client = Client(str(daemon.socket))
    client.create_job(
        "big", local_aws.acme_tenant, uri(bucket.name, "big"), local_aws.acme_role_arn
    )
    fetched = client.fetch("big", "master.mxf")
    assert sha(Path(fetched["Path"]).read_bytes()) == sha(data)
    streamed = hashlib.sha256()
    for chunk in client.read_object("big", "master.mxf"):
        streamed.update(chunk)
    assert streamed.hexdigest() == sha(data)


def test_python_async_client(daemon: Daemon, local_aws: LocalAws, bucket: TestBucket) -> None:
    import asyncio

    from s3feed.client import AsyncClient

    data = blob(3 * MiB, seed=3)
    bucket.put("a/clip.ts", data)

    async def run() -> bytes:
        async with AsyncClient(str(daemon.socket)) as c:
            await c.create_job(
                "async", local_aws.acme_tenant, uri(bucket.name, "a/"), local_aws.acme_role_arn
            )
            listed = await c.list_objects("async")
            assert [o["Key"] for o in listed] == ["clip.ts"]
            return b"".join([chunk async for chunk in c.read_object("async", "clip.ts")])

    assert asyncio.run(run()) == data


def test_object_overwritten_mid_fetch_is_source_changed_and_not_cached(
    local_aws: LocalAws, bucket: TestBucket, tmp_path: Path
) -> None:
    data = blob(256 * MiB, seed=11)
    bucket.put("o/v.bin", data)
    # One range at a time, so the overwrite lands while ranges remain.
    with running_daemon(
        local_aws, tmp_path / "d", transfer={"concurrency": 1, "global_concurrency": 1}
    ) as daemon:
        client = Client(str(daemon.socket))
        client.create_job(
            "ow", local_aws.acme_tenant, uri(bucket.name, "o/"), local_aws.acme_role_arn
        )
        started = client.fetch("ow", "v.bin", wait=False)
        deadline = time.monotonic() + 30
        while client.get_fetch("ow", started["FetchId"])["BytesDone"] == 0:
            assert time.monotonic() < deadline, "the fetch never started"
            time.sleep(0.005)
        bucket.put("o/v.bin", b"a different object")
        while (doc := client.get_fetch("ow", started["FetchId"]))["State"] == "running":
            assert time.monotonic() < deadline, "the fetch never ended"
            time.sleep(0.02)
        assert doc["State"] == "failed"
        assert doc["Error"]["Code"] == "SourceChanged", doc
        # Nothing of the old object is served: the cache has no complete entry of it,
        # and the new object is fetched and delivered whole.
        leftovers = [
            p for p in daemon.cache_dir.rglob("*") if p.is_file() and p.stat().st_size == len(data)
        ]
        assert not any(sha(p.read_bytes()) == sha(data) for p in leftovers)
        again = client.fetch("ow", "v.bin")
        assert Path(again["Path"]).read_bytes() == b"a different object"


def test_object_overwritten_mid_stream_cuts_the_stream_short(
    local_aws: LocalAws, bucket: TestBucket, tmp_path: Path
) -> None:
    data = blob(64 * MiB, seed=12)
    bucket.put("s/v.bin", data)
    with running_daemon(
        local_aws, tmp_path / "d", transfer={"stream_window": "4MiB", "concurrency": 2}
    ) as daemon:
        client = Client(str(daemon.socket))
        client.create_job(
            "ows", local_aws.acme_tenant, uri(bucket.name, "s/"), local_aws.acme_role_arn
        )
        received = bytearray()
        chunks = client.read_object("ows", "v.bin")
        with pytest.raises(S3feedError) as err:
            for chunk in chunks:
                if not received:
                    # The window holds at most 4 MiB ahead: the rest is fetched after this.
                    bucket.put("s/v.bin", b"new")
                received += chunk
        assert err.value.code == "ShortRead"
        assert len(received) < len(data)
        assert bytes(received) == data[: len(received)], "never a wrong byte"


def test_another_tenant_never_gets_a_cached_copy(
    daemon: Daemon, local_aws: LocalAws, bucket: TestBucket
) -> None:
    data = blob(2 * MiB, seed=5)
    bucket.put("shared/secret.mov", data)
    client = Client(str(daemon.socket))
    client.create_job(
        "acme", local_aws.acme_tenant, uri(bucket.name, "shared/"), local_aws.acme_role_arn
    )
    assert Path(client.fetch("acme", "secret.mov")["Path"]).read_bytes() == data

    # globex's role may not read this bucket: its job registers (STS says yes),
    # but the cache asks S3 with globex's credentials before handing anything over.
    client.create_job(
        "globex", local_aws.globex_tenant, uri(bucket.name, "shared/"), local_aws.globex_role_arn
    )
    with pytest.raises(S3feedError) as fetch_err:
        client.fetch("globex", "secret.mov")
    assert (fetch_err.value.status, fetch_err.value.code) == (403, "AccessDenied")
    with pytest.raises(S3feedError) as stream_err:
        b"".join(client.read_object("globex", "secret.mov"))
    assert (stream_err.value.status, stream_err.value.code) == (403, "AccessDenied")


def test_wrong_tenant_missing_role_and_untrusting_role_are_refused(
    daemon: Daemon, local_aws: LocalAws
) -> None:
    client = Client(str(daemon.socket))
    cases = [
        (local_aws.globex_tenant, local_aws.acme_role_arn),
        (local_aws.acme_tenant, local_aws.untrusting_role_arn),
        (local_aws.acme_tenant, f"arn:aws:iam::{local_aws.account_id}:role/no-such-role"),
    ]
    for tenant, role in cases:
        with pytest.raises(S3feedError) as err:
            client.create_job("denied", tenant, uri(local_aws.acme_bucket, "media/"), role)
        assert (err.value.status, err.value.code) == (403, "AssumeRoleDenied")
        assert role in err.value.message and tenant in err.value.message
        assert local_aws.daemon_arn in err.value.message
    assert client.list_jobs() == []


@pytest.fixture(scope="module")
def seaweed_daemon(seaweed: Seaweed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    # SeaweedFS has the daemon's identity and a role it may assume (it ignores
    # ExternalId): the same daemon, on the fast store.
    with running_daemon(seaweed, tmp_path_factory.mktemp("seaweed-daemon")) as d:  # type: ignore[arg-type]
        yield d


@pytest.mark.parametrize("size", [0, 1, MiB, MiB + 1, 40 * MiB + 5])
def test_byte_exact_on_seaweedfs(seaweed_daemon: Daemon, seaweed: Seaweed, size: int) -> None:
    data = blob(size, seed=100 + size)
    key = f"exact/{size}.bin"
    with seaweed.closing_client("s3") as s3:
        s3.put_object(Bucket=seaweed.bucket, Key=key, Body=data)
    client = Client(str(seaweed_daemon.socket))
    job = f"sw-{size}"
    client.create_job(job, "seaweed-tenant", uri(seaweed.bucket, "exact/"), seaweed.role_arn)
    try:
        assert sha(Path(client.fetch(job, f"{size}.bin")["Path"]).read_bytes()) == sha(data)
        assert sha(b"".join(client.read_object(job, f"{size}.bin"))) == sha(data)
    finally:
        client.delete_job(job)


def test_multipart_object_on_seaweedfs(seaweed_daemon: Daemon, seaweed: Seaweed) -> None:
    with seaweed.closing_client("s3") as s3:
        head = s3.head_object(Bucket=seaweed.bucket, Key=seaweed.multipart_key)
        expected = s3.get_object(Bucket=seaweed.bucket, Key=seaweed.multipart_key)["Body"].read()
    assert head["ETag"].strip('"').rpartition("-")[2].isdigit(), "a -N multipart ETag"
    folder, _, name = seaweed.multipart_key.rpartition("/")
    client = Client(str(seaweed_daemon.socket))
    client.create_job("sw-mp", "seaweed-tenant", uri(seaweed.bucket, folder), seaweed.role_arn)
    try:
        fetched = client.fetch("sw-mp", name)
        assert Path(fetched["Path"]).read_bytes() == expected
        assert b"".join(client.read_object("sw-mp", name)) == expected
    finally:
        client.delete_job("sw-mp")
