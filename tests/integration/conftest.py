"""Integration fixtures: a real local AWS (ministack, and SeaweedFS) on 127.0.0.1.

`local_aws` (session) starts ministack through the localaws package (at the
repository root; pytest's `pythonpath` puts it on the path) unless it is
already running for this state directory (`scripts/local_aws.py start`, or
another test session), and stops it at the end only if a test session started
it and no other session still uses it.  `bucket` / `globex_bucket` give each
test a fresh bucket that the acme (resp. globex) role may read.  `seaweed`
(session) does the same for SeaweedFS, the fast store for throughput tests.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import localaws

REPO_ROOT = Path(__file__).resolve().parents[2]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.path).parents:
            item.add_marker(pytest.mark.integration)


class _Keys:
    """Clients with a server's admin keys (or given credentials), for both servers."""

    endpoint_url: str
    region: str
    admin_access_key_id: str
    admin_secret_access_key: str
    daemon_access_key_id: str
    daemon_secret_access_key: str

    def client(self, service: str, creds: dict[str, str] | None = None) -> Any:
        """A sync botocore client; admin keys unless `creds` (an STS Credentials dict)
        is given.  Close it (or use `closing_client`)."""
        if creds is None:
            key, secret, token = self.admin_access_key_id, self.admin_secret_access_key, None
        else:
            key, secret = creds["AccessKeyId"], creds["SecretAccessKey"]
            token = creds.get("SessionToken")
        return localaws.client(service, self.endpoint_url, key, secret, token, self.region)

    @contextlib.contextmanager
    def closing_client(self, service: str, creds: dict[str, str] | None = None) -> Iterator[Any]:
        c = self.client(service, creds)
        try:
            yield c
        finally:
            c.close()

    @property
    def daemon_creds(self) -> dict[str, str]:
        return {
            "AccessKeyId": self.daemon_access_key_id,
            "SecretAccessKey": self.daemon_secret_access_key,
        }


@dataclass(frozen=True)
class LocalAws(_Keys):
    """What a test needs to talk to the local AWS (all of it local and throwaway)."""

    endpoint_url: str
    region: str
    account_id: str
    daemon_access_key_id: str
    daemon_secret_access_key: str
    daemon_arn: str
    admin_access_key_id: str
    admin_secret_access_key: str
    acme_tenant: str
    acme_role_arn: str
    acme_bucket: str
    globex_tenant: str
    globex_role_arn: str
    globex_bucket: str
    untrusting_role_arn: str
    media_ts_key: str | None
    media_ts_path: Path | None
    media_mp4_key: str | None
    media_mp4_path: Path | None
    multipart_key: str
    state_dir: Path

    def assume(self, role_arn: str, external_id: str | None, **kw: Any) -> dict[str, str]:
        """AssumeRole with the daemon's keys; returns the Credentials dict."""
        args: dict[str, Any] = {"RoleArn": role_arn, "RoleSessionName": "s3feed-test", **kw}
        if external_id is not None:
            args["ExternalId"] = external_id
        with self.closing_client("sts", self.daemon_creds) as sts:
            return dict(sts.assume_role(**args)["Credentials"])


def _from_env(values: dict[str, str], state_dir: Path) -> LocalAws:
    p = localaws.ENV_PREFIX

    def opt_path(name: str) -> Path | None:
        return Path(values[p + name]) if p + name in values else None

    return LocalAws(
        endpoint_url=values[p + "ENDPOINT_URL"],
        region=values[p + "REGION"],
        account_id=values[p + "ACCOUNT_ID"],
        daemon_access_key_id=values[p + "DAEMON_ACCESS_KEY_ID"],
        daemon_secret_access_key=values[p + "DAEMON_SECRET_ACCESS_KEY"],
        daemon_arn=values[p + "DAEMON_ARN"],
        admin_access_key_id=values[p + "ADMIN_ACCESS_KEY_ID"],
        admin_secret_access_key=values[p + "ADMIN_SECRET_ACCESS_KEY"],
        acme_tenant=values[p + "ACME_TENANT"],
        acme_role_arn=values[p + "ACME_ROLE_ARN"],
        acme_bucket=values[p + "ACME_BUCKET"],
        globex_tenant=values[p + "GLOBEX_TENANT"],
        globex_role_arn=values[p + "GLOBEX_ROLE_ARN"],
        globex_bucket=values[p + "GLOBEX_BUCKET"],
        untrusting_role_arn=values[p + "UNTRUSTING_ROLE_ARN"],
        media_ts_key=values.get(p + "MEDIA_TS_KEY"),
        media_ts_path=opt_path("MEDIA_TS_PATH"),
        media_mp4_key=values.get(p + "MEDIA_MP4_KEY"),
        media_mp4_path=opt_path("MEDIA_MP4_PATH"),
        multipart_key=values[p + "MULTIPART_KEY"],
        state_dir=state_dir,
    )


