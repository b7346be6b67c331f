"""All uploads' part buffers within `[transfer] upload_memory_total`
(transfer/upload/memory.py), driven through transfer/upload/multipart.py with one
FakeUploadStore per upload (each with its own gate, so a test decides which
upload's parts S3 acknowledges)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

import pytest

from s3feed.transfer.errors import TransientError
from s3feed.transfer.upload.memory import PartBuffers, UploadMemory
from s3feed.transfer.upload.multipart import Upload, UploadConfig, UploadResult, upload
from tests.fakes.upload import FakeUploadStore

MiB = 1024 * 1024
PART = 5 * MiB
pytestmark = pytest.mark.timeout(60)


class Body:
    def __init__(self, data: bytes, chunk: int = 1 * MiB) -> None:
        self.data, self.chunk, self.pos = data, chunk, 0

    async def read(self, n: int) -> bytes:
        await asyncio.sleep(0)
        out = self.data[self.pos : self.pos + min(n, self.chunk)]
        self.pos += len(out)
        return out


class Watched(UploadMemory):
    """Checks the bound at every change: used <= budget + PART x floors taken while spent."""

    def __init__(self, budget: int) -> None:
        super().__init__(budget)
        self.overdrawn_floors = 0

    def floor(self, n: int) -> None:
        if self.free < n:
            self.overdrawn_floors += 1
        super().floor(n)

    def _add(self, n: int) -> None:
        super()._add(n)
        assert 0 <= self.used <= self.budget + self.overdrawn_floors * PART


async def _no_sleep(_: float) -> None:
    return None


async def until(what: str, check: Callable[[], bool]) -> None:
    """Let the loop run until `check()` holds (no timed sleeps; bounded)."""
    for _ in range(10_000):
        if check():
            return
        await asyncio.sleep(0)
    raise AssertionError(f"never: {what}")


async def settle() -> None:
    """Let every task run until it blocks."""
    for _ in range(200):
        await asyncio.sleep(0)


class Run:
    """One upload of `parts` parts into its own gated store."""

    def __init__(self, memory: UploadMemory, parts: int, *, per_upload: int = 4 * PART) -> None:
        self.data = os.urandom(parts * PART + 123)
        self.body = Body(self.data)
        self.store = FakeUploadStore()
        self.store.gate = asyncio.Event()
        config = UploadConfig(part_size=PART, memory=per_upload, retries=2)
        self.task: asyncio.Task[UploadResult] = asyncio.create_task(
            upload(
                self.body,
                self.store,
                "out/x",
                config=config,
                state=Upload("out/x"),
                memory=memory,
                sleep=_no_sleep,
            )
        )

    @property
    def parts_read(self) -> int:
        return self.body.pos // PART

    async def finish(self) -> None:
        assert self.store.gate is not None
        self.store.gate.set()
        await self.task
        assert self.store.objects["out/x"].data == self.data
        assert not self.store.uploads


def test_uploads_share_the_budget_and_only_floors_overdraw_it() -> None:
    async def main() -> None:
        memory = Watched(3 * PART)
        a = Run(memory, 6)
        await until("a fills the budget", lambda: a.store.in_flight == 3)
        await settle()
        # Each upload may hold 4 buffers, but the budget has 3: a waits, it does not fail.
        assert (a.parts_read, memory.used) == (3, 3 * PART)
        b, c = Run(memory, 6), Run(memory, 6)
        await until(
            "b and c start on their floors", lambda: b.store.in_flight == 1 == c.store.in_flight
        )
        await settle()
        assert (a.parts_read, b.parts_read, c.parts_read) == (3, 1, 1)
        assert memory.used == 3 * PART + 2 * PART == memory.budget + memory.overdrawn_floors * PART
        assert not (a.task.done() or b.task.done() or c.task.done())
        await a.finish()
        # a's three buffers went back: b and c grow into the free part, up to the budget.
        await until("b and c use a's buffers", lambda: memory.used == memory.budget)
        await settle()
        assert b.store.in_flight + c.store.in_flight == 3 and memory.used == memory.budget
        await b.finish()
        await c.finish()
        assert memory.used == 0
        assert memory.peak == 5 * PART

    asyncio.run(main())


def test_an_overdrawn_floor_goes_back_when_its_upload_ends() -> None:
    async def main() -> None:
        memory = Watched(2 * PART)
        a = Run(memory, 4)
        await until("a fills the budget", lambda: a.store.in_flight == 2)
        b = Run(memory, 4)
        await until("b on its floor", lambda: b.store.in_flight == 1)
        await settle()
        assert b.parts_read == 1
        # b goes part by part on its floor alone (the budget is a's), and ends.
        await b.finish()
        assert memory.used == 2 * PART  # b's floor went back, a still holds its two
        await a.finish()
        assert memory.used == 0 and memory.overdrawn_floors == 1

    asyncio.run(main())


def test_buffers_go_back_when_an_upload_fails_and_is_aborted() -> None:
    async def main() -> None:
        memory = Watched(3 * PART)
        a = Run(memory, 6)
        a.store.failures["UploadPart"] = [TransientError("503", "server_error")] * 10
        await until("a fills the budget", lambda: a.store.in_flight == 3)
        b = Run(memory, 3)
        await until("b on its floor", lambda: b.store.in_flight == 1)
        assert memory.used == 4 * PART
        assert a.store.gate is not None
        a.store.gate.set()
        with pytest.raises(TransientError):
            await a.task
        assert "AbortMultipartUpload" in a.store.calls and not a.store.uploads
        # a's three went back; b, on its floor, grows into the free part.
        await until("b grows", lambda: b.store.in_flight == 3)
        assert memory.used == 3 * PART
        await b.finish()
        assert memory.used == 0

    asyncio.run(main())


def test_buffers_go_back_when_an_upload_is_cancelled() -> None:
    async def main() -> None:
        memory = Watched(3 * PART)
        a = Run(memory, 6)
        await until("a fills the budget", lambda: a.store.in_flight == 3)
        b = Run(memory, 6)
        await until("b on its floor", lambda: b.store.in_flight == 1)
        a.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await a.task
        assert "AbortMultipartUpload" in a.store.calls and not a.store.uploads
        # a gave back its three: b (still gated) grows into the free part.
        await until("b grows", lambda: b.store.in_flight == 3)
        await settle()
        assert memory.used == 3 * PART and b.parts_read == 3
        await b.finish()
        assert memory.used == 0

    asyncio.run(main())


def test_a_single_put_object_holds_one_buffer_until_it_is_done() -> None:
    async def main() -> None:
        memory = Watched(PART)
        store = FakeUploadStore()
        data = os.urandom(PART - 1)
        result = await upload(
            Body(data),
            store,
            "out/y",
            config=UploadConfig(part_size=PART),
            state=Upload("out/y"),
            memory=memory,
        )
        assert result.size == PART - 1 and store.objects["out/y"].data == data
        assert (memory.used, memory.peak) == (0, PART)

    asyncio.run(main())


def test_part_buffers_take_from_the_free_budget_only() -> None:
    async def main() -> None:
        memory = UploadMemory(10)
        first = PartBuffers(memory, 4, most=3)
        second = PartBuffers(memory, 4, most=3)
        assert memory.used == 8  # two floors, within the budget
        await first.acquire()  # its floor
        waiting = asyncio.create_task(first.acquire())  # 8 + 4 > 10: no second buffer
        await settle()
        assert not waiting.done() and memory.used == 8
        first.release()  # its floor came free: the waiter gets it
        await waiting
        assert (first.held, first.in_use, memory.used) == (1, 1, 8)
        waiting = asyncio.create_task(first.acquire())
        await settle()
        assert not waiting.done()
        second.close()  # 4 free now: first takes one more
        await waiting
        assert (first.held, first.in_use, memory.used) == (2, 2, 8)
        first.release()  # a buffer beyond the floor goes back at once
        assert (first.held, memory.used) == (1, 4)
        first.release()
        first.close()
        assert memory.used == 0
        first.close()  # twice is harmless
        assert memory.used == 0

    asyncio.run(main())
