"""The local AWS is real enough for the denial tests: STS checks the trust policy
and the ExternalId, S3 checks the role's policy, and stop leaves nothing behind."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

import localaws

if TYPE_CHECKING:
    from conftest import LocalAws, Seaweed, TestBucket

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "local_aws.py"  # the CLI


def error_code(fn: Callable[[], Any]) -> str:
    with pytest.raises(ClientError) as info:
        fn()
    return str(info.value.response["Error"]["Code"])


def read_body(s3: Any, bucket: str, key: str, **kw: Any) -> bytes:
    body = s3.get_object(Bucket=bucket, Key=key, **kw)["Body"]
    try:
        return bytes(body.read())
    finally:
        body.close()


# ------------------------------------------------------------------- identities and STS


def test_daemon_keys_are_the_iam_user(local_aws: LocalAws) -> None:
    with local_aws.closing_client("sts", local_aws.daemon_creds) as sts:
        me = sts.get_caller_identity()
    assert me["Arn"] == local_aws.daemon_arn
    assert me["Account"] == local_aws.account_id


def test_daemon_keys_cannot_read_s3_directly(local_aws: LocalAws) -> None:
    with local_aws.closing_client("s3", local_aws.daemon_creds) as s3:
        code = error_code(
            lambda: s3.get_object(Bucket=local_aws.acme_bucket, Key="media/readme.txt")
        )
    assert code == "AccessDenied"


def test_acme_role_with_right_external_id_reads_acme_sources(local_aws: LocalAws) -> None:
    creds = local_aws.assume(local_aws.acme_role_arn, local_aws.acme_tenant)
    with local_aws.closing_client("sts", creds) as sts:
        arn = sts.get_caller_identity()["Arn"]
    assert arn.endswith(":assumed-role/acme-films-media-reader/s3feed-test")
    with local_aws.closing_client("s3", creds) as s3:
        assert read_body(s3, local_aws.acme_bucket, "media/readme.txt").startswith(b"acme-films")
        listed = s3.list_objects_v2(Bucket=local_aws.acme_bucket, Prefix="media/")
        keys = {o["Key"] for o in listed["Contents"]}
        assert "media/readme.txt" in keys
        assert local_aws.multipart_key in keys


@pytest.mark.parametrize(
    "external_id",
    [pytest.param("globex", id="other-tenant"), pytest.param("ACME-FILMS", id="wrong-case")],
)
def test_wrong_external_id_is_denied(local_aws: LocalAws, external_id: str) -> None:
    code = error_code(lambda: local_aws.assume(local_aws.acme_role_arn, external_id))
    assert code == "AccessDenied"


def test_missing_external_id_is_denied(local_aws: LocalAws) -> None:
    code = error_code(lambda: local_aws.assume(local_aws.acme_role_arn, None))
    assert code == "AccessDenied"


@pytest.mark.parametrize("external_id", [None, "acme-films"])
def test_untrusting_role_is_denied(local_aws: LocalAws, external_id: str | None) -> None:
    code = error_code(lambda: local_aws.assume(local_aws.untrusting_role_arn, external_id))
    assert code == "AccessDenied"


def test_unknown_role_is_denied(local_aws: LocalAws) -> None:
    arn = f"arn:aws:iam::{local_aws.account_id}:role/does-not-exist"
    assert error_code(lambda: local_aws.assume(arn, "acme-films")) == "AccessDenied"


def test_wrong_secret_is_rejected(local_aws: LocalAws) -> None:
    creds = {"AccessKeyId": local_aws.daemon_access_key_id, "SecretAccessKey": "x" * 40}
    with local_aws.closing_client("sts", creds) as sts:
        assert error_code(sts.get_caller_identity) == "SignatureDoesNotMatch"


# ------------------------------------------------------------------- tenant isolation on S3


def test_globex_cannot_read_acme_sources(local_aws: LocalAws) -> None:
    creds = local_aws.assume(local_aws.globex_role_arn, local_aws.globex_tenant)
    with local_aws.closing_client("s3", creds) as s3:
        assert read_body(s3, local_aws.globex_bucket, "media/globex-only.txt")
        bucket = local_aws.acme_bucket
        assert error_code(lambda: s3.get_object(Bucket=bucket, Key="media/readme.txt")) == (
            "AccessDenied"
        )
        assert error_code(lambda: s3.list_objects_v2(Bucket=bucket)) == "AccessDenied"
        # HEAD has no body, so botocore only sees the status.
        assert error_code(lambda: s3.head_object(Bucket=bucket, Key="media/readme.txt")) == "403"


def test_roles_are_read_only(local_aws: LocalAws) -> None:
    creds = local_aws.assume(local_aws.acme_role_arn, local_aws.acme_tenant)
    with local_aws.closing_client("s3", creds) as s3:
        code = error_code(
            lambda: s3.put_object(Bucket=local_aws.acme_bucket, Key="media/x", Body=b"x")
        )
    assert code == "AccessDenied"


def test_per_test_buckets_follow_the_tenants(
    local_aws: LocalAws, bucket: TestBucket, globex_bucket: TestBucket
) -> None:
    bucket.put("a.bin", b"for acme")
    globex_bucket.put("g.bin", b"for globex")
    acme = local_aws.assume(local_aws.acme_role_arn, local_aws.acme_tenant)
    globex = local_aws.assume(local_aws.globex_role_arn, local_aws.globex_tenant)
    with (
        local_aws.closing_client("s3", acme) as s3a,
        local_aws.closing_client("s3", globex) as s3g,
    ):
        assert read_body(s3a, bucket.name, "a.bin") == b"for acme"
        assert read_body(s3g, globex_bucket.name, "g.bin") == b"for globex"
        assert error_code(lambda: s3g.get_object(Bucket=bucket.name, Key="a.bin")) == (
            "AccessDenied"
        )
        assert error_code(lambda: s3a.get_object(Bucket=globex_bucket.name, Key="g.bin")) == (
            "AccessDenied"
        )


def test_bucket_fixture_multipart_upload(local_aws: LocalAws, bucket: TestBucket) -> None:
    part = 5 << 20
    data = localaws.sample_bytes("mp-test", 2 * part + 1234)
    etag = bucket.put("big.bin", data, part_size=part)
    assert etag.strip('"').endswith("-3")
    creds = local_aws.assume(local_aws.acme_role_arn, local_aws.acme_tenant)
    with local_aws.closing_client("s3", creds) as s3:
        head = s3.head_object(Bucket=bucket.name, Key="big.bin")
        assert head["ContentLength"] == len(data)
        assert head["ETag"] == etag
        assert read_body(s3, bucket.name, "big.bin", PartNumber=2) == data[part : 2 * part]
        assert read_body(s3, bucket.name, "big.bin", Range="bytes=-1234") == data[-1234:]
        code = error_code(lambda: s3.get_object(Bucket=bucket.name, Key="big.bin", IfMatch='"x"'))
        assert code == "PreconditionFailed"


def test_bucket_fixture_removes_its_bucket(local_aws: LocalAws) -> None:
    # The fixture, driven by hand: the bucket and its objects are gone afterwards.
    with local_aws.closing_client("s3") as s3:
        name = localaws.TEST_BUCKET_PREFIX + "cleanup-check"
        s3.create_bucket(Bucket=name)
        localaws.put_object(s3, name, "k", b"v")
        localaws.put_object(s3, name, "m", b"v" * (5 << 20), part_size=5 << 20)
        localaws.empty_and_delete_bucket(s3, name)
        assert error_code(lambda: s3.head_bucket(Bucket=name)) in ("404", "NoSuchBucket")


def test_expired_session_gets_expired_token(local_aws: LocalAws) -> None:
    # ministack does not validate DurationSeconds (AWS wants 900..43200), so a
    # 1-second session shows real expiry; botocore's own check is switched off.
    sts = localaws.client(
        "sts",
        local_aws.endpoint_url,
        local_aws.daemon_access_key_id,
        local_aws.daemon_secret_access_key,
        config=Config(parameter_validation=False),
    )
    with contextlib.closing(sts):
        creds = sts.assume_role(
            RoleArn=local_aws.acme_role_arn,
            RoleSessionName="s3feed-expiry",
            ExternalId=local_aws.acme_tenant,
            DurationSeconds=1,
        )["Credentials"]
    with local_aws.closing_client("s3", creds) as s3:
        deadline = time.monotonic() + 10
        while True:
            try:
                read_body(s3, local_aws.acme_bucket, "media/readme.txt")
            except ClientError as exc:
                assert exc.response["Error"]["Code"] == "ExpiredToken"
                assert exc.response["ResponseMetadata"]["HTTPStatusCode"] == 400
                break
            assert time.monotonic() < deadline, "session never expired"
            time.sleep(0.1)


# ------------------------------------------------------------------- sample media


def test_sample_media_is_in_acme_sources(local_aws: LocalAws) -> None:
    if local_aws.media_mp4_path is None or local_aws.media_ts_path is None:
        pytest.skip("no ffmpeg: no sample media")
    assert local_aws.media_mp4_key and local_aws.media_ts_key
    boxes = localaws.mp4_top_level_boxes(local_aws.media_mp4_path)
    assert boxes.index("moov") > boxes.index("mdat"), boxes
    creds = local_aws.assume(local_aws.acme_role_arn, local_aws.acme_tenant)
    with local_aws.closing_client("s3", creds) as s3:
        for key, path in (
            (local_aws.media_mp4_key, local_aws.media_mp4_path),
            (local_aws.media_ts_key, local_aws.media_ts_path),
        ):
            assert read_body(s3, local_aws.acme_bucket, key) == path.read_bytes()


# ------------------------------------------------------------------- start / stop


@pytest.fixture
def scratch_dir(tmp_path: Path, local_aws: LocalAws) -> Iterator[Path]:
    """A separate state dir that reuses the installed servers and media."""
    root = tmp_path / "local-aws"
    root.mkdir()
    for name in ("ministack-venv", "seaweed-venv", "media"):
        if (local_aws.state_dir / name).exists():
            (root / name).symlink_to(local_aws.state_dir / name)
    yield root
    # Whatever happened in the test, leave no server behind.
    localaws.stop(localaws.Paths(root))


def run_cli(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "S3FEED_LOCAL_AWS_DIR": str(root)}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )


def port_is_closed(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def assert_gone(pid: int, port: int) -> None:
    assert not localaws.alive(pid)
    assert localaws.pids_in_group(pid) == []
    assert port_is_closed(port)


def test_cli_start_stop_leaves_nothing_behind(scratch_dir: Path, local_aws: LocalAws) -> None:
    run_cli(scratch_dir, "start")
    state = json.loads((scratch_dir / "state.json").read_text())["ministack"]
    pid, port = state["pid"], state["port"]
    assert port != int(local_aws.endpoint_url.rsplit(":", 1)[1])
    assert localaws.alive(pid)
    assert not port_is_closed(port)
    # A second start finds the running server instead of starting another.
    run_cli(scratch_dir, "start")
    assert json.loads((scratch_dir / "state.json").read_text())["ministack"]["pid"] == pid
    env = json.loads(run_cli(scratch_dir, "env", "--json").stdout)
    assert env["S3FEED_LOCAL_ENDPOINT_URL"] == f"http://127.0.0.1:{port}"
    assert json.loads((scratch_dir / "env.json").read_text()) == env
    assert "export S3FEED_LOCAL_ACME_ROLE_ARN=" in run_cli(scratch_dir, "env").stdout
    assert "ministack: running" in run_cli(scratch_dir, "status").stdout

    run_cli(scratch_dir, "stop")
    deadline = time.monotonic() + 5  # the zombie is reaped by whoever adopted it
    while localaws.alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert_gone(pid, port)
    assert not (scratch_dir / "state.json").exists()
    assert not (scratch_dir / "env.json").exists()
    assert "ministack: not running" in run_cli(scratch_dir, "status").stdout
    # The session's own server is untouched.
    with local_aws.closing_client("sts") as sts:
        assert sts.get_caller_identity()["Account"] == local_aws.account_id


def test_fixture_acquire_release_stops_what_it_started(scratch_dir: Path) -> None:
    paths = localaws.Paths(scratch_dir)
    entry = localaws.acquire(paths)
    assert entry["owner"] == "pytest"
    assert localaws.release(paths) is True
    assert_gone(entry["pid"], entry["port"])


def test_fixture_release_keeps_a_cli_started_server(scratch_dir: Path) -> None:
    paths = localaws.Paths(scratch_dir)
    run_cli(scratch_dir, "start")
    entry = localaws.acquire(paths)
    assert entry["owner"] == "cli"
    assert localaws.release(paths) is False
    assert localaws.alive(entry["pid"])
    run_cli(scratch_dir, "stop")


# ------------------------------------------------------------------- SeaweedFS


def test_seaweed_role_reads_its_bucket(seaweed: Seaweed) -> None:
    creds = seaweed.assume()
    with seaweed.closing_client("s3", creds) as s3:
        assert read_body(s3, seaweed.bucket, "media/readme.txt").startswith(b"acme-films")
        head = s3.head_object(Bucket=seaweed.bucket, Key=seaweed.multipart_key)
        assert head["ETag"].strip('"').endswith("-3")
        assert head["ContentLength"] == 12 << 20
        ranged = read_body(s3, seaweed.bucket, seaweed.multipart_key, Range="bytes=100-199")
        assert ranged == localaws.sample_bytes("multipart", 12 << 20)[100:200]


def test_seaweed_enforces_principal_and_role_policy(seaweed: Seaweed) -> None:
    assert error_code(lambda: seaweed.assume(seaweed.untrusting_role_arn)) == "AccessDenied"
    creds = seaweed.assume()
    with seaweed.closing_client("s3", creds) as s3:
        code = error_code(lambda: s3.get_object(Bucket="seaweed-other", Key="secret.txt"))
        assert code == "AccessDenied"
        code = error_code(lambda: s3.put_object(Bucket=seaweed.bucket, Key="x", Body=b"x"))
        assert code == "AccessDenied"
    with seaweed.closing_client("s3", seaweed.daemon_creds) as s3:
        code = error_code(lambda: s3.get_object(Bucket=seaweed.bucket, Key="media/readme.txt"))
        assert code == "AccessDenied"


def test_seaweed_ignores_external_id_without_condition(seaweed: Seaweed) -> None:
    # Unlike AWS semantics the daemon relies on: any ExternalId is accepted when
    # the trust policy has no condition, so SeaweedFS cannot host denial tests.
    assert seaweed.assume(ExternalId="not-checked-here")["AccessKeyId"]


def test_seaweed_s3_port_is_found_among_its_ports(seaweed: Seaweed) -> None:
    keys = {
        "admin_access_key_id": seaweed.admin_access_key_id,
        "admin_secret_access_key": seaweed.admin_secret_access_key,
    }
    port = int(seaweed.endpoint_url.rsplit(":", 1)[1])
    # As if it had moved away from the port we asked for: the scan finds it.
    assert localaws.find_s3_port(seaweed.pid, 1, keys) == port
    assert port in seaweed.ports and len(seaweed.ports) > 1


def test_cli_seaweed_start_stop_leaves_nothing_behind(scratch_dir: Path) -> None:
    run_cli(scratch_dir, "start", "--seaweed")
    state = json.loads((scratch_dir / "state.json").read_text())["seaweed"]
    pid, ports = state["pid"], state["ports"]
    assert state["port"] in ports
    env = json.loads(run_cli(scratch_dir, "env", "--json").stdout)
    assert env["S3FEED_LOCAL_SEAWEED_ENDPOINT_URL"] == state["endpoint_url"]
    assert "S3FEED_LOCAL_ENDPOINT_URL" not in env  # ministack is not running there
    run_cli(scratch_dir, "stop", "--seaweed")
    deadline = time.monotonic() + 5
    while localaws.alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    for port in ports:
        assert_gone(pid, port)
    assert not (scratch_dir / "state.json").exists()
