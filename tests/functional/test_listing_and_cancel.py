"""Listing pages (MaxKeys, ContinuationToken) through the API, both clients and
`s3feed ls`; DELETE of a fetch. The whole daemon over its socket, fake S3/STS."""

from __future__ import annotations

import asyncio
import base64
import os
import sys

import pytest
from harness import Harness

from s3feed.client import AsyncClient, Client
from s3feed.daemon.jobs.records import TransferState

KEYS = [f"sources/show/{n:02d}.ts" for n in range(7)]


async def setup(harness: Harness) -> None:
    for key in [*KEYS, "elsewhere/secret.ts", "a-before.ts", "sources0/after.ts"]:
        harness.store().put(key, key.encode())
    assert (await harness.create_job()).status == 201


async def test_pages_follow_the_token_to_the_last(harness: Harness) -> None:
    await setup(harness)
    seen: list[str] = []
    token = None
    sizes = []
    while True:
        query = "MaxKeys=3" + (f"&ContinuationToken={token}" if token else "")
        page = (await harness.request("GET", f"/v1/jobs/job-1/objects?{query}")).json
        sizes.append(len(page["Objects"]))
        seen += [o["Key"] for o in page["Objects"]]
        token = page.get("NextContinuationToken")
        if token is None:
            break
    assert sizes == [3, 3, 1]
    assert seen == [k.removeprefix("sources/") for k in KEYS]
    whole = (await harness.request("GET", "/v1/jobs/job-1/objects?Prefix=show/0")).json
    assert "NextContinuationToken" not in whole and len(whole["Objects"]) == 7


@pytest.mark.parametrize("value", ["0", "1001", "-1", "x", "", "1e3", "99999999999999999999"])
async def test_max_keys_out_of_range_names_the_parameter(harness: Harness, value: str) -> None:
    await setup(harness)
    answer = await harness.request("GET", f"/v1/jobs/job-1/objects?MaxKeys={value}")
    assert (answer.status, answer.code) == (400, "InvalidRequest")
    assert "MaxKeys" in answer.json["Error"]["Message"]


async def test_a_token_cannot_leave_the_jobs_folder(harness: Harness) -> None:
    await setup(harness)
    # The fake's tokens are StartAfter-like (the last key, encoded), as some
    # servers' are: aim one before every key of the bucket.
    for start_after in ("", "a", "elsewhere/", "sources/show/03.ts"):
        token = base64.urlsafe_b64encode(start_after.encode()).decode() or "AA=="
        answer = await harness.request(
            "GET", f"/v1/jobs/job-1/objects?MaxKeys=1000&ContinuationToken={token}"
        )
        assert answer.status == 200
        keys = [o["Key"] for o in answer.json["Objects"]]
        assert keys and all(k.startswith("show/") for k in keys), keys
    bad = await harness.request("GET", "/v1/jobs/job-1/objects?ContinuationToken=%%%")
    assert (bad.status, bad.code) == (400, "InvalidRequest")
    long = await harness.request("GET", f"/v1/jobs/job-1/objects?ContinuationToken={'A' * 2000}")
    assert (long.status, long.code) == (400, "InvalidRequest")


async def test_both_clients_and_the_cli_follow_the_tokens(harness: Harness) -> None:
    await setup(harness)
    want = [k.removeprefix("sources/") for k in KEYS]
    client = Client(harness.socket)
    # The blocking client must not block the daemon's loop: another thread.
    got = await asyncio.to_thread(lambda: [o["Key"] for o in client.iter_objects("job-1", "", 2)])
    assert got == want
    assert [o["Key"] for o in await asyncio.to_thread(client.list_objects, "job-1")] == want
    async with AsyncClient(harness.socket) as aclient:
        assert [o["Key"] async for o in aclient.iter_objects("job-1", "show/", 3)] == want
        page = await aclient.list_objects_page("job-1", max_keys=5)
        assert len(page["Objects"]) == 5 and page["NextContinuationToken"]
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "s3feed.daemon",
        "--socket",
        harness.socket,
        "ls",
        "job-1",
        "--max-keys",
        "2",
        stdout=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        out, _ = await proc.communicate()
    assert proc.returncode == 0
    assert [line.split("\t")[-1] for line in out.decode().splitlines()] == want


async def test_delete_a_fetch(harness: Harness) -> None:
    release = asyncio.Event()

    async def hold(key: str, pos: int) -> None:
        if pos > 0:
            await release.wait()

    harness.store().put("sources/a.ts", os.urandom(3 * 1024 * 1024))
    harness.store().put("sources/small.ts", b"small")
    await setup(harness)
    missing = await harness.request("DELETE", "/v1/jobs/job-1/fetches/f999")
    assert (missing.status, missing.code) == (404, "NoSuchFetch")

    done = await harness.request("POST", "/v1/jobs/job-1/fetches?wait=true", {"Key": "small.ts"})
    assert done.status == 200
    assert (
        await harness.request("DELETE", f"/v1/jobs/job-1/fetches/{done.json['FetchId']}")
    ).status == 204
    again = await harness.request("GET", f"/v1/jobs/job-1/fetches/{done.json['FetchId']}")
    assert again.json["State"] == "done"  # a finished fetch stays as it was

    harness.store().gate = hold
    job = harness.daemon.registry.get(0, "job-1")
    waiting = asyncio.create_task(
        harness.request("POST", "/v1/jobs/job-1/fetches?wait=true", {"Key": "a.ts"})
    )
    async with asyncio.timeout(30):
        while not (running := [r for r in job.transfers.values() if not r.finished.is_set()]):
            await asyncio.sleep(0)  # the POST is on this loop: yield until it registered
        record = running[0]
        await record.progress.moving.wait()
    answer = await harness.request("DELETE", f"/v1/jobs/job-1/fetches/{record.transfer_id}")
    assert answer.status == 204
    assert record.state is TransferState.CANCELLED
    async with asyncio.timeout(30):
        waited = await waiting
    assert (waited.status, waited.code) == (409, "Cancelled")
    assert waited.json["Fetch"]["State"] == "cancelled"
    assert not job.busy
