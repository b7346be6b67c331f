"""Checks that a freshly provisioned server enforces what the tests rely on
(identities, trust policies, ExternalId, role policies, signatures); each
returns the list of what it checked, which `start` prints."""

from __future__ import annotations

import contextlib
from typing import Any

from .iam import (
    ACME_BUCKET,
    ACME_ROLE,
    ACME_TENANT,
    DAEMON_USER,
    GLOBEX_BUCKET,
    GLOBEX_ROLE,
    GLOBEX_TENANT,
    SEAWEED_BUCKET,
    SEAWEED_ROLE,
    UNTRUSTING_ROLE,
    role_arn,
)
from .s3 import closing_client, expect_error
from .state import ACCOUNT_ID, LocalAwsError


def verify_ministack(endpoint: str, facts: dict[str, Any]) -> list[str]:
    """Check that ministack enforces what the tests rely on; returns what was checked."""
    checked = []
    key_id, secret = facts["daemon_access_key_id"], facts["daemon_secret_access_key"]
    with closing_client("sts", endpoint, key_id, secret) as sts:
        me = sts.get_caller_identity()
        want = f"arn:aws:iam::{ACCOUNT_ID}:user/{DAEMON_USER}"
        if me["Arn"] != want:
            raise LocalAwsError(f"daemon identity is {me['Arn']}, expected {want}")
        checked.append("daemon keys: GetCallerIdentity = user/s3feed-daemon")

        def assume(role: str, external_id: str | None) -> dict[str, str]:
            kw = {"RoleArn": role_arn(role), "RoleSessionName": "s3feed-verify"}
            if external_id is not None:
                kw["ExternalId"] = external_id
            return dict(sts.assume_role(**kw)["Credentials"])

        acme = assume(ACME_ROLE, ACME_TENANT)
        globex = assume(GLOBEX_ROLE, GLOBEX_TENANT)
        checked.append("AssumeRole with the right ExternalId: OK (acme, globex)")
        expect_error("AccessDenied", lambda: assume(ACME_ROLE, GLOBEX_TENANT), "wrong ExternalId")
        expect_error("AccessDenied", lambda: assume(ACME_ROLE, None), "missing ExternalId")
        expect_error("AccessDenied", lambda: assume(UNTRUSTING_ROLE, None), "untrusting role")
        expect_error(
            "AccessDenied", lambda: assume(UNTRUSTING_ROLE, ACME_TENANT), "untrusting role + ext"
        )
        expect_error("AccessDenied", lambda: assume("no-such-role", None), "unknown role")
        checked.append(
            "AssumeRole AccessDenied: wrong/missing ExternalId, untrusting role, unknown role"
        )

    def s3_as(creds: dict[str, str]) -> contextlib.AbstractContextManager[Any]:
        return closing_client(
            "s3", endpoint, creds["AccessKeyId"], creds["SecretAccessKey"], creds["SessionToken"]
        )

    with s3_as(acme) as s3a, s3_as(globex) as s3g:
        body = s3a.get_object(Bucket=ACME_BUCKET, Key="media/readme.txt")["Body"]
        with contextlib.closing(body):
            body.read()
        s3a.list_objects_v2(Bucket=ACME_BUCKET, Prefix="media/")
        body = s3g.get_object(Bucket=GLOBEX_BUCKET, Key="media/globex-only.txt")["Body"]
        with contextlib.closing(body):
            body.read()
        checked.append("role sessions read and list their own bucket")
        expect_error(
            "AccessDenied",
            lambda: s3g.get_object(Bucket=ACME_BUCKET, Key="media/readme.txt"),
            "globex reading acme",
        )
        expect_error(
            "AccessDenied",
            lambda: s3g.list_objects_v2(Bucket=ACME_BUCKET),
            "globex listing acme",
        )
        expect_error(
            "AccessDenied",
            lambda: s3a.get_object(Bucket=GLOBEX_BUCKET, Key="media/globex-only.txt"),
            "acme reading globex",
        )
        expect_error(
            "AccessDenied",
            lambda: s3a.put_object(Bucket=ACME_BUCKET, Key="media/x", Body=b"x"),
            "acme writing",
        )
        checked.append("role policies enforced on S3: cross-tenant reads and writes denied")
    with closing_client("s3", endpoint, key_id, secret) as s3d:
        expect_error(
            "AccessDenied",
            lambda: s3d.get_object(Bucket=ACME_BUCKET, Key="media/readme.txt"),
            "daemon's own keys on S3",
        )
    with closing_client("s3", endpoint, key_id, "not-the-secret") as s3x:
        expect_error("SignatureDoesNotMatch", s3x.list_buckets, "wrong secret")
    checked.append("daemon's own keys cannot read S3; signatures are checked")
    return checked


def verify_seaweed(endpoint: str, keys: dict[str, str]) -> list[str]:
    """Check that SeaweedFS enforces the trust principal and the role policy."""
    checked = []
    with closing_client(
        "sts", endpoint, keys["daemon_access_key_id"], keys["daemon_secret_access_key"]
    ) as sts:
        me = sts.get_caller_identity()["Arn"]
        if me != f"arn:aws:iam::{ACCOUNT_ID}:user/{DAEMON_USER}":
            raise LocalAwsError(f"seaweed: daemon identity is {me}")
        creds = sts.assume_role(RoleArn=role_arn(SEAWEED_ROLE), RoleSessionName="s3feed-verify")[
            "Credentials"
        ]
        checked.append("seaweed: daemon keys assume the reader role")
        expect_error(
            "AccessDenied",
            lambda: sts.assume_role(
                RoleArn=role_arn(UNTRUSTING_ROLE), RoleSessionName="s3feed-verify"
            ),
            "seaweed untrusting role",
        )
        checked.append("seaweed: trust policy principal enforced")
    with closing_client(
        "s3", endpoint, creds["AccessKeyId"], creds["SecretAccessKey"], creds["SessionToken"]
    ) as rs3:
        body = rs3.get_object(Bucket=SEAWEED_BUCKET, Key="media/readme.txt")["Body"]
        with contextlib.closing(body):
            body.read()
        expect_error(
            "AccessDenied",
            lambda: rs3.get_object(Bucket="seaweed-other", Key="secret.txt"),
            "seaweed role reading another bucket",
        )
        checked.append("seaweed: role policy enforced on S3")
    return checked
