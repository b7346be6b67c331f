"""AioStsClient without a network: error translation, and the reload of our own
credentials on ExpiredToken, over a fake aiobotocore session."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest
from botocore.exceptions import (
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
    ParamValidationError,
    ReadTimeoutError,
)

from s3feed.auth.config import StsConfig
from s3feed.auth.errors import (
    AssumeRoleDenied,
    MaxSessionDurationExceeded,
    SessionPolicyTooLarge,
    StsUnavailable,
)
from s3feed.auth.policy import job_policy, packed
from s3feed.auth.sts import AioStsClient
from s3feed.auth.stserrors import translate as _translate

ROLE = "arn:aws:iam::272758771130:role/acme-media-reader"
ME = "arn:aws:iam::111122223333:user/s3feed-host"


def folder_policy(prefix: str) -> str:
    folder = SimpleNamespace(partition="aws", bucket="b", prefix=prefix, region="us-east-1")
    return packed(job_policy(folder))


def client_error(code: str, message: str = "", status: int = 400) -> ClientError:
    return ClientError(
        {
            "Error": {"Code": code, "Message": message},
            "ResponseMetadata": {"HTTPStatusCode": status},
        },
        "AssumeRole",
    )


@pytest.mark.parametrize(
    ("exc", "kind", "code", "retryable"),
    [
        (
            client_error("AccessDenied", "not authorized", 403),
            AssumeRoleDenied,
            "AccessDenied",
            None,
        ),
        (
            client_error(
                "ValidationError",
                "The requested DurationSeconds exceeds the MaxSessionDuration set for this role.",
            ),
            MaxSessionDurationExceeded,
            "ValidationError",
            None,
        ),
        (client_error("Throttling", "Rate exceeded"), StsUnavailable, "Throttling", True),
        (client_error("InternalFailure", "", 500), StsUnavailable, "InternalFailure", True),
        (client_error("ServiceUnavailable", "", 503), StsUnavailable, "ServiceUnavailable", True),
        (
            client_error("InvalidClientTokenId", "bad", 403),
            StsUnavailable,
            "InvalidClientTokenId",
            False,
        ),
        (
            client_error("RegionDisabledException", "off", 403),
            StsUnavailable,
            "RegionDisabledException",
            False,
        ),
        (client_error("ValidationError", "other"), StsUnavailable, "ValidationError", False),
        (
            client_error(
                "PackedPolicyTooLarge",
                "Packed policy consumes 104% of allotted space, please use smaller policy.",
            ),
            SessionPolicyTooLarge,
            "PackedPolicyTooLarge",
            None,
        ),
        (
            client_error("MalformedPolicyDocument", "Syntax errors in policy."),
            SessionPolicyTooLarge,
            "MalformedPolicyDocument",
            None,
        ),
        (
            client_error(
                "ValidationError",
                "1 validation error detected: Value '{\"Version\": ...}' at 'policy' failed to "
                "satisfy constraint: Member must have length less than or equal to 2048",
            ),
            SessionPolicyTooLarge,
            "ValidationError",
            None,
        ),
        (NoCredentialsError(), StsUnavailable, "NoCredentials", False),
        (EndpointConnectionError(endpoint_url="https://sts"), StsUnavailable, "NetworkError", True),
        (ReadTimeoutError(endpoint_url="https://sts"), StsUnavailable, "NetworkError", True),
        (ConnectionResetError(), StsUnavailable, "NetworkError", True),
        (ParamValidationError(report="x"), StsUnavailable, "InvalidParameter", False),
    ],
)
def test_translation_table(exc: Exception, kind: type, code: str, retryable: bool | None) -> None:
    out = _translate(exc, role_arn=ROLE, external_id="acme", duration=43200, principal=ME)
    assert type(out) is kind
    assert out.sts_code == code  # type: ignore[attr-defined]
    if retryable is not None:
        assert out.retryable is retryable  # type: ignore[attr-defined]


def test_denial_message_names_role_principal_and_external_id() -> None:
    out = _translate(
        client_error("AccessDenied", "nope", 403), role_arn=ROLE, external_id="acme", principal=ME
    )
    assert isinstance(out, AssumeRoleDenied)
    for part in (
        ROLE,
        ME,
        "'acme'",
        "GET /v1/trust-policy?TenantName=acme",
        "StringEquals",
        "nope",
    ):
        assert part in out.message


def test_a_refused_policy_says_what_to_do_and_does_not_echo_the_policy() -> None:
    policy = folder_policy("f" * 1100 + "/")
    echo = f"1 validation error detected: Value '{policy}' at 'policy' failed to satisfy"
    out = _translate(
        client_error(
            "ValidationError",
            echo + " constraint: Member must have length less than or equal to 2048",
        ),
        role_arn=ROLE,
        external_id="acme",
        principal=ME,
        policy_chars=len(policy),
    )
    assert isinstance(out, SessionPolicyTooLarge)
    assert out.code == "SessionPolicyTooLarge"
    assert f"({len(policy)} characters)" in out.message
    assert "too large for STS" in out.message and "shorter folder" in out.message
    assert "f" * 100 not in out.message
    malformed = _translate(
        client_error("MalformedPolicyDocument", "Syntax errors in policy."),
        role_arn=ROLE,
        external_id="acme",
        principal=ME,
        policy_chars=40,
    )
    assert isinstance(malformed, SessionPolicyTooLarge)
    assert "malformed" in malformed.message and "Syntax errors in policy." in malformed.message


class FakeBotoClient:
    def __init__(self, script: list[Any]) -> None:
        self.script = script  # per call: an exception to raise, or None for success
        self.params: list[dict[str, Any]] = []
        self.closed = False
        self.calls = 0
        self.gate: asyncio.Event | None = None

    async def _next(self) -> None:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        outcome = self.script.pop(0) if self.script else None
        if outcome is not None:
            raise outcome

    async def assume_role(self, **params: Any) -> dict[str, Any]:
        self.params.append(params)
        await self._next()
        return {
            "Credentials": {
                "AccessKeyId": "ASIAX",
                "SecretAccessKey": "s3cr3t",
                "SessionToken": "t0k3n",
                "Expiration": datetime(2026, 11, 28, 13, 0),  # naive: must become UTC
            },
            "AssumedRoleUser": {
                "Arn": f"arn:aws:sts::272758771130:assumed-role/r/{params['RoleSessionName']}"
            },
        }

    async def get_caller_identity(self) -> dict[str, Any]:
        await self._next()
        return {"Account": "111122223333", "Arn": ME, "UserId": "AIDA"}

    async def __aenter__(self) -> FakeBotoClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.closed = True


class FakeBotoSession:
    def __init__(self, client: FakeBotoClient) -> None:
        self.client = client
        self.config: dict[str, str] = {}
        self.create_args: dict[str, Any] = {}

    def set_config_variable(self, name: str, value: str) -> None:
        self.config[name] = value

    def create_client(self, service: str, **kw: Any) -> FakeBotoClient:
        self.create_args = {"service": service, **kw}
        return self.client


def make_client(*clients: FakeBotoClient) -> tuple[AioStsClient, list[FakeBotoSession]]:
    sessions: list[FakeBotoSession] = []

    def factory() -> FakeBotoSession:
        sessions.append(FakeBotoSession(clients[len(sessions)]))
        return sessions[-1]

    config = StsConfig(region="eu-west-1", endpoint_url="http://127.0.0.1:1")
    return AioStsClient(config, session_factory=factory), sessions


async def assume(sts: AioStsClient) -> Any:
    return await sts.assume_role(
        role_arn=ROLE, session_name="s3feed-j", external_id="acme", duration=900
    )


async def test_client_is_built_from_config_with_few_botocore_retries() -> None:
    sts, sessions = make_client(FakeBotoClient([]))
    async with sts:
        assumed = await assume(sts)
    args = sessions[0].create_args
    assert args["service"] == "sts" and args["region_name"] == "eu-west-1"
    assert args["endpoint_url"] == "http://127.0.0.1:1"
    assert args["config"].retries == {"mode": "standard", "total_max_attempts": 2}
    assert sessions[0].config["sts_regional_endpoints"] == "regional"
    assert assumed.credentials.expiration == datetime(2026, 11, 28, 13, 0, tzinfo=UTC)
    assert "s3cr3t" not in repr(assumed)
    assert sessions[0].client.closed


async def test_denial_learns_the_principal_for_its_message() -> None:
    client = FakeBotoClient([client_error("AccessDenied", "not authorized", 403)])
    sts, _ = make_client(client)
    async with sts:
        with pytest.raises(AssumeRoleDenied, match=ME):
            await assume(sts)
        assert sts.identity is not None and sts.identity.arn == ME


async def test_own_expired_token_reloads_once_and_retries() -> None:
    first = FakeBotoClient([client_error("ExpiredToken", "expired")])
    second = FakeBotoClient([])
    sts, sessions = make_client(first, second)
    async with sts:
        assumed = await assume(sts)
        assert assumed.credentials.access_key_id == "ASIAX"
        assert len(sessions) == 2
        await asyncio.sleep(0)  # the retired client closes once its last call returned
        assert first.closed and not second.closed
    assert second.closed


async def test_expired_again_after_reload_is_a_clear_non_retryable_error() -> None:
    expired = client_error("ExpiredToken", "expired")
    sts, sessions = make_client(FakeBotoClient([expired]), FakeBotoClient([expired]))
    async with sts:
        with pytest.raises(StsUnavailable, match="own AWS credentials have expired") as info:
            await assume(sts)
    assert info.value.retryable is False and info.value.sts_code == "ExpiredToken"
    assert len(sessions) == 2


async def test_many_callers_seeing_expired_token_reload_once() -> None:
    expired = client_error("ExpiredToken", "expired")
    first = FakeBotoClient([expired] * 20)
    first.gate = asyncio.Event()
    second = FakeBotoClient([])
    sts, sessions = make_client(first, second)
    async with sts:
        calls = [asyncio.create_task(assume(sts)) for _ in range(20)]
        await asyncio.sleep(0)
        first.gate.set()
        results = await asyncio.gather(*calls)
    assert len(results) == 20 and len(sessions) == 2
    assert second.calls == 20 and first.closed


async def test_use_before_start_is_an_error() -> None:
    sts, _ = make_client(FakeBotoClient([]))
    with pytest.raises(RuntimeError, match="start"):
        await assume(sts)


async def test_the_policy_is_sent_as_the_policy_parameter_only_when_given() -> None:
    boto = FakeBotoClient([])
    sts, _ = make_client(boto)
    policy = folder_policy("f/")
    async with sts:
        await sts.assume_role(
            role_arn=ROLE, session_name="s3feed-j", external_id="acme", duration=900, policy=policy
        )
        await assume(sts)
    assert boto.params[0]["Policy"] == policy
    assert "Policy" not in boto.params[1]
    assert boto.params[0]["ExternalId"] == "acme" and boto.params[0]["DurationSeconds"] == 900
