"""Jobs over a restart, in-process (docs/design.md, Restart and upgrade): one
state directory, daemons started one after the other on the same fake STS
and S3, every answer checked against daemon/openapi.yaml."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
from harness import ACME_ROLE, ACME_URI, Harness

from s3feed.auth.clock import SystemClock
from s3feed.daemon.config import ApiConfig, Config, MetricsConfig
from s3feed.daemon.service import Daemon
from s3feed.transfer.config import CacheConfig, MiB, S3Config, TransferConfig
from tests.fakes.store import FakeObjectStore
from tests.fakes.sts import FakeSts

WRITER = "arn:aws:iam::123456789012:role/acme-writer"
BODY: dict[str, Any] = {
    "JobId": "job-r",
    "TenantName": "acme-films",
    "Source": {"Provider": "AmazonS3", "UriPath": ACME_URI, "RoleArnToAssume": ACME_ROLE},
    "EncoderUids": [4242],
    "Destination": {
        "Provider": "AmazonS3",
        "UriPath": "https://acme-out.s3.eu-west-1.amazonaws.com/renditions/",
        "RoleArnToAssume": WRITER,
    },
}
STABLE = ("JobId", "TenantName", "EncoderUids", "UriPath", "RoleArn", "CreatedAt", "SessionPolicy")


class Host:
    """What outlives one daemon: the state and cache directories, STS, S3."""

    def __init__(self, tmp_path: Path, socket_dir: Path) -> None:
        self.config = Config(
            api=ApiConfig(
                socket=socket_dir / "s3feed.sock",
                socket_mode=0o666,
                state_dir=str(tmp_path / "state"),
            ),
            metrics=MetricsConfig(listen=""),
            s3=S3Config(),
            transfer=TransferConfig(part_size=1 * MiB, concurrency=4, stream_window=4 * MiB),
            cache=CacheConfig(dir=tmp_path / "cache", max_size=256 * MiB, min_free=0),
        )
        self.sts = FakeSts(SystemClock(), account="123456789012")
        self.stores: dict[str, FakeObjectStore] = {}
        self.state = tmp_path / "state"

    def store(self, location: Any, session: Any) -> FakeObjectStore:
        return self.stores.setdefault(
            location.bucket, FakeObjectStore(bucket=location.bucket, endpoint="fake://s3")
        )

    @contextlib.asynccontextmanager
    async def daemon(self) -> AsyncIterator[Harness]:
        daemon = Daemon(self.config, sts=self.sts, make_store=self.store)
        await daemon.start()
        try:
            connector = aiohttp.UnixConnector(path=str(self.config.api.socket))
            async with aiohttp.ClientSession(connector=connector, base_url="http://localhost") as s:
                yield Harness(daemon, str(self.config.api.socket), self.sts, self.stores, s)
        finally:
            await daemon.stop()


async def until(check: Callable[[], Any], what: str) -> Any:
    async with asyncio.timeout(30):  # a hang guard; the loop waits on the daemon's answers
        while not (result := await check()):
            await asyncio.sleep(0.05)
    assert result, what
    return result


async def test_a_job_is_the_same_after_a_restart_and_fetches_without_registering(
    tmp_path: Path, socket_dir: Path
) -> None:
    host = Host(tmp_path, socket_dir)
    async with host.daemon() as h:
        h.store().put("sources/a.ts", b"x" * (3 * MiB + 1))
        created = await h.request("POST", "/v1/jobs", BODY)
        assert created.status == 201, created.json
        before = created.json
    files = sorted(p.name for p in (host.state / "jobs").iterdir())
    assert files == ["job-r.json"]
    saved = (host.state / "jobs" / "job-r.json").read_bytes()
    assert host.sts.secrets and not any(s.encode() in saved for s in host.sts.secrets)
    calls = len(host.sts.calls)

    async with host.daemon() as h:
        after = (await h.request("GET", "/v1/jobs/job-r")).json
        assert {k: after[k] for k in STABLE} == {k: before[k] for k in STABLE}
        assert after["Destination"] == before["Destination"]
        assert after["Transfers"] == []
        fetched = await h.request("POST", "/v1/jobs/job-r/fetches?wait=true", {"Key": "a.ts"})
        assert fetched.status == 200, fetched.json
        # Both sessions assumed again, each with the policy it had.
        again = host.sts.calls[calls:]
        assert sorted(c.session_name for c in again) == ["s3feed-job-r", "s3feed-job-r.outputs"]
        assert {c.policy for c in again} == {c.policy for c in host.sts.calls[:calls]}
        assert (await h.request("DELETE", "/v1/jobs/job-r")).status == 204
        assert list((host.state / "jobs").iterdir()) == []

    async with host.daemon() as h:
        assert (await h.request("GET", "/v1/jobs")).json == {"Jobs": []}


async def test_a_role_sts_refuses_at_start_leaves_the_job_listed_until_sts_answers(
    tmp_path: Path, socket_dir: Path
) -> None:
    host = Host(tmp_path, socket_dir)
    async with host.daemon() as h:
        h.store().put("sources/a.ts", b"y" * 1000)
        assert (await h.create_job("job-s")).status == 201
    host.sts.fail_always(FakeSts.server_error())
    async with host.daemon() as h:

        async def failed() -> Any:
            doc = (await h.request("GET", "/v1/jobs/job-s")).json
            return doc if doc["LastRefreshError"] else None

        doc = await until(failed, "a failed AssumeRole shown")
        assert "InternalFailure" in doc["LastRefreshError"]
        assert doc["CredentialsExpireAt"] is None
        # (The fake store signs nothing: the 503 of a request without credentials
        # is tests/integration/test_restart.py's.)
        host.sts.fail_always(None)

        async def assumed() -> Any:
            doc = (await h.request("GET", "/v1/jobs/job-s")).json
            return doc if doc["CredentialsExpireAt"] else None

        doc = await until(assumed, "the role assumed once STS answers")
        assert doc["LastRefreshError"] is None
        fetched = await h.request("POST", "/v1/jobs/job-s/fetches?wait=true", {"Key": "a.ts"})
        assert fetched.status == 200, fetched.json
