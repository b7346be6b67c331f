"""S3's request ids and listing pages against the real local S3 servers.

An error S3 answers (NoSuchKey, AccessDenied) carries S3's x-amz-request-id
and x-amz-id-2 in the store's error, in the API's error document and the
job's transfer record, in the CLI's message and in the daemon's log; listing
pages come from S3's own ListObjectsV2 tokens, and a token cannot reach past
the job's folder."""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from daemonproc import S3FEED, Daemon, running_daemon
from test_s3_live import Buffer, StaticSource, make_store, sts_creds

from s3feed.client import Client, S3feedError
from s3feed.transfer.config import S3Config
from s3feed.transfer.errors import AccessDenied, InvalidContinuationToken, NoSuchKey
from s3feed.transfer.s3.client import S3Client
from s3feed.transfer.s3.objects import S3ObjectStore

if TYPE_CHECKING:
    from conftest import LocalAws, Seaweed, TestBucket


@pytest.fixture
def daemon(local_aws: LocalAws, tmp_path: Path) -> Iterator[Daemon]:
    with running_daemon(local_aws, tmp_path / "s3feed") as d:
        yield d


def uri(bucket: str, folder: str = "") -> str:
    return f"https://{bucket}.s3.us-east-1.amazonaws.com/{folder}"


async def _missing_key_errors_carry_ids(store: S3ObjectStore) -> None:
    """HEAD and the ranged GET, both through the daemon's one S3 client."""
    for call in (
        lambda: store.head("missing.ts"),
        lambda: store.get_range("missing.ts", 0, 9, Buffer(0, 10)),
    ):
        with pytest.raises(NoSuchKey) as missing:
            await call()
        assert missing.value.request_id and missing.value.request_id in missing.value.message


async def test_seaweedfs_store_errors_carry_the_request_ids(seaweed: Seaweed) -> None:
    clients = S3Client(S3Config(endpoint_url=seaweed.endpoint_url))
    creds = sts_creds(seaweed.assume())
    store = make_store(seaweed, seaweed.bucket, StaticSource(creds), clients)  # type: ignore[arg-type]
    try:
        await _missing_key_errors_carry_ids(store)
    finally:
        await store.close()
        await clients.close()


async def test_store_errors_carry_the_request_ids(
    local_aws: LocalAws, bucket: TestBucket, globex_bucket: TestBucket
) -> None:
    clients = S3Client(S3Config(endpoint_url=local_aws.endpoint_url))
    creds = sts_creds(local_aws.assume(local_aws.acme_role_arn, local_aws.acme_tenant))
    store = make_store(local_aws, bucket.name, StaticSource(creds), clients)
    other = make_store(local_aws, globex_bucket.name, StaticSource(creds), clients)
    try:
        await _missing_key_errors_carry_ids(store)
        globex_bucket.put("secret.ts", b"globex only")
        with pytest.raises(AccessDenied) as denied:
            await other.head("secret.ts")
        assert denied.value.request_id and f"S3 request id {denied.value.request_id}" in str(
            denied.value
        )
    finally:
        await store.close()
        await other.close()
        await clients.close()


async def test_pages_are_s3s_and_stay_in_the_folder(
    local_aws: LocalAws, bucket: TestBucket
) -> None:
    keys = [f"show/{n:02d}.ts" for n in range(5)]
    for key in [*keys, "a-first.ts", "shower.ts", "zz-last.ts"]:
        bucket.put(key, b"x")
    clients = S3Client(S3Config(endpoint_url=local_aws.endpoint_url))
    creds = sts_creds(local_aws.assume(local_aws.acme_role_arn, local_aws.acme_tenant))
    store = make_store(local_aws, bucket.name, StaticSource(creds), clients, folder="show/")
    try:
        seen, token, sizes = [], None, []
        while True:
            page = await store.list_page("show/", max_keys=2, token=token)
            sizes.append(len(page.objects))
            seen += [m.key for m in page.objects]
            if page.next_token is None:
                break
            token = page.next_token
        assert (seen, sizes) == (keys, [2, 2, 1])
        # A token from a listing of the whole bucket, used on the job's folder:
        # S3 still applies the folder's prefix.
        admin_page = bucket.s3.list_objects_v2(Bucket=bucket.name, MaxKeys=1)
        outside = admin_page["NextContinuationToken"]
        got = await store.list_page("show/", max_keys=1000, token=outside)
        assert all(m.key.startswith("show/") for m in got.objects)
        for start_after in ("a", "", "zz"):
            forged = base64.b64encode(start_after.encode()).decode() or "AA=="
            try:
                got = await store.list_page("show/", max_keys=1000, token=forged)
            except InvalidContinuationToken:
                continue
            assert all(m.key.startswith("show/") for m in got.objects)
    finally:
        await store.close()
        await clients.close()


def test_the_api_the_record_the_cli_and_the_log_show_the_request_id(
    daemon: Daemon, local_aws: LocalAws, bucket: TestBucket
) -> None:
    client = Client(str(daemon.socket))
    client.create_job(
        "ids", local_aws.acme_tenant, uri(bucket.name, "in/"), local_aws.acme_role_arn
    )
    bucket.put("in/a.ts", b"x")
    with pytest.raises(S3feedError) as err:
        client.fetch("ids", "missing.ts")
    request_id = err.value.request_id
    assert err.value.code == "NoSuchKey" and request_id
    assert request_id in err.value.message
    # the CLI: the message (and under --json, the fields)
    out = subprocess.run(
        [S3FEED, "--socket", str(daemon.socket), "cat", "ids", "missing.ts", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 3
    error = json.loads(out.stderr)["Error"]
    assert error["Code"] == "NoSuchKey" and error["RequestId"] and "HostId" in error
    assert error["RequestId"] in error["Message"]
    # the log: a JSON record per S3 error, with the ids as fields
    records = [
        json.loads(line) for line in daemon.log.read_text().splitlines() if line.startswith("{")
    ]
    ids = {r.get("request_id") for r in records if r.get("msg") == "S3 answered an error"}
    assert {request_id, error["RequestId"]} <= ids


def test_seaweedfs_request_ids_and_pages(seaweed: Seaweed, tmp_path: Path) -> None:
    with seaweed.closing_client("s3") as s3:
        for n in range(5):
            s3.put_object(Bucket=seaweed.bucket, Key=f"pages/{n}.ts", Body=b"x")
    with running_daemon(seaweed, tmp_path / "sw") as daemon:  # type: ignore[arg-type]
        client = Client(str(daemon.socket))
        client.create_job(
            "sw-ids", "seaweed-tenant", uri(seaweed.bucket, "pages/"), seaweed.role_arn
        )
        # a fetch and a stream (both HEAD first)
        for call in (
            lambda: client.fetch("sw-ids", "missing.ts"),
            lambda: b"".join(client.read_object("sw-ids", "missing.ts")),
        ):
            with pytest.raises(S3feedError) as err:
                call()
            assert err.value.code == "NoSuchKey"
            assert err.value.request_id and err.value.request_id in err.value.message
        pages = []
        token = None
        while True:
            page = client.list_objects_page("sw-ids", max_keys=2, token=token)
            pages.append([o["Key"] for o in page["Objects"]])
            token = page.get("NextContinuationToken")
            if token is None:
                break
        assert pages == [["0.ts", "1.ts"], ["2.ts", "3.ts"], ["4.ts"]]
        client.delete_job("sw-ids")
