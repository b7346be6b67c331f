"""Jobs and failures over a restart (docs/design.md, Restart and upgrade), with
the real daemon behind the fault proxies on ministack.

- Jobs saved in `[api] state_dir` are live again after a SIGTERM or a
  SIGKILL and a start: the same document, fetches without registering
  again; nothing secret in the state directory; DELETE removes a job for good.
- A role STS cannot serve at start leaves its job listed with
  LastRefreshError, and the job works once STS answers.
- SIGTERM past `drain_grace`: a waiting fetch and an upload answer 503
  ShuttingDown (the upload aborted in S3), a delivery (`s3feed cat`) and a
  socket stream (`s3feed cat --through-socket`) exit 5; SIGKILL mid-stream:
  `s3feed cat` exits 5 too.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import secrets
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from daemonproc import S3FEED
from faultproxy import Fault, any_request, key_get, wait_until
from reliability import (
    TALLY,
    MiB,
    Rig,
    blob,
    check_file,
    proxied_daemon,
    remember,
    results_table,  # noqa: F401 (session fixture: writes the results table)
    uri,
)

import localaws
from s3feed.client import Client, S3feedError

if TYPE_CHECKING:
    from conftest import LocalAws


@pytest.fixture
def bucket(local_aws: LocalAws) -> Iterator[tuple[Any, str]]:
    s3 = local_aws.client("s3")
    name = localaws.TEST_BUCKET_PREFIX + secrets.token_hex(6)
    s3.create_bucket(Bucket=name)
    try:
        yield s3, name
    finally:
        localaws.empty_and_delete_bucket(s3, name)
        s3.close()


@pytest.fixture(scope="module")
def writer_role(local_aws: LocalAws) -> str:
    """A role of the acme tenant that may write to the test buckets."""
    name = f"s3feed-restart-writer-{secrets.token_hex(4)}"
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
    actions = [
        "s3:GetObject",
        "s3:PutObject",
        "s3:AbortMultipartUpload",
        "s3:ListMultipartUploadParts",
    ]
    prefix = localaws.TEST_BUCKET_PREFIX
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


def put(bucket: tuple[Any, str], key: str, body: bytes) -> None:
    remember(body)
    localaws.put_object(bucket[0], bucket[1], key, body, None)


def state_files(state: Path) -> list[tuple[str, bytes]]:
    return [(str(p), p.read_bytes()) for p in sorted(state.rglob("*")) if p.is_file()]


def test_jobs_survive_a_restart_and_delete_removes_them(
    local_aws: LocalAws, tmp_path: Path, bucket: tuple[Any, str]
) -> None:
    data = blob(3 * MiB + 7, seed=81)
    put(bucket, "r/a.bin", data)
    state = tmp_path / "state"
    with proxied_daemon(local_aws, tmp_path / "d", api={"state_dir": state}) as rig:
        client = Client(rig.socket, timeout=60)
        for job in ("keep", "drop"):
            client.create_job(
                job,
                local_aws.acme_tenant,
                uri(bucket[1], "r/"),
                local_aws.acme_role_arn,
                EncoderUids=[4242],
            )
        before = client.get_job("keep")
        check_file(data, client.fetch("keep", "a.bin")["Path"])
        assert oct((state / "jobs").stat().st_mode & 0o777) == "0o700"
        assert sorted(p.name for p in (state / "jobs").iterdir()) == ["drop.json", "keep.json"]

        rig.stop()  # SIGTERM: the jobs stay saved
        rig.start()
        client = Client(rig.socket, timeout=60)
        after = client.get_job("keep")
        for field in ("JobId", "TenantName", "UriPath", "RoleArn", "EncoderUids", "CreatedAt"):
            assert after[field] == before[field], field
        check_file(data, client.fetch("keep", "a.bin")["Path"])  # no registration
        assert after["SessionPolicy"] == before["SessionPolicy"]
        client.delete_job("drop")
        assert [p.name for p in (state / "jobs").iterdir()] == ["keep.json"]

        rig.kill()  # a crash keeps them as well
        (state / "jobs" / "broken.json").write_bytes(b'{"Version": 1, "JobId": "bro')
        rig.start()
        client = Client(rig.socket, timeout=60)
        assert [j["JobId"] for j in client.list_jobs()] == ["keep"]
        skipped = [line for line in rig.log_text().splitlines() if "job state file skipped" in line]
        assert len(skipped) == 1 and "broken.json" in skipped[0], skipped
        with pytest.raises(S3feedError) as gone:
            client.get_job("drop")
        assert gone.value.code == "NoSuchJob"
        check_file(data, client.fetch("keep", "a.bin")["Path"])
        # Nothing STS issued, to any run, is in the state directory.
        found = rig.grep_secrets(state_files(state))
        assert found == [], found
        assert rig.sts.issued_secrets, "STS issued credentials the grep looked for"


def test_a_role_sts_cannot_serve_at_start_is_listed_then_works(
    local_aws: LocalAws, tmp_path: Path, bucket: tuple[Any, str]
) -> None:
    data = blob(MiB + 3, seed=82)
    put(bucket, "s/a.bin", data)
    state = tmp_path / "state"
    with proxied_daemon(local_aws, tmp_path / "d", api={"state_dir": state}) as rig:
        client = Client(rig.socket, timeout=60)
        client.create_job("j", local_aws.acme_tenant, uri(bucket[1], "s/"), local_aws.acme_role_arn)
        rig.stop()
        rig.sts.add(Fault("sts503", any_request, times=None))
        rig.start()
        client = Client(rig.socket, timeout=60)
        doc = wait_until(
            lambda: (d := client.get_job("j"))["LastRefreshError"] and d, 30, "a failed assume"
        )
        assert doc["CredentialsExpireAt"] is None
        with pytest.raises(S3feedError) as err:
            client.fetch("j", "a.bin")
        assert (err.value.status, err.value.code) == (503, "CredentialsExpired"), err.value
        rig.sts.clear()
        # The refresher's backoff is at most a few seconds this early on.
        wait_until(lambda: client.get_job("j")["CredentialsExpireAt"], 60, "credentials")
        assert client.get_job("j")["LastRefreshError"] is None
        check_file(data, client.fetch("j", "a.bin")["Path"])


def cat(rig: Rig, job: str, key: str, out: Path, *extra: str) -> subprocess.Popen[bytes]:
    assert rig.daemon is not None
    with out.open("wb") as stdout:  # the child has its own copy
        return subprocess.Popen(
            [S3FEED, "cat", job, key, *extra],
            stdout=stdout,
            stderr=subprocess.PIPE,
            env=rig.daemon.env,
        )


@contextlib.contextmanager
def slow_rig(local_aws: LocalAws, work: Path, keys: list[str]) -> Iterator[Rig]:
    """1 MiB ranges, one at a time, each 0.5 s late: transfers outlast the drain."""
    with proxied_daemon(
        local_aws, work, api={"drain_grace": 2}, transfer={"concurrency": 1}
    ) as rig:
        for key in keys:
            rig.s3.add(Fault("latency", key_get(key), times=None, seconds=0.5))
        yield rig


def start_upload(rig: Rig, job: str, key: str, size: int, first: bytes) -> socket.socket:
    """PUT of an output whose body stops after `first`: a multipart upload that
    runs until something ends it. The answer is read from the socket later."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(60)
    sock.connect(rig.socket)
    head = (
        f"PUT /v1/jobs/{job}/outputs/{key} HTTP/1.1\r\nHost: localhost\r\n"
        f"Content-Length: {size}\r\n\r\n"
    )
    sock.sendall(head.encode() + first)
    return sock


