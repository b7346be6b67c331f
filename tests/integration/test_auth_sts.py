"""auth/ against the real local STS/S3 (ministack): the trust policy and the
ExternalId are checked by the server, expired credentials are refused by it.

Real time passes in two tests (a few seconds): ministack grants exactly the
DurationSeconds asked, and honours ones below STS's 900 s minimum when the
client skips parameter validation, so credentials that really expire after
4 s stand in for a proxy rewriting Expiration.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pytest
from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession
from botocore.exceptions import ClientError

from s3feed.auth.botocore_creds import aio_session_for
from s3feed.auth.clock import SystemClock
from s3feed.auth.config import StsConfig
from s3feed.auth.credentials import Credentials
from s3feed.auth.errors import AssumeRoleDenied, InvalidTenantName
from s3feed.auth.observer import NullCredentialObserver
from s3feed.auth.redact import install_secret_redaction, uninstall_secret_redaction
from s3feed.auth.session import RoleSession
from s3feed.auth.sts import AioStsClient, AssumedRole, CallerIdentity
from s3feed.auth.validate import parse_role_arn, validate_tenant_name

if TYPE_CHECKING:
    from conftest import LocalAws, TestBucket


def keys_session(key: str, secret: str, token: str | None = None) -> AioSession:
    session = AioSession()
    session.set_credentials(key, secret, token)
    return session


def daemon_factory(local_aws: LocalAws) -> Callable[[], AioSession]:
    return lambda: keys_session(local_aws.daemon_access_key_id, local_aws.daemon_secret_access_key)


@pytest.fixture
async def sts(local_aws: LocalAws) -> AsyncIterator[AioStsClient]:
    config = StsConfig(region=local_aws.region, endpoint_url=local_aws.endpoint_url)
    async with AioStsClient(config, session_factory=daemon_factory(local_aws)) as client:
        yield client


class CountingSts:
    """Wraps a StsClient and counts AssumeRole calls."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls = 0

    async def assume_role(self, **kw: Any) -> AssumedRole:
        self.calls += 1
        result: AssumedRole = await self.inner.assume_role(**kw)
        return result

    async def get_caller_identity(self) -> CallerIdentity:
        result: CallerIdentity = await self.inner.get_caller_identity()
        return result


async def test_caller_identity_is_the_daemon_user(local_aws: LocalAws, sts: AioStsClient) -> None:
    me = await sts.get_caller_identity()
    assert me.arn == local_aws.daemon_arn
    assert me.account == local_aws.account_id and me.partition == "aws"
    assert sts.identity == me
    statement = me.trust_policy("acme-films")["Statement"][0]
    assert statement["Principal"] == {"AWS": f"arn:aws:iam::{local_aws.account_id}:root"}


async def test_right_external_id_gives_a_working_session(
    local_aws: LocalAws, sts: AioStsClient
) -> None:
    session = await RoleSession.assume(
        sts,
        job_id="it-right-tenant",
        role_arn=parse_role_arn(local_aws.acme_role_arn),
        external_id=local_aws.acme_tenant,
        duration=900,
        observer=NullCredentialObserver(),
    )
    try:
        status = session.status()
        assert status.session_name == "s3feed-it-right-tenant"
        assert status.granted_duration_seconds == 900
        assert status.expires_at is not None
        life = (status.expires_at - datetime.now(UTC)).total_seconds()
        assert 800 < life <= 901
        s3_session = aio_session_for(session)
        async with s3_session.create_client(
            "s3", region_name=local_aws.region, endpoint_url=local_aws.endpoint_url
        ) as s3:
            listing = await s3.list_objects_v2(Bucket=local_aws.acme_bucket)
        assert listing["KeyCount"] >= 1
    finally:
        await session.close()


async def assume_error(local_aws: LocalAws, sts: Any, role_arn: str, tenant: str) -> Exception:
    with pytest.raises(Exception) as info:
        await RoleSession.assume(
            sts,
            job_id="it-denied",
            # Parsed here as the API parses a request: a bad tenant stops before STS.
            role_arn=parse_role_arn(role_arn),
            external_id=validate_tenant_name(tenant),
            duration=3600,
            observer=NullCredentialObserver(),
        )
    return info.value


