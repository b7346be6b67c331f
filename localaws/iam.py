"""The IAM fixtures: the daemon's user, one role per tenant (trust policy
requiring sts:ExternalId = tenant name), a role the daemon can never assume,
the tenants' buckets and objects, on ministack and on SeaweedFS."""

from __future__ import annotations

import base64
import json
import secrets
import time
from pathlib import Path
from typing import Any

from .media import MULTIPART_KEY, MULTIPART_PART_SIZE, acme_objects, sample_bytes
from .s3 import closing_client, error_code, put_object
from .state import ACCOUNT_ID, ADMIN_KEY_ID, ADMIN_SECRET, START_TIMEOUT_S, Paths, write_json

DAEMON_USER = "s3feed-daemon"
ACME_TENANT = "acme-films"
ACME_ROLE = "acme-films-media-reader"
ACME_BUCKET = "acme-sources"
GLOBEX_TENANT = "globex"
GLOBEX_ROLE = "globex-media-reader"
GLOBEX_BUCKET = "globex-sources"
UNTRUSTING_ROLE = "untrusting-role"
FOREIGN_ACCOUNT = "111111111111"
TEST_BUCKET_PREFIX = "s3feed-test-"  # per-test buckets; acme may read them
GLOBEX_TEST_BUCKET_PREFIX = "s3feed-test-globex-"  # ... except these, globex's own


SEAWEED_BUCKET = "seaweed-sources"
SEAWEED_ROLE = "s3feed-seaweed-reader"
SEAWEED_WRITER_ROLE = (
    "s3feed-seaweed-writer"  # reads and writes outputs (tests/integration/test_outputs.py)
)


