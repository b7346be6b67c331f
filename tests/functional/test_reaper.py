"""The idle reaper against DELETE and re-creation racing with it, and a reaper
round that fails: the registry stays true and reaping goes on."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from harness import Harness

from s3feed.daemon.jobs.job import Job


def idle_clock(harness: Harness) -> list[float]:
    """Every job on one hand-driven clock, last used at 1000."""
    now = [1000.0]
    for job in harness.daemon.registry.all_jobs():
        job._monotonic = lambda: now[0]
        job.touch()
    return now


def block_close(job: Job) -> tuple[asyncio.Event, asyncio.Event]:
    """`job.close()` waits until released; `entered` is set when it starts."""
    entered, release = asyncio.Event(), asyncio.Event()
    real_close = job.close

    async def close() -> None:
        entered.set()
        await release.wait()
        await real_close()

    job.close = close  # type: ignore[method-assign]
    return entered, release


async def test_a_job_deleted_while_the_reaper_waits_is_skipped(harness: Harness) -> None:
    await harness.create_job("a")
    await harness.create_job("b")
    registry = harness.daemon.registry
    now = idle_clock(harness)
    entered, release = block_close(registry.get(0, "a"))
    now[0] += 100
    reaping = asyncio.create_task(registry.reap_idle(ttl=60))
    await entered.wait()
    assert (await harness.request("DELETE", "/v1/jobs/b")).status == 204
    release.set()
    assert await reaping == ["a"]  # b was not the reaper's to close any more
    assert len(registry) == 0


async def test_a_job_recreated_while_the_reaper_waits_stays(harness: Harness) -> None:
    await harness.create_job("a")
    await harness.create_job("b")
    registry = harness.daemon.registry
    now = idle_clock(harness)
    entered, release = block_close(registry.get(0, "a"))
    now[0] += 100
    reaping = asyncio.create_task(registry.reap_idle(ttl=60))
    await entered.wait()
    assert (await harness.request("DELETE", "/v1/jobs/b")).status == 204
    assert (await harness.create_job("b")).status == 201
    new_b = registry.get(0, "b")
    new_b._monotonic = lambda: now[0] - 100.0  # old clock: would look idle
    release.set()
    assert await reaping == ["a"]
    assert registry.get(0, "b") is new_b
    assert (await harness.request("GET", "/v1/jobs/b")).status == 200
    refresher = new_b.session._refresher
    assert refresher is not None and not refresher.done()  # its session still refreshes


async def test_a_job_busy_again_before_its_turn_is_not_reaped(harness: Harness) -> None:
    await harness.create_job("a")
    await harness.create_job("b")
    registry = harness.daemon.registry
    now = idle_clock(harness)
    entered, release = block_close(registry.get(0, "a"))
    now[0] += 100
    reaping = asyncio.create_task(registry.reap_idle(ttl=60))
    await entered.wait()
    registry.get(0, "b").stream_opened()  # a stream of b began meanwhile
    release.set()
    assert await reaping == ["a"]
    assert registry.get(0, "b").busy
    registry.get(0, "b").stream_closed()


async def test_a_failing_close_does_not_spare_the_other_idle_jobs(harness: Harness) -> None:
    await harness.create_job("a")
    await harness.create_job("b")
    registry = harness.daemon.registry
    now = idle_clock(harness)

    async def broken_close() -> None:
        raise OSError("close failed")

    registry.get(0, "a").close = broken_close  # type: ignore[method-assign]
    now[0] += 100
    assert sorted(await registry.reap_idle(ttl=60)) == ["a", "b"]
    assert len(registry) == 0


async def test_the_reaper_loop_outlives_a_failing_round(harness: Harness) -> None:
    daemon = harness.daemon
    registry = daemon.registry
    rounds = 0
    second_round = asyncio.Event()
    real_reap = registry.reap_idle

    async def flaky_reap(ttl: float) -> list[str]:
        nonlocal rounds
        rounds += 1
        if rounds == 1:
            raise RuntimeError("first round breaks")
        second_round.set()
        return await real_reap(ttl)

    registry.reap_idle = flaky_reap  # type: ignore[method-assign]
    assert daemon._reaper is not None
    daemon._reaper.cancel()
    daemon.config = replace(daemon.config, api=replace(daemon.config.api, job_idle_ttl=0.04))
    daemon._reaper = asyncio.create_task(daemon._reap_idle())
    async with asyncio.timeout(10):
        await second_round.wait()
    assert not daemon._reaper.done()
