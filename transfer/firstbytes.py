"""A reader's first bytes before its answer's headers: `first_bytes`.

An HTTP answer's status leaves with its headers; once they are out, a failure
can only cut the body short. So an answer that carries an object's bytes
(a socket stream, a URL read) waits until its source has produced the first
chunk, or failed: the first S3 request's failure for good (its retries spent,
or final at once: AccessDenied, SourceChanged...) is then the answer's status
and error document (docs/design.md, Socket API: streams). The headers leave
with the first chunk, so the first byte reaches the reader no later than it
did when the headers went first.

    chunks = await first_bytes(delivery)   # raises what the source failed with
    await response.prepare(request)         # only now: 200 / 206 and the headers
    async for chunk in chunks: ...          # the first chunk, then the rest

Any async iterable of chunks works (a `Delivery`, an `ObjectStream`);
cancellation spreads as through the source itself.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator


async def first_bytes(chunks: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    """Wait for the first chunk of `chunks` (or its error, raised here); the
    returned iterator yields that chunk, then the rest."""
    source = aiter(chunks)
    try:
        first = await anext(source)
    except StopAsyncIteration:
        return _then(None, source)
    return _then(first, source)


async def _then(first: bytes | None, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    if first is None:
        return
    yield first
    async for chunk in rest:
        yield chunk
