"""transfer/firstbytes.py: the first chunk (or the source's error) before the headers."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from s3feed.transfer import first_bytes
from s3feed.transfer.errors import AccessDenied


class Source:
    """Chunks, then `error` (if any); records how far it was read."""

    def __init__(self, chunks: list[bytes], error: Exception | None = None) -> None:
        self.chunks, self.error = chunks, error
        self.pulled = 0

    async def _gen(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            self.pulled += 1
            yield chunk
        if self.error is not None:
            raise self.error

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._gen()


async def test_the_first_chunk_is_read_then_handed_out_with_the_rest() -> None:
    source = Source([b"a", b"bc", b"d"])
    chunks = await first_bytes(source)
    assert source.pulled == 1, "only the first chunk is awaited before the headers"
    assert [c async for c in chunks] == [b"a", b"bc", b"d"]


async def test_a_source_failing_before_its_first_chunk_raises_at_once() -> None:
    with pytest.raises(AccessDenied):
        await first_bytes(Source([], AccessDenied("no")))


async def test_a_failure_after_the_first_chunk_comes_through_the_iterator() -> None:
    chunks = await first_bytes(Source([b"a"], AccessDenied("later")))
    got = []
    with pytest.raises(AccessDenied):
        async for chunk in chunks:
            got.append(chunk)
    assert got == [b"a"]


async def test_an_empty_source_is_an_empty_iterator() -> None:
    assert [c async for c in await first_bytes(Source([]))] == []
