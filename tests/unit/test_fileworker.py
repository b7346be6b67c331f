"""FileWorker: the cache's file calls, off the loop, in the order they were issued."""

from __future__ import annotations

import asyncio
import gc
import threading
from typing import Any

import pytest

from s3feed.transfer.cache.fileworker import FileWorker


async def test_calls_run_in_the_order_issued_on_one_thread_off_the_loop() -> None:
    worker = FileWorker()
    gate = threading.Event()
    order: list[int] = []
    threads: set[int] = set()

    def call(i: int) -> int:
        gate.wait(10)  # every call is queued before the first one runs
        order.append(i)
        threads.add(threading.get_ident())
        return i

    futures = [worker.submit(call, i) for i in range(199)]
    last = asyncio.ensure_future(worker.run(call, 199))
    gate.set()
    assert await last == 199
    assert [await f for f in futures] == list(range(199))
    assert order == list(range(200))
    assert len(threads) == 1 and threading.get_ident() not in threads
    await worker.close()


async def test_a_fire_and_forget_error_reaches_its_holder_and_is_never_unretrieved() -> None:
    worker = FileWorker()
    reported: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, context: reported.append(context))

    def fail() -> None:
        raise OSError(28, "No space left on device")

    held = worker.submit(fail)
    worker.submit(fail)  # dropped at once, as a sidecar write may be
    with pytest.raises(OSError, match="No space left"):
        await held
    await worker.close()
    gc.collect()
    assert reported == []


async def test_close_waits_for_every_call_already_submitted() -> None:
    worker = FileWorker()
    release = threading.Event()
    done: list[str] = []

    def slow() -> None:
        release.wait(10)
        done.append("slow")

    worker.submit(slow)
    closing = asyncio.create_task(worker.close())
    await asyncio.sleep(0)
    assert not closing.done() and done == []
    release.set()
    await closing
    assert done == ["slow"]


async def test_closing_twice_is_fine_and_a_call_after_close_still_runs() -> None:
    worker = FileWorker()
    await worker.close()  # never started
    assert await worker.run(lambda: 1) == 1
    await worker.close()
    await worker.close()
    threads: list[int] = []
    await worker.run(lambda: threads.append(threading.get_ident()))
    assert threads and threads[0] != threading.get_ident()
    await worker.close()
