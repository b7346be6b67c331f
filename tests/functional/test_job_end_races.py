"""A job's end against the requests that found it (docs/design.md, Roles and
isolation: a job's end), each interleaving pinned down with events: a fetch
whose HEAD is in flight when the DELETE runs, and a fetch task cancelled
before its first step. Nothing may pin, grant or wait after the close."""

from __future__ import annotations

import asyncio

from harness import Harness

from s3feed.daemon.jobs.records import TransferState
from tests.fakes.store import FakeObjectStore


def hold_heads(store: FakeObjectStore) -> tuple[asyncio.Event, asyncio.Event]:
    """The store's HEADs wait until `release`; `entered` is set when one starts."""
    entered, release = asyncio.Event(), asyncio.Event()
    real_head = store.head

    async def head(key: str, *, if_match: str | None = None) -> object:
        entered.set()
        await release.wait()
        return await real_head(key, if_match=if_match)

    store.head = head  # type: ignore[method-assign,assignment]
    return entered, release


async def test_a_fetch_whose_head_outlives_the_delete_is_cancelled_and_pins_nothing(
    harness: Harness,
) -> None:
    store = harness.store()
    store.put("sources/a.mov", b"x" * 4096)
    assert (await harness.create_job("a")).status == 201
    cache = harness.daemon.cache
    entered, release = hold_heads(store)
    fetching = asyncio.create_task(
        harness.request("POST", "/v1/jobs/a/fetches?wait=true", {"Key": "a.mov"})
    )
    await entered.wait()
    assert (await harness.request("DELETE", "/v1/jobs/a")).status == 204
    release.set()
    answer = await asyncio.wait_for(fetching, 10)
    assert answer.status == 409, answer.json  # not 200: the grant would outlive the job
    assert answer.code == "Cancelled"
    assert "while this request ran" in answer.json["Error"]["Message"]
    assert not cache._grants._pins  # no owner holds any entry


async def test_a_fetch_cancelled_before_its_first_step_answers_its_waiter(
    harness: Harness,
) -> None:
    store = harness.store()
    store.put("sources/a.mov", b"x" * 4096)
    assert (await harness.create_job("a")).status == 201
    registry = harness.daemon.registry
    job = registry.get(0, "a")
    auth = await harness.daemon.server.authorise(job.store, job.location.key_for("a.mov"))
    record = job.start_fetch("a.mov", auth)
    await registry.delete(0, "a")  # cancels the task before it ran a step
    assert record.finished.is_set()
    assert record.state is TransferState.CANCELLED
    assert record.error is not None and record.error[0] == "Cancelled"
    assert not harness.daemon.cache._grants._pins
