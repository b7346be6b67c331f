"""`s3feed iam-policy` on ministack, which enforces role and session policies:
a role whose only permissions are exactly the printed policy runs a whole
job through the real daemon and CLI (list, fetch, stream, a 13-file HLS ladder
uploaded with `put --recursive`), and its own credentials reach the job's
folders and nothing else (docs/design.md, Session policy: the role policy)."""

from __future__ import annotations

import json
import secrets
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from botocore.exceptions import ClientError
from daemonproc import S3FEED, Daemon, running_daemon

if TYPE_CHECKING:
    from conftest import LocalAws, TestBucket


def uri(bucket: str, folder: str) -> str:
    return f"https://{bucket}.s3.us-east-1.amazonaws.com/{folder}"


def s3feed(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = subprocess.run(
        [S3FEED, *args], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    return proc.returncode, proc.stdout, proc.stderr


def role_with(local_aws: LocalAws, policy: dict[str, Any]) -> str:
    """A role the acme tenant's jobs may assume, with `policy` as its only permissions."""
    name = f"s3feed-iam-{secrets.token_hex(4)}"
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
    with local_aws.closing_client("iam") as iam:
        arn = iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(trust))["Role"][
            "Arn"
        ]
        iam.put_role_policy(RoleName=name, PolicyName="s3feed", PolicyDocument=json.dumps(policy))
    return str(arn)


def code_of(call: Callable[[], Any]) -> str:
    try:
        call()
    except ClientError as exc:
        return str(exc.response["Error"]["Code"])
    return "OK"


def test_a_role_with_exactly_the_printed_policy_runs_a_job(
    local_aws: LocalAws, bucket: TestBucket, tmp_path: Path
) -> None:
    bucket.put("in/show/ep1.ts", b"a source" * 1000)
    bucket.put("other/x", b"outside the job's folders")
    code, out, err = s3feed(
        "iam-policy", "--source", uri(bucket.name, "in/"), "--destination", uri(bucket.name, "out/")
    )
    assert code == 0, err
    role = role_with(local_aws, json.loads(out))

    # The role's own credentials (no session policy): the folders, nothing else.
    creds = local_aws.assume(role, local_aws.acme_tenant)
    with local_aws.closing_client("s3", creds) as s3:
        b = bucket.name
        assert code_of(lambda: s3.get_object(Bucket=b, Key="in/show/ep1.ts")) == "OK"
        assert code_of(lambda: s3.list_objects_v2(Bucket=b, Prefix="in/show/")) == "OK"
        assert code_of(lambda: s3.put_object(Bucket=b, Key="out/probe", Body=b"x")) == "OK"
        assert code_of(lambda: s3.get_object(Bucket=b, Key="other/x")) == "AccessDenied"
        assert code_of(lambda: s3.list_objects_v2(Bucket=b, Prefix="other/")) == "AccessDenied"
        assert code_of(lambda: s3.put_object(Bucket=b, Key="in/new", Body=b"x")) == "AccessDenied"
        assert code_of(lambda: s3.get_object(Bucket=b, Key="out/probe")) == "AccessDenied"

    hls = tmp_path / "hls"
    names = ["master.m3u8"] + [
        f"{r}/{n}"
        for r in ("360p", "720p", "1080p")
        for n in ("index.m3u8", "0.ts", "1.ts", "2.ts")
    ]
    assert len(names) == 13
    for name in names:
        (hls / name).parent.mkdir(parents=True, exist_ok=True)
        (hls / name).write_bytes(name.encode() * 100)

    with running_daemon(local_aws, tmp_path / "s3feed") as daemon:
        env = daemon.env
        run: Callable[..., tuple[int, str, str]] = lambda *a: s3feed(*a, env=env)  # noqa: E731
        code, _, err = run(
            "job",
            "create",
            "iam-1",
            "--tenant",
            local_aws.acme_tenant,
            "--uri",
            uri(bucket.name, "in/"),
            "--role",
            role,
            "--destination",
            uri(bucket.name, "out/"),
        )
        assert code == 0, err
        code, out, err = run("ls", "iam-1", "-h")
        assert code == 0 and out.split("\t")[-1].strip() == "show/ep1.ts", err
        code, out, err = run("fetch", "iam-1", "show/ep1.ts")
        assert code == 0, err
        assert Path(out.strip()).read_bytes() == b"a source" * 1000
        code, out, err = run("cat", "iam-1", "show/ep1.ts", "--range", "0-7")
        assert (code, out) == (0, "a source"), err
        code, out, err = run("put", "iam-1", "ep1/", str(hls), "--recursive")
        assert code == 0, err
        assert err.strip().splitlines()[-1].startswith("13 of 13 files uploaded")
        code, _, err = run("job", "delete", "iam-1")
        assert code == 0, err
        _check_outputs(bucket, names, daemon)


def _check_outputs(bucket: TestBucket, names: list[str], daemon: Daemon) -> None:
    for name in names:
        head = bucket.s3.head_object(Bucket=bucket.name, Key=f"out/ep1/{name}")
        expected = "application/vnd.apple.mpegurl" if name.endswith(".m3u8") else "video/mp2t"
        assert head["ContentType"] == expected, name
        body = bucket.s3.get_object(Bucket=bucket.name, Key=f"out/ep1/{name}")["Body"].read()
        assert body == name.encode() * 100


@pytest.mark.parametrize("kms", [False, True])
def test_the_printed_policy_is_valid_for_iam(
    local_aws: LocalAws, bucket: TestBucket, kms: bool
) -> None:
    """IAM takes the document as it is printed (with and without a KMS key)."""
    args = ["iam-policy", "--destination", uri(bucket.name, "")]
    if kms:
        args += ["--kms-key", f"arn:aws:kms:us-east-1:{local_aws.account_id}:key/abcd"]
    code, out, err = s3feed(*args)
    assert code == 0, err
    policy = json.loads(out)
    assert ("EncryptViaS3" in {s["Sid"] for s in policy["Statement"]}) is kms
    role_with(local_aws, policy)