def read_answer(sock: socket.socket) -> tuple[int, dict[str, Any]]:
    answer = http.client.HTTPResponse(sock)
    answer.begin()
    return answer.status, json.loads(answer.read())


def multipart_uploads(bucket: tuple[Any, str]) -> list[Any]:
    return list(bucket[0].list_multipart_uploads(Bucket=bucket[1]).get("Uploads", []))


def test_sigterm_past_the_drain_grace_ends_what_runs_with_shutting_down(
    local_aws: LocalAws, tmp_path: Path, bucket: tuple[Any, str], writer_role: str
) -> None:
    data = blob(40 * MiB, seed=83)
    keys = ["t/fetch.bin", "t/deliver.bin", "t/stream.bin"]
    for key in keys:
        put(bucket, key, data)
    with slow_rig(local_aws, tmp_path / "d", keys) as rig:
        client = Client(rig.socket, timeout=120)
        client.create_job("t", local_aws.acme_tenant, uri(bucket[1], "t/"), local_aws.acme_role_arn)
        waited: dict[str, Any] = {}

        def fetch() -> None:
            try:
                waited["doc"] = client.fetch("t", "fetch.bin")  # ?wait=true
            except S3feedError as exc:
                waited["error"] = exc

        fetcher = threading.Thread(target=fetch)
        fetcher.start()
        client.create_job(
            "u",
            local_aws.acme_tenant,
            uri(bucket[1], "t/"),
            writer_role,
            Destination={"Provider": "AmazonS3", "UriPath": uri(bucket[1], "out/")},
        )
        upload = start_upload(rig, "u", "cut.ts", 20 * MiB, blob(6 * MiB, seed=85))
        wait_until(lambda: multipart_uploads(bucket), 30, "a multipart upload in S3")
        delivery = cat(rig, "t", "deliver.bin", tmp_path / "delivered")
        stream = cat(rig, "t", "stream.bin", tmp_path / "streamed", "--through-socket")
        wait_until(
            lambda: (
                sum(
                    t["State"] == "running" and t["BytesDone"] > 0
                    for t in client.get_job("t")["Transfers"]
                )
                == 3
            ),
            30,
            "the fetch, the delivery and the stream moving",
        )
        started = time.monotonic()
        rig.stop()  # SIGTERM; asserts exit 0
        # Real time is the behaviour: the daemon's drain grace (2 s) on its clock.
        assert time.monotonic() - started < 30, "the transfers were ended, not waited for"
        fetcher.join(30)
        error = waited.get("error")
        assert error is not None, waited
        assert (error.status, error.code) == (503, "ShuttingDown"), error
        assert error.fetch is not None and error.fetch["Error"]["Code"] == "ShuttingDown"
        _, said = delivery.communicate(timeout=30)
        assert delivery.returncode == 5, said
        assert b"ShuttingDown" in said, said
        with upload:
            status, answer = read_answer(upload)
        assert (status, answer["Error"]["Code"]) == (503, "ShuttingDown"), answer
        assert multipart_uploads(bucket) == [], "the upload was aborted"
        _, said = stream.communicate(timeout=30)
        assert stream.returncode == 5, said
        for path in (tmp_path / "delivered", tmp_path / "streamed"):
            got = path.read_bytes()
            assert 0 < len(got) < len(data) and got == data[: len(got)]
        TALLY.transfers_failed_cleanly += 4
        log = rig.log_text()
        assert "drain grace over" in log


def test_a_stream_cut_by_a_crash_exits_5(
    local_aws: LocalAws, tmp_path: Path, bucket: tuple[Any, str]
) -> None:
    data = blob(24 * MiB, seed=84)
    keys = ["k/deliver.bin", "k/stream.bin"]
    for key in keys:
        put(bucket, key, data)
    with slow_rig(local_aws, tmp_path / "d", keys) as rig:
        client = Client(rig.socket, timeout=60)
        client.create_job("k", local_aws.acme_tenant, uri(bucket[1], "k/"), local_aws.acme_role_arn)
        delivery = cat(rig, "k", "deliver.bin", tmp_path / "delivered")
        stream = cat(rig, "k", "stream.bin", tmp_path / "streamed", "--through-socket")
        wait_until(
            lambda: sum(t["BytesDone"] > 0 for t in client.get_job("k")["Transfers"]) == 2,
            30,
            "both moving",
        )
        rig.kill()
        for proc in (delivery, stream):
            _, said = proc.communicate(timeout=30)
            assert proc.returncode == 5, said
        TALLY.transfers_failed_cleanly += 2
        rig.start()  # the harness stops it with SIGTERM, exit 0