def assert_helpful_denial(error: Exception, local_aws: LocalAws, role: str, tenant: str) -> None:
    assert isinstance(error, AssumeRoleDenied), error
    message = error.message
    assert error.code == "AssumeRoleDenied"
    assert role in message
    assert local_aws.daemon_arn in message  # the principal the role must trust
    assert repr(tenant) in message  # the ExternalId we sent
    assert f"/v1/trust-policy?TenantName={tenant}" in message


async def test_wrong_external_id_is_denied_with_a_helpful_message(
    local_aws: LocalAws, sts: AioStsClient
) -> None:
    error = await assume_error(local_aws, sts, local_aws.acme_role_arn, local_aws.globex_tenant)
    assert_helpful_denial(error, local_aws, local_aws.acme_role_arn, local_aws.globex_tenant)


async def test_role_that_does_not_trust_the_daemon_is_denied(
    local_aws: LocalAws, sts: AioStsClient
) -> None:
    role = local_aws.untrusting_role_arn
    error = await assume_error(local_aws, sts, role, local_aws.acme_tenant)
    assert_helpful_denial(error, local_aws, role, local_aws.acme_tenant)


async def test_role_that_does_not_exist_is_denied(local_aws: LocalAws, sts: AioStsClient) -> None:
    role = f"arn:aws:iam::{local_aws.account_id}:role/no-such-role"
    error = await assume_error(local_aws, sts, role, local_aws.acme_tenant)
    assert_helpful_denial(error, local_aws, role, local_aws.acme_tenant)


@pytest.mark.parametrize("tenant", ["", "a", "acme films"])
async def test_missing_or_invalid_tenant_is_refused_before_sts(
    local_aws: LocalAws, sts: AioStsClient, tenant: str
) -> None:
    counting = CountingSts(sts)
    error = await assume_error(local_aws, counting, local_aws.acme_role_arn, tenant)
    assert isinstance(error, InvalidTenantName)
    assert counting.calls == 0


async def short_credentials(local_aws: LocalAws, seconds: int) -> dict[str, Any]:
    """Real acme-role credentials that ministack expires after `seconds`."""
    config = AioConfig(parameter_validation=False)  # STS's minimum is 900; ministack's is not
    session = daemon_factory(local_aws)()
    async with session.create_client(
        "sts", region_name=local_aws.region, endpoint_url=local_aws.endpoint_url, config=config
    ) as raw:
        response = await raw.assume_role(
            RoleArn=local_aws.acme_role_arn,
            RoleSessionName="s3feed-it-short",
            ExternalId=local_aws.acme_tenant,
            DurationSeconds=seconds,
        )
    creds: dict[str, Any] = response["Credentials"]
    return creds


class ShortLivedSts:
    """The real STS, granting `life` seconds whatever was asked."""

    def __init__(self, local_aws: LocalAws, life: int) -> None:
        self.local_aws = local_aws
        self.life = life
        self.issued: list[Credentials] = []

    async def assume_role(
        self,
        *,
        role_arn: str,
        session_name: str,
        external_id: str,
        duration: int,
        policy: str | None = None,
    ) -> AssumedRole:
        raw = await short_credentials(self.local_aws, self.life)
        creds = Credentials(
            access_key_id=raw["AccessKeyId"],
            secret_access_key=raw["SecretAccessKey"],
            session_token=raw["SessionToken"],
            expiration=raw["Expiration"],
        )
        self.issued.append(creds)
        return AssumedRole(creds, assumed_role_arn="")

    async def get_caller_identity(self) -> CallerIdentity:
        raise NotImplementedError