def _policy(*statements: dict[str, Any]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


def _trust(principal: str, external_id: str | None) -> str:
    stmt: dict[str, Any] = {
        "Effect": "Allow",
        "Principal": {"AWS": principal},
        "Action": "sts:AssumeRole",
    }
    if external_id is not None:
        stmt["Condition"] = {"StringEquals": {"sts:ExternalId": external_id}}
    return _policy(stmt)


def _read_policy(bucket_patterns: list[str], deny_patterns: list[str] | None = None) -> str:
    stmts: list[dict[str, Any]] = [
        {
            "Sid": "ReadObjects",
            "Effect": "Allow",
            "Action": ["s3:GetObject", "s3:GetObjectVersion"],
            "Resource": [f"arn:aws:s3:::{b}/*" for b in bucket_patterns],
        },
        {
            "Sid": "ListBuckets",
            "Effect": "Allow",
            "Action": ["s3:ListBucket"],
            "Resource": [f"arn:aws:s3:::{b}" for b in bucket_patterns],
        },
    ]
    if deny_patterns:
        stmts.append(
            {
                "Sid": "NotOtherTenants",
                "Effect": "Deny",
                "Action": "s3:*",
                "Resource": [f"arn:aws:s3:::{b}" for b in deny_patterns]
                + [f"arn:aws:s3:::{b}/*" for b in deny_patterns],
            }
        )
    return _policy(*stmts)


def role_arn(name: str, account: str = ACCOUNT_ID) -> str:
    return f"arn:aws:iam::{account}:role/{name}"


def provision_ministack(paths: Paths, endpoint: str) -> dict[str, Any]:
    """Users, roles, buckets and objects on a fresh ministack; returns the facts."""
    with (
        closing_client("iam", endpoint, ADMIN_KEY_ID, ADMIN_SECRET) as iam,
        closing_client("s3", endpoint, ADMIN_KEY_ID, ADMIN_SECRET) as s3,
    ):
        iam.create_user(UserName=DAEMON_USER)
        iam.put_user_policy(
            UserName=DAEMON_USER,
            PolicyName="s3feed-daemon-assume-roles",
            PolicyDocument=_policy(
                {
                    "Effect": "Allow",
                    "Action": ["sts:AssumeRole", "sts:GetCallerIdentity"],
                    "Resource": "*",
                }
            ),
        )
        key = iam.create_access_key(UserName=DAEMON_USER)["AccessKey"]
        account_root = f"arn:aws:iam::{ACCOUNT_ID}:root"
        roles = {
            ACME_ROLE: (
                _trust(account_root, ACME_TENANT),
                _read_policy(
                    [ACME_BUCKET, TEST_BUCKET_PREFIX + "*"], [GLOBEX_TEST_BUCKET_PREFIX + "*"]
                ),
            ),
            GLOBEX_ROLE: (
                _trust(account_root, GLOBEX_TENANT),
                _read_policy([GLOBEX_BUCKET, GLOBEX_TEST_BUCKET_PREFIX + "*"]),
            ),
            UNTRUSTING_ROLE: (
                _trust(f"arn:aws:iam::{FOREIGN_ACCOUNT}:root", None),
                _read_policy([ACME_BUCKET, GLOBEX_BUCKET, TEST_BUCKET_PREFIX + "*"]),
            ),
        }
        for name, (trust, permissions) in roles.items():
            iam.create_role(RoleName=name, AssumeRolePolicyDocument=trust, MaxSessionDuration=3600)
            iam.put_role_policy(
                RoleName=name, PolicyName="read-sources", PolicyDocument=permissions
            )

        objects: dict[str, dict[str, Any]] = {}
        for bucket, contents in (
            (ACME_BUCKET, acme_objects(paths)),
            (GLOBEX_BUCKET, {"media/globex-only.txt": b"globex's private source\n"}),
        ):
            s3.create_bucket(Bucket=bucket)
            for obj_key, body in contents.items():
                etag = put_object(s3, bucket, obj_key, body)
                size = body.stat().st_size if isinstance(body, Path) else len(body)
                objects[f"{bucket}/{obj_key}"] = {"Size": size, "ETag": etag}
        big = sample_bytes("multipart", 12 << 20)
        etag = put_object(s3, ACME_BUCKET, MULTIPART_KEY, big, part_size=MULTIPART_PART_SIZE)
        objects[f"{ACME_BUCKET}/{MULTIPART_KEY}"] = {"Size": len(big), "ETag": etag}
    return {
        "daemon_access_key_id": key["AccessKeyId"],
        "daemon_secret_access_key": key["SecretAccessKey"],
        "objects": objects,
    }


def seaweed_config(paths: Paths) -> dict[str, str]:
    """Keys for the admin and daemon identities, made once per state dir."""
    keys_file = paths.seaweed_conf / "keys.json"
    if keys_file.exists():
        return dict(json.loads(keys_file.read_text()))
    keys = {
        "admin_access_key_id": "SWADMIN" + secrets.token_hex(6).upper(),
        "admin_secret_access_key": secrets.token_hex(20),
        "daemon_access_key_id": "SWDAEMON" + secrets.token_hex(6).upper(),
        "daemon_secret_access_key": secrets.token_hex(20),
        "signing_key": base64.b64encode(secrets.token_bytes(32)).decode(),
    }
    paths.seaweed_conf.mkdir(parents=True, exist_ok=True)
    write_json(keys_file, keys)
    return keys


def write_seaweed_configs(paths: Paths, keys: dict[str, str]) -> tuple[Path, Path]:
    identities = {
        "identities": [
            {
                "name": "admin",
                "credentials": [
                    {
                        "accessKey": keys["admin_access_key_id"],
                        "secretKey": keys["admin_secret_access_key"],
                    }
                ],
                "actions": ["Admin", "Read", "List", "Tagging", "Write"],
            },
            {
                # No actions of its own: it reads only through the role.
                "name": DAEMON_USER,
                "credentials": [
                    {
                        "accessKey": keys["daemon_access_key_id"],
                        "secretKey": keys["daemon_secret_access_key"],
                    }
                ],
                "actions": [],
            },
        ]
    }
    read = json.loads(_read_policy([SEAWEED_BUCKET, TEST_BUCKET_PREFIX + "*"]))
    write = json.loads(
        _policy(
            {
                "Effect": "Allow",
                "Action": [
                    "s3:PutObject",
                    "s3:AbortMultipartUpload",
                    "s3:ListMultipartUploadParts",
                ],
                "Resource": [f"arn:aws:s3:::{SEAWEED_BUCKET}/*"],
            }
        )
    )

    def trust(principal: str) -> dict[str, Any]:
        # No ExternalId condition: SeaweedFS cannot evaluate one (such a role
        # can never be assumed there).  Account :root principals do not match
        # its users either; name the user.
        return dict(json.loads(_trust(principal, None)))

    iam = {
        "sts": {
            "tokenDuration": "1h",
            "maxSessionLength": "12h",
            "issuer": "s3feed-local-seaweed",
            "signingKey": keys["signing_key"],
        },
        "policy": {"defaultEffect": "Deny", "storeType": "memory"},
        "roles": [
            {
                "roleName": SEAWEED_ROLE,
                "roleArn": role_arn(SEAWEED_ROLE),
                "trustPolicy": trust(f"arn:aws:iam::{ACCOUNT_ID}:user/{DAEMON_USER}"),
                "attachedPolicies": ["s3feed-read-sources"],
            },
            {
                "roleName": SEAWEED_WRITER_ROLE,
                "roleArn": role_arn(SEAWEED_WRITER_ROLE),
                "trustPolicy": trust(f"arn:aws:iam::{ACCOUNT_ID}:user/{DAEMON_USER}"),
                "attachedPolicies": ["s3feed-read-sources", "s3feed-write-outputs"],
            },
            {
                "roleName": UNTRUSTING_ROLE,
                "roleArn": role_arn(UNTRUSTING_ROLE),
                "trustPolicy": trust(f"arn:aws:iam::{FOREIGN_ACCOUNT}:user/{DAEMON_USER}"),
                "attachedPolicies": ["s3feed-read-sources"],
            },
        ],
        "policies": [
            {"name": "s3feed-read-sources", "document": read},
            {"name": "s3feed-write-outputs", "document": write},
        ],
    }
    ids_path = paths.seaweed_conf / "identities.json"
    iam_path = paths.seaweed_conf / "iam.json"
    write_json(ids_path, identities)
    write_json(iam_path, iam)
    return ids_path, iam_path


def provision_seaweed(paths: Paths, endpoint: str, keys: dict[str, str]) -> None:
    """The reader's bucket with the acme objects, and a bucket the role may not read."""
    from botocore.exceptions import ClientError

    with closing_client(
        "s3", endpoint, keys["admin_access_key_id"], keys["admin_secret_access_key"]
    ) as s3:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:  # the gateway can answer before the filer takes writes
            try:
                s3.create_bucket(Bucket=SEAWEED_BUCKET)
                break
            except ClientError as exc:
                if error_code(exc) in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    break
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        for key, body in acme_objects(paths).items():
            put_object(s3, SEAWEED_BUCKET, key, body)
        big = sample_bytes("multipart", 12 << 20)
        put_object(s3, SEAWEED_BUCKET, MULTIPART_KEY, big, part_size=MULTIPART_PART_SIZE)
        s3.create_bucket(Bucket="seaweed-other")
        put_object(s3, "seaweed-other", "secret.txt", b"not for the role\n")