@pytest.fixture(scope="session")
def local_aws() -> Iterator[LocalAws]:
    paths = localaws.Paths()
    localaws.acquire(paths)
    try:
        yield _from_env(localaws.env_vars(paths), paths.root)
    finally:
        localaws.release(paths)


@dataclass(frozen=True)
class TestBucket:
    """A fresh bucket for one test, written with the admin keys."""

    __test__ = False  # not a test class, despite the name

    name: str
    s3: Any  # admin botocore S3 client, closed by the fixture

    def put(self, key: str, body: bytes | Path, part_size: int | None = None) -> str:
        """PUT the object (multipart when part_size is given, >= 5 MiB except the
        last part); returns its ETag."""
        return str(localaws.put_object(self.s3, self.name, key, body, part_size))

    def delete(self, key: str) -> None:
        self.s3.delete_object(Bucket=self.name, Key=key)


@pytest.fixture
def put_object(local_aws: LocalAws) -> Callable[..., str]:
    """put_object(bucket, key, body, part_size=None) -> ETag, with the admin keys,
    into any bucket; multipart when part_size is given."""

    def put(bucket: str, key: str, body: bytes | Path, part_size: int | None = None) -> str:
        with local_aws.closing_client("s3") as s3:
            return str(localaws.put_object(s3, bucket, key, body, part_size))

    return put


@contextlib.contextmanager
def _fresh_bucket(local_aws: LocalAws, prefix: str) -> Iterator[TestBucket]:
    name = prefix + secrets.token_hex(6)
    with local_aws.closing_client("s3") as s3:
        s3.create_bucket(Bucket=name)
        try:
            yield TestBucket(name=name, s3=s3)
        finally:
            localaws.empty_and_delete_bucket(s3, name)


@pytest.fixture
def bucket(local_aws: LocalAws) -> Iterator[TestBucket]:
    """`s3feed-test-<hex>`: readable by the acme role, not by globex."""
    with _fresh_bucket(local_aws, localaws.TEST_BUCKET_PREFIX) as b:
        yield b


@pytest.fixture
def globex_bucket(local_aws: LocalAws) -> Iterator[TestBucket]:
    """`s3feed-test-globex-<hex>`: readable by the globex role, not by acme."""
    with _fresh_bucket(local_aws, localaws.GLOBEX_TEST_BUCKET_PREFIX) as b:
        yield b


@dataclass(frozen=True)
class Seaweed(_Keys):
    """SeaweedFS: fast S3, STS AssumeRole with principal and role policy enforced,
    but no ExternalId (a role with an ExternalId condition can never be assumed)."""

    endpoint_url: str
    region: str
    admin_access_key_id: str
    admin_secret_access_key: str
    daemon_access_key_id: str
    daemon_secret_access_key: str
    role_arn: str
    untrusting_role_arn: str
    bucket: str
    multipart_key: str
    pid: int
    ports: tuple[int, ...]

    def assume(self, role_arn: str | None = None, **kw: Any) -> dict[str, str]:
        """AssumeRole (default: the reader role) with the daemon's keys."""
        args = {"RoleArn": role_arn or self.role_arn, "RoleSessionName": "s3feed-test", **kw}
        with self.closing_client("sts", self.daemon_creds) as sts:
            return dict(sts.assume_role(**args)["Credentials"])


@pytest.fixture(scope="session")
def seaweed() -> Iterator[Seaweed]:
    paths = localaws.Paths()
    entry = localaws.acquire(paths, "seaweed")
    try:
        yield Seaweed(
            endpoint_url=entry["endpoint_url"],
            region=localaws.REGION,
            admin_access_key_id=entry["admin_access_key_id"],
            admin_secret_access_key=entry["admin_secret_access_key"],
            daemon_access_key_id=entry["daemon_access_key_id"],
            daemon_secret_access_key=entry["daemon_secret_access_key"],
            role_arn=entry["role_arn"],
            untrusting_role_arn=entry["untrusting_role_arn"],
            bucket=entry["bucket"],
            multipart_key=localaws.MULTIPART_KEY,
            pid=entry["pid"],
            ports=tuple(entry.get("ports", [entry["port"]])),
        )
    finally:
        localaws.release(paths, "seaweed")