async def test_background_refresh_keeps_a_slow_transfer_going_past_expiry(
    local_aws: LocalAws, bucket: TestBucket
) -> None:
    body = bytes(range(256)) * 64
    bucket.put("slow/object.bin", body)
    sts = ShortLivedSts(local_aws, life=4)
    session = await RoleSession.assume(
        sts,  # type: ignore[arg-type]
        job_id="it-slow",
        role_arn=parse_role_arn(local_aws.acme_role_arn),
        external_id=local_aws.acme_tenant,
        duration=900,
        observer=NullCredentialObserver(),
        clock=SystemClock(max_slice=0.1),
    )
    try:
        async with (
            aio_session_for(session).create_client(
                "s3", region_name=local_aws.region, endpoint_url=local_aws.endpoint_url
            ) as s3,
            asyncio.timeout(120),  # a hang guard: the refreshes come every few seconds
        ):
            offset, step = 0, 1024
            while True:  # one long-lived client, a slow reader
                asked_at = datetime.now(UTC)
                part = await s3.get_object(
                    Bucket=bucket.name,
                    Key="slow/object.bin",
                    Range=f"bytes={offset}-{offset + step - 1}",
                )
                async with part["Body"] as stream:
                    assert await stream.read() == body[offset : offset + step]
                # Done with a read asked for once two sets of credentials had
                # expired, the session on its fourth (three refreshes).
                if len(sts.issued) >= 4 and asked_at > sts.issued[1].expiration:
                    break
                offset = (offset + step) % len(body)
                # Real time is the behaviour: ministack expires the credentials on
                # its own clock. The pause only keeps the reader slow; how many
                # reads fit in a lifetime is not what is tested.
                await asyncio.sleep(0.25)
        assert session.status().refreshes >= 3
        assert session.status().last_refresh_error is None
    finally:
        await session.close()
    # The first credentials really did expire: without the refresh the reads would have failed.
    first = sts.issued[0]
    with (
        local_aws.closing_client(
            "s3",
            {
                "AccessKeyId": first.access_key_id,
                "SecretAccessKey": first.secret_access_key,
                "SessionToken": first.session_token or "",
            },
        ) as old_s3,
        pytest.raises(ClientError) as info,
    ):
        old_s3.get_object(Bucket=bucket.name, Key="slow/object.bin", Range="bytes=0-0")
    # ministack answers ExpiredToken at first, InvalidAccessKeyId once it forgot the session.
    assert info.value.response["Error"]["Code"] in ("ExpiredToken", "InvalidAccessKeyId")


async def test_own_expired_credentials_are_reloaded_once(local_aws: LocalAws) -> None:
    expired = await short_credentials(local_aws, 1)
    await asyncio.sleep(1.5)  # real time: ministack expires them on its own clock
    sessions = [
        keys_session(expired["AccessKeyId"], expired["SecretAccessKey"], expired["SessionToken"]),
        daemon_factory(local_aws)(),
    ]
    made: list[AioSession] = []

    def factory() -> AioSession:
        made.append(sessions[len(made)])
        return made[-1]

    config = StsConfig(region=local_aws.region, endpoint_url=local_aws.endpoint_url)
    async with AioStsClient(config, session_factory=factory) as sts:
        assumed = await sts.assume_role(
            role_arn=local_aws.acme_role_arn,
            session_name="s3feed-it-reload",
            external_id=local_aws.acme_tenant,
            duration=900,
        )
    assert len(made) == 2
    assert assumed.assumed_role_arn.endswith("/s3feed-it-reload")


async def test_no_secret_reaches_the_logs_even_with_botocore_debug_on(
    local_aws: LocalAws, sts: AioStsClient, caplog: pytest.LogCaptureFixture
) -> None:
    install_secret_redaction(quiet_aws_libraries=False)
    try:
        caplog.set_level(logging.DEBUG)
        for name in ("botocore", "aiobotocore"):
            logging.getLogger(name).setLevel(logging.DEBUG)
        session = await RoleSession.assume(
            sts,
            job_id="it-logs",
            role_arn=parse_role_arn(local_aws.acme_role_arn),
            external_id=local_aws.acme_tenant,
            duration=900,
            observer=NullCredentialObserver(),
        )
        try:
            creds = await session.current()
            async with aio_session_for(session).create_client(
                "s3", region_name=local_aws.region, endpoint_url=local_aws.endpoint_url
            ) as s3:
                await s3.list_objects_v2(Bucket=local_aws.acme_bucket)
        finally:
            await session.close()
    finally:
        uninstall_secret_redaction()
        for name in ("botocore", "aiobotocore"):
            logging.getLogger(name).setLevel(logging.NOTSET)
    text = caplog.text
    assert "AssumeRole" in text and "SecretAccessKey" in text  # botocore really logged it
    assert creds.secret_access_key not in text
    assert creds.session_token and creds.session_token not in text
