"""Outputs end to end (docs/design.md, Outputs): `s3feed serve` on ministack
(ExternalId and session policies enforced) and SeaweedFS, `s3feed put` from
a pipe and from a file, checked byte for byte with the admin keys.

The writer role is created here, with the admin IAM keys: its trust policy
requires the acme tenant as ExternalId and its policy allows reading and
writing every test bucket, so that what keeps a job inside its destination
folder is the job's session policy alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from daemonproc import S3FEED, Daemon, running_daemon
from faultproxy import Fault, FaultProxy, Seen
from reliability import blob

import localaws
from s3feed.client import AsyncClient, Client, S3feedError

if TYPE_CHECKING:
    from conftest import LocalAws, Seaweed, TestBucket


# The fault proxy forwards part uploads as bytes; aiohttp warns about large ones.
pytestmark = pytest.mark.filterwarnings("ignore:Sending a large body directly:ResourceWarning")

MiB = 1024 * 1024
PART = 5 * MiB  # the daemon's upload part: max([transfer] part_size, S3's 5 MiB)


def uri(bucket: str, folder: str = "") -> str:
    return f"https://{bucket}.s3.us-east-1.amazonaws.com/{folder}"


def _role(local_aws: LocalAws, name: str, actions: list[str]) -> str:
    prefix = localaws.TEST_BUCKET_PREFIX
    trust = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"AWS": f"arn:aws:iam::{local_aws.account_id}:root"},
                "Action": "sts:AssumeRole",
                "Condition": {"StringEquals": {"sts:ExternalId": local_aws.acme_tenant}},
            }
        ],
    }
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": actions, "Resource": f"arn:aws:s3:::{prefix}*/*"},
            {"Effect": "Allow", "Action": "s3:ListBucket", "Resource": f"arn:aws:s3:::{prefix}*"},
        ],
    }
    with local_aws.closing_client("iam") as iam:
        arn = iam.create_role(
            RoleName=name, AssumeRolePolicyDocument=json.dumps(trust), MaxSessionDuration=3600
        )["Role"]["Arn"]
        iam.put_role_policy(RoleName=name, PolicyName="rw", PolicyDocument=json.dumps(policy))
    return str(arn)


@pytest.fixture(scope="module")
def writer_role(local_aws: LocalAws) -> str:
    return _role(
        local_aws,
        f"s3feed-writer-{secrets.token_hex(4)}",
        ["s3:GetObject", "s3:PutObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"],
    )


@pytest.fixture(scope="module")
def reader_role(local_aws: LocalAws) -> str:
    return _role(local_aws, f"s3feed-reader-{secrets.token_hex(4)}", ["s3:GetObject"])


@pytest.fixture(scope="module")
def daemon(local_aws: LocalAws, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    work = tmp_path_factory.mktemp("outputs")
    with running_daemon(local_aws, work / "s3feed", api={"state_dir": work}) as d:
        yield d


def _job(daemon: Daemon, local_aws: LocalAws, bucket: str, role: str, **dest: Any) -> str:
    job_id = f"out-{secrets.token_hex(4)}"
    Client(str(daemon.socket)).create_job(
        job_id,
        local_aws.acme_tenant,
        uri(bucket, "in/"),
        role,
        900,
        Destination={"Provider": "AmazonS3", "UriPath": uri(bucket, "renditions/"), **dest},
    )
    return job_id


def _put(daemon: Daemon, job: str, key: str, data: bytes, src: str, tmp: Path) -> Any:
    if src == "file":
        path = tmp / "body"
        path.write_bytes(data)
        args = [S3FEED, "--json", "put", job, key, str(path)]
        stdin = None
    else:
        args = [S3FEED, "--json", "put", job, key, "-"]
        stdin = subprocess.PIPE
    proc = subprocess.Popen(
        args, env=daemon.env, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = proc.communicate(data if stdin else None, timeout=300)
    assert proc.returncode == 0, err.decode()
    return json.loads(out)


def _uploads(bucket: TestBucket) -> list[Any]:
    return list(bucket.s3.list_multipart_uploads(Bucket=bucket.name).get("Uploads", []))


@pytest.mark.parametrize("src", ["pipe", "file"])
def test_round_trip_is_byte_exact(
    daemon: Daemon,
    local_aws: LocalAws,
    bucket: TestBucket,
    writer_role: str,
    src: str,
    tmp_path: Path,
) -> None:
    job = _job(daemon, local_aws, bucket.name, writer_role)
    for i, size in enumerate([0, 1, PART - 1, PART, PART + 1, 100 * MiB]):
        data = blob(size, i)
        doc = _put(daemon, job, f"out/{size}.ts", data, src, tmp_path)
        key = f"renditions/out/{size}.ts"
        assert (doc["Bucket"], doc["Key"], doc["Size"]) == (bucket.name, key, size)
        got = bucket.s3.get_object(Bucket=bucket.name, Key=key)["Body"].read()
        assert got == data, f"{size} bytes from a {src} differ"
        assert set(doc["Checksum"]) == {"CRC32C"}
    assert _uploads(bucket) == []
    listed = Client(str(daemon.socket)).get_job(job)["Transfers"]
    assert [t["State"] for t in listed if t["Mode"] == "upload"] == ["done"] * 6


def test_session_policy_allows_the_destination_folder_only(
    daemon: Daemon, local_aws: LocalAws, bucket: TestBucket, writer_role: str
) -> None:
    job = _job(daemon, local_aws, bucket.name, writer_role)
    c = Client(str(daemon.socket))
    policy = c.get_job(job)["SessionPolicy"]
    write = next(s for s in policy["Statement"] if s["Sid"] == "WriteOutputs")
    assert write["Resource"] == f"arn:aws:s3:::{bucket.name}/renditions/*"
    # The role may write the whole bucket; the job's credentials only renditions/.
    with pytest.raises(S3feedError) as info:
        c.put(job, "../in/x.ts", b"x")
    assert info.value.code == "InvalidKey"
    creds = local_aws.assume(writer_role, local_aws.acme_tenant, Policy=json.dumps(policy))
    with local_aws.closing_client("s3", creds) as s3:
        s3.put_object(Bucket=bucket.name, Key="renditions/ok", Body=b"ok")
        with pytest.raises(Exception, match="AccessDenied"):
            s3.put_object(Bucket=bucket.name, Key="in/not-ok", Body=b"no")


def test_a_role_without_put_object_is_a_clear_403(
    daemon: Daemon, local_aws: LocalAws, bucket: TestBucket, reader_role: str, tmp_path: Path
) -> None:
    job = _job(daemon, local_aws, bucket.name, reader_role)
    c = Client(str(daemon.socket))
    for size in (10, 2 * PART):
        with pytest.raises(S3feedError) as info:
            c.put(job, f"x{size}", blob(size, 1))
        assert info.value.status == 403 and info.value.code == "AccessDenied"
        assert "s3:PutObject" in info.value.message
    assert _uploads(bucket) == []
    # curl asks `Expect: 100-continue` for a large body: the 403 comes instead of
    # the 100, so not one byte of the body is sent.
    body = tmp_path / "large"
    body.write_bytes(blob(2 * PART, 2))
    out = subprocess.run(
        [
            "curl",
            "-sS",
            "--unix-socket",
            str(daemon.socket),
            "-T",
            str(body),
            "-w",
            "\n%{http_code} %{size_upload}",
            f"http://localhost/v1/jobs/{job}/outputs/big",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    doc, _, tail = out.stdout.rpartition("\n")
    assert tail == "403 0"
    assert json.loads(doc)["Error"]["Code"] == "AccessDenied"


def test_no_destination_is_a_400(
    daemon: Daemon, local_aws: LocalAws, bucket: TestBucket, writer_role: str
) -> None:
    c = Client(str(daemon.socket))
    c.create_job("no-dest", local_aws.acme_tenant, uri(bucket.name, "in/"), writer_role, 900)
    try:
        with pytest.raises(S3feedError) as info:
            c.put("no-dest", "x", b"x")
        assert (info.value.status, info.value.code) == (400, "NoDestination")
    finally:
        c.delete_job("no-dest")


def test_sse_reaches_s3(
    daemon: Daemon, local_aws: LocalAws, bucket: TestBucket, writer_role: str
) -> None:
    job = _job(daemon, local_aws, bucket.name, writer_role, ServerSideEncryption="AES256")
    c = Client(str(daemon.socket))
    c.put(job, "small", b"abc")
    c.put(job, "large", blob(PART + 3, 2))
    for key in ("small", "large"):
        head = bucket.s3.head_object(Bucket=bucket.name, Key=f"renditions/{key}")
        assert head["ServerSideEncryption"] == "AES256"


def test_client_killed_mid_body_leaves_nothing(
    daemon: Daemon, local_aws: LocalAws, bucket: TestBucket, writer_role: str
) -> None:
    job = _job(daemon, local_aws, bucket.name, writer_role)
    proc = subprocess.Popen(
        [S3FEED, "put", job, "killed.ts", "-"],
        env=daemon.env,
        stdin=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert proc.stdin is not None
    proc.stdin.write(blob(3 * PART, 3))  # past the first part: a multipart upload is open
    proc.stdin.flush()
    c = Client(str(daemon.socket))
    deadline = time.monotonic() + 60
    while not _uploads(bucket):
        assert time.monotonic() < deadline, "no multipart upload started"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    with contextlib.suppress(BrokenPipeError):
        proc.stdin.close()
    deadline = time.monotonic() + 60
    while True:
        state = [t["State"] for t in c.get_job(job)["Transfers"] if t["Mode"] == "upload"]
        if state and state[0] != "running":
            break
        assert time.monotonic() < deadline, "the upload did not end"
        time.sleep(0.05)
    assert state == ["failed"]
    assert _uploads(bucket) == []
    listed = bucket.s3.list_objects_v2(Bucket=bucket.name, Prefix="renditions/")
    assert listed.get("KeyCount", 0) == 0


def _part_put(req: Seen) -> bool:
    return req.method == "PUT" and "partNumber=" in req.query


def test_resets_and_slowdown_on_parts_are_retried(
    local_aws: LocalAws, bucket: TestBucket, writer_role: str, tmp_path: Path
) -> None:
    with (
        FaultProxy(local_aws.endpoint_url, "s3") as proxy,
        running_daemon(
            local_aws,
            tmp_path / "s3feed",
            s3={"endpoint_url": proxy.url},
            api={"state_dir": tmp_path},
        ) as daemon,
    ):
        job = _job(daemon, local_aws, bucket.name, writer_role)
        proxy.add(
            Fault("slowdown", match=_part_put, times=2),
            Fault("reset", match=_part_put, after=3, times=2),
            Fault("status500", match=_part_put, after=6, times=1),
        )
        data = blob(4 * PART + 17, 7)
        doc = _put(daemon, job, "faulty.ts", data, "pipe", tmp_path)
        assert proxy.injected == {"slowdown": 2, "reset": 2, "status500": 1}
    got = bucket.s3.get_object(Bucket=bucket.name, Key="renditions/faulty.ts")["Body"].read()
    assert got == data and doc["Size"] == len(data)
    assert _uploads(bucket) == []


def test_slowdown_for_good_aborts_and_answers_503(
    local_aws: LocalAws, bucket: TestBucket, writer_role: str, tmp_path: Path
) -> None:
    with (
        FaultProxy(local_aws.endpoint_url, "s3") as proxy,
        running_daemon(
            local_aws,
            tmp_path / "s3feed",
            s3={"endpoint_url": proxy.url},
            transfer={"retries": 2},
            api={"state_dir": tmp_path},
        ) as daemon,
    ):
        job = _job(daemon, local_aws, bucket.name, writer_role)
        proxy.add(Fault("slowdown", match=_part_put, after=1, times=None))
        with pytest.raises(S3feedError) as info:
            Client(str(daemon.socket)).put(job, "never.ts", blob(3 * PART, 8))
        assert (info.value.status, info.value.code) == (503, "S3Unavailable")
        assert "SlowDown" in info.value.message
        assert json.loads((tmp_path / "uploads.json").read_text()) == {"Uploads": []}
    assert _uploads(bucket) == []
    assert "Contents" not in bucket.s3.list_objects_v2(Bucket=bucket.name, Prefix="renditions/")


def _start_put(daemon: Daemon, job: str, key: str, first: bytes) -> subprocess.Popen[bytes]:
    """`s3feed put JOB KEY -` with `first` written; returns once S3 has a multipart upload."""
    proc = subprocess.Popen(
        [S3FEED, "--json", "put", job, key, "-"],
        env=daemon.env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdin is not None
    proc.stdin.write(first)
    proc.stdin.flush()
    return proc


def _wait_for(what: str, check: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_sigterm_lets_a_running_upload_finish(
    local_aws: LocalAws, bucket: TestBucket, writer_role: str, tmp_path: Path
) -> None:
    data = blob(3 * PART + 5, 9)
    with running_daemon(
        local_aws, tmp_path / "s3feed", api={"state_dir": tmp_path, "drain_grace": 60}
    ) as daemon:
        job = _job(daemon, local_aws, bucket.name, writer_role)
        proc = _start_put(daemon, job, "drained.ts", data[: 2 * PART])
        _wait_for("a multipart upload", lambda: bool(_uploads(bucket)))
        daemon.process.send_signal(signal.SIGTERM)
        out, err = proc.communicate(data[2 * PART :], timeout=120)
        assert proc.returncode == 0, err.decode()
        assert daemon.process.wait(timeout=60) == 0
    assert json.loads(out)["Size"] == len(data)
    got = bucket.s3.get_object(Bucket=bucket.name, Key="renditions/drained.ts")["Body"].read()
    assert got == data


def test_sigterm_aborts_uploads_still_running_after_the_grace(
    local_aws: LocalAws, bucket: TestBucket, writer_role: str, tmp_path: Path
) -> None:
    with running_daemon(
        local_aws, tmp_path / "s3feed", api={"state_dir": tmp_path, "drain_grace": 1}
    ) as daemon:
        job = _job(daemon, local_aws, bucket.name, writer_role)
        proc = _start_put(daemon, job, "cut.ts", blob(2 * PART, 10))
        _wait_for("a multipart upload", lambda: bool(_uploads(bucket)))
        daemon.process.send_signal(signal.SIGTERM)
        assert daemon.process.wait(timeout=60) == 0
        proc.communicate(timeout=60)
        assert proc.returncode != 0
    assert _uploads(bucket) == []
    assert json.loads((tmp_path / "uploads.json").read_text()) == {"Uploads": []}


def test_a_restarted_daemon_aborts_what_a_crashed_one_left(
    local_aws: LocalAws, bucket: TestBucket, writer_role: str, tmp_path: Path
) -> None:
    work = tmp_path / "s3feed"
    with (
        pytest.raises(AssertionError, match="exited with -9"),
        running_daemon(local_aws, work, api={"state_dir": tmp_path}) as daemon,
    ):
        job = _job(daemon, local_aws, bucket.name, writer_role)
        proc = _start_put(daemon, job, "crashed.ts", blob(2 * PART, 11))
        # The journal is written when S3's answer to CreateMultipartUpload is in,
        # a moment after S3 lists the upload: kill the daemon after both.
        journal = tmp_path / "uploads.json"
        _wait_for(
            "a multipart upload in S3 and in the journal",
            lambda: (
                bool(_uploads(bucket))
                and journal.exists()
                and bool(json.loads(journal.read_text())["Uploads"])
            ),
        )
        daemon.process.send_signal(signal.SIGKILL)
        daemon.process.wait(timeout=30)
        proc.communicate(timeout=60)
    (left,) = json.loads((tmp_path / "uploads.json").read_text())["Uploads"]
    assert left["Key"] == "renditions/crashed.ts" and left["Tenant"] == local_aws.acme_tenant
    assert [u["UploadId"] for u in _uploads(bucket)] == [left["UploadId"]]
    with running_daemon(local_aws, work, api={"state_dir": tmp_path}):
        _wait_for("the left upload aborted", lambda: not _uploads(bucket))
        _wait_for(
            "the journal emptied",
            lambda: json.loads((tmp_path / "uploads.json").read_text())["Uploads"] == [],
        )


@pytest.fixture(scope="module")
def seaweed_daemon(seaweed: Seaweed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    work = tmp_path_factory.mktemp("seaweed-outputs")
    with running_daemon(seaweed, work / "s3feed", api={"state_dir": work}) as d:  # type: ignore[arg-type]
        yield d


@pytest.mark.parametrize("src", ["pipe", "file"])
def test_round_trip_on_seaweedfs(
    seaweed_daemon: Daemon, seaweed: Seaweed, src: str, tmp_path: Path
) -> None:
    folder = f"out-{secrets.token_hex(4)}/"
    job = f"sw-{secrets.token_hex(4)}"
    Client(str(seaweed_daemon.socket)).create_job(
        job,
        "seaweed-tenant",
        uri(seaweed.bucket, "in/"),
        localaws.role_arn(localaws.SEAWEED_WRITER_ROLE),
        Destination={"Provider": "AmazonS3", "UriPath": uri(seaweed.bucket, folder)},
    )
    with seaweed.closing_client("s3") as s3:
        for i, size in enumerate([0, 1, PART - 1, PART + 1, 100 * MiB]):
            data = blob(size, 100 + i)
            doc = _put(seaweed_daemon, job, f"{size}.ts", data, src, tmp_path)
            assert doc["Size"] == size
            got = s3.get_object(Bucket=seaweed.bucket, Key=f"{folder}{size}.ts")["Body"].read()
            assert got == data, f"{size} bytes from a {src} differ on SeaweedFS"
        uploads = s3.list_multipart_uploads(Bucket=seaweed.bucket, Prefix=folder)
        assert not uploads.get("Uploads")


def _curl_put_as(
    uid: int, gid: int, sock: Path, job: str, key: str, data: bytes
) -> tuple[int, Any]:
    """curl -T - (chunked, from a pipe) as another real uid."""
    out = subprocess.run(
        [
            "setpriv",
            f"--reuid={uid}",
            f"--regid={gid}",
            "--clear-groups",
            "curl",
            "-sS",
            "--unix-socket",
            str(sock),
            "-T",
            "-",
            "-w",
            "\\n%{http_code}",
            f"http://localhost/v1/jobs/{job}/outputs/{key}",
        ],
        input=data,
        capture_output=True,
        check=True,
        timeout=120,
    )
    body, _, status = out.stdout.rpartition(b"\n")
    return int(status), json.loads(body)


def test_encoder_uids_may_upload_and_other_uids_see_no_job(
    local_aws: LocalAws, bucket: TestBucket, writer_role: str
) -> None:
    nobody = 65534
    with tempfile.TemporaryDirectory(dir="/tmp") as short:
        os.chmod(short, 0o755)  # other uids reach the socket inside
        sock = Path(short) / "s.sock"
        with running_daemon(
            local_aws,
            Path(short) / "d",
            api={"socket": sock, "socket_mode": "0666", "state_dir": short},
        ) as daemon:
            job = f"uids-{secrets.token_hex(4)}"
            Client(str(daemon.socket)).create_job(
                job,
                local_aws.acme_tenant,
                uri(bucket.name, "in/"),
                writer_role,
                900,
                EncoderUids=[nobody],
                Destination={"Provider": "AmazonS3", "UriPath": uri(bucket.name, "renditions/")},
            )
            data = blob(PART + 9, 12)
            status, doc = _curl_put_as(nobody, nobody, sock, job, "by-encoder.ts", data)
            assert status == 201, doc
            status, doc = _curl_put_as(65533, 65533, sock, job, "by-stranger.ts", b"x")
            assert (status, doc["Error"]["Code"]) == (404, "NoSuchJob")
    got = bucket.s3.get_object(Bucket=bucket.name, Key="renditions/by-encoder.ts")["Body"].read()
    assert got == data
    listed = bucket.s3.list_objects_v2(Bucket=bucket.name, Prefix="renditions/")
    assert [o["Key"] for o in listed["Contents"]] == ["renditions/by-encoder.ts"]


def test_sse_kms_fields_reach_s3(
    daemon: Daemon, local_aws: LocalAws, bucket: TestBucket, writer_role: str
) -> None:
    with local_aws.closing_client("kms") as kms:
        key_id = kms.create_key(Description="s3feed outputs test")["KeyMetadata"]["KeyId"]
    job = _job(
        daemon,
        local_aws,
        bucket.name,
        writer_role,
        ServerSideEncryption="aws:kms",
        SSEKMSKeyId=key_id,
    )
    c = Client(str(daemon.socket))
    policy = c.get_job(job)["SessionPolicy"]
    assert "EncryptViaS3" in [s["Sid"] for s in policy["Statement"]]
    c.put(job, "small", b"abc")
    c.put(job, "large", blob(PART + 3, 4))
    for key in ("small", "large"):
        head = bucket.s3.head_object(Bucket=bucket.name, Key=f"renditions/{key}")
        assert head["ServerSideEncryption"] == "aws:kms"
        assert head["SSEKMSKeyId"].endswith(key_id)


def test_a_destination_role_of_its_own_is_a_second_session(
    daemon: Daemon, local_aws: LocalAws, bucket: TestBucket, writer_role: str
) -> None:
    job = f"two-{secrets.token_hex(4)}"
    c = Client(str(daemon.socket))
    c.create_job(
        job,
        local_aws.acme_tenant,
        uri(bucket.name, "in/"),
        local_aws.acme_role_arn,
        900,
        Destination={
            "Provider": "AmazonS3",
            "UriPath": uri(bucket.name, "renditions/"),
            "RoleArnToAssume": writer_role,
        },
    )
    doc = c.get_job(job)
    # The Source's session reads only; the writes go with the writer role's session.
    assert "WriteOutputs" not in [s["Sid"] for s in doc["SessionPolicy"]["Statement"]]
    assert doc["Destination"]["RoleArnToAssume"] == writer_role

    async def put_async() -> Any:
        async with AsyncClient(str(daemon.socket)) as ac:
            return await ac.put(job, "async.ts", b"from the async client")

    assert asyncio.run(put_async())["Size"] == len(b"from the async client")
    got = bucket.s3.get_object(Bucket=bucket.name, Key="renditions/async.ts")["Body"].read()
    assert got == b"from the async client"
    c.delete_job(job)


def _metric(daemon: Daemon, name: str) -> float:
    import urllib.request

    with urllib.request.urlopen(f"http://{daemon.instance}/metrics", timeout=10) as r:
        text = r.read().decode()
    line = next(x for x in text.splitlines() if x.startswith(name + " "))
    return float(line.split()[1])


def test_uploads_per_uid_is_a_429_before_the_body_and_the_budget_holds(
    local_aws: LocalAws, bucket: TestBucket, writer_role: str, tmp_path: Path
) -> None:
    """Two uploads held open at [limits] uploads_per_uid = 2: a third is 429 before
    one byte of its body is sent, and one more is allowed after one of them ends.
    With upload_memory_total at two parts, each upload waiting for its socket holds
    its floor alone: the gauge shows two parts, then nothing."""
    with running_daemon(
        local_aws,
        tmp_path / "s3feed",
        api={"state_dir": tmp_path},
        limits={"uploads_per_uid": 2},
        transfer={"upload_memory_total": "10MiB"},
    ) as daemon:
        job = _job(daemon, local_aws, bucket.name, writer_role)
        data = [blob(3 * PART + 1, 20 + i) for i in range(2)]
        procs = [_start_put(daemon, job, f"held{i}.ts", d[: 2 * PART]) for i, d in enumerate(data)]
        try:
            _wait_for("two multipart uploads", lambda: len(_uploads(bucket)) == 2)
            _wait_for(
                "each upload on its floor",
                lambda: _metric(daemon, "s3feed_upload_memory_used_bytes") == 2 * PART,
            )
            assert _metric(daemon, "s3feed_upload_memory_budget_bytes") == 10 * MiB
            # curl sends `Expect: 100-continue` for this body: the 429 comes instead.
            body = tmp_path / "third"
            body.write_bytes(blob(2 * PART, 22))
            out = subprocess.run(
                [
                    "curl",
                    "-sS",
                    "--unix-socket",
                    str(daemon.socket),
                    "-T",
                    str(body),
                    "-w",
                    "\n%{http_code} %{size_upload}",
                    f"http://localhost/v1/jobs/{job}/outputs/third.ts",
                ],
                capture_output=True,
                text=True,
                check=True,
                timeout=60,
            )
            doc, _, tail = out.stdout.rpartition("\n")
            assert tail == "429 0"
            error = json.loads(doc)["Error"]
            assert error["Code"] == "LimitExceeded"
            assert "[limits] uploads_per_uid = 2" in error["Message"]
            with pytest.raises(S3feedError) as info:  # a small body, sent at once
                Client(str(daemon.socket)).put(job, "small.ts", b"x" * 100)
            assert (info.value.status, info.value.code) == (429, "LimitExceeded")
            assert _metric(daemon, 's3feed_limit_refusals_total{limit="uploads_per_uid"}') == 2
            out0, err0 = procs[0].communicate(data[0][2 * PART :], timeout=120)
            assert procs[0].returncode == 0, err0.decode()
            assert json.loads(out0)["Size"] == len(data[0])
            # One ended: one more is allowed again.
            doc = Client(str(daemon.socket)).put(job, "third.ts", body.read_bytes())
            assert doc["Size"] == 2 * PART
            _, err1 = procs[1].communicate(data[1][2 * PART :], timeout=120)
            assert procs[1].returncode == 0, err1.decode()
            _wait_for(
                "every buffer given back",
                lambda: _metric(daemon, "s3feed_upload_memory_used_bytes") == 0,
            )
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.communicate()
    for i, d in enumerate(data):
        got = bucket.s3.get_object(Bucket=bucket.name, Key=f"renditions/held{i}.ts")["Body"].read()
        assert got == d
    got = bucket.s3.get_object(Bucket=bucket.name, Key="renditions/third.ts")["Body"].read()
    assert got == body.read_bytes()
    assert "Contents" not in bucket.s3.list_objects_v2(
        Bucket=bucket.name, Prefix="renditions/small"
    )
    assert _uploads(bucket) == []
