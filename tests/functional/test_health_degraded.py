"""`/healthz` and `s3feed status` when the daemon's own credentials are broken:
degraded, with the reason, and `s3feed status` exits 5 (docs/design.md, Socket
API and CLI). The whole daemon in-process over its socket, fake STS that
refuses the daemon's own credentials from before the start."""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from harness import Harness

from s3feed.auth import StsUnavailable
from s3feed.auth.clock import SystemClock
from s3feed.daemon.config import ApiConfig, Config, MetricsConfig
from s3feed.daemon.service import Daemon
from s3feed.transfer.config import CacheConfig, S3Config
from tests.fakes.sts import FakeSts

REFUSED = StsUnavailable(
    "STS refused the daemon's own credentials (InvalidClientTokenId: The security token "
    "included in the request is invalid)",
    sts_code="InvalidClientTokenId",
)


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="s3feed-", dir="/tmp"))
    yield path
    for child in path.iterdir():
        child.unlink()
    path.rmdir()


@pytest.fixture
async def broken(tmp_path: Path, socket_dir: Path) -> AsyncIterator[Harness]:
    sts = FakeSts(SystemClock(), account="123456789012")
    sts.fail_always(REFUSED)
    config = Config(
        api=ApiConfig(socket=socket_dir / "s3feed.sock"),
        metrics=MetricsConfig(listen=""),
        s3=S3Config(),
        cache=CacheConfig(dir=tmp_path / "cache", max_size=1 << 20, min_free=0),
    )
    daemon = Daemon(config, sts=sts)
    await daemon.start()
    connector = aiohttp.UnixConnector(path=str(config.api.socket))
    async with aiohttp.ClientSession(connector=connector, base_url="http://localhost") as session:
        try:
            yield Harness(daemon, str(config.api.socket), sts, {}, session)
        finally:
            await daemon.stop()


async def status(h: Harness, *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "s3feed.daemon",
        "--socket",
        h.socket,
        *args,
        "status",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):  # the daemon runs on this loop: another process
        out, _ = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_broken_daemon_credentials_are_degraded_until_sts_takes_them(
    broken: Harness,
) -> None:
    health = await broken.request("GET", "/healthz")
    assert health.status == 200  # alive: what needs no STS still works
    assert health.json["Status"] == "degraded" and health.json["Principal"] is None
    assert health.json["Problems"] == [
        {"Code": "StsUnavailable", "Message": health.json["Problems"][0]["Message"]}
    ]
    assert "InvalidClientTokenId" in health.json["Problems"][0]["Message"]
    code, out = await status(broken)
    assert code == 5
    assert out.splitlines()[:2] == [
        "status: degraded",
        f"  StsUnavailable: {health.json['Problems'][0]['Message']}",
    ]
    assert "principal: unknown" in out
    code, out = await status(broken, "--json")
    assert code == 5 and json.loads(out)["Status"] == "degraded"

    broken.sts.fail_always(None)  # the credentials work again
    health = await broken.request("GET", "/healthz")
    assert (health.json["Status"], health.json["Problems"]) == ("ok", [])
    assert health.json["Principal"] == broken.sts.identity.arn
    code, out = await status(broken)
    assert code == 0 and out.startswith("status: ok\n")


async def test_credentials_that_break_later_are_degraded_until_an_assume_role_works(
    harness: Harness,
) -> None:
    """The identity was learned at the start; then STS refuses the daemon's own
    credentials in a registration's AssumeRole: degraded, with STS's code,
    until an AssumeRole succeeds again. No STS call of its own."""
    assert (await harness.request("GET", "/healthz")).json["Status"] == "ok"
    harness.sts.fail_always(REFUSED)
    refused = await harness.create_job("job-1")
    assert (refused.status, refused.code) == (503, "StsUnavailable")
    calls = harness.sts.identity_calls
    health = (await harness.request("GET", "/healthz")).json
    assert health["Status"] == "degraded" and health["Principal"] is not None
    (problem,) = health["Problems"]
    assert problem["Code"] == "StsUnavailable" and "InvalidClientTokenId" in problem["Message"]
    assert harness.sts.identity_calls == calls
    code, out = await status(harness)
    assert code == 5 and out.startswith("status: degraded\n")

    harness.sts.fail_always(None)
    assert (await harness.create_job("job-2")).status == 201
    assert (await harness.request("GET", "/healthz")).json["Problems"] == []
    assert (await status(harness))[0] == 0
