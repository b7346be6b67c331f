"""daemon/jobs/regions.py: what S3 answers the registration's one LIST decides,
and a right answer is remembered per bucket."""

from __future__ import annotations

import asyncio

import pytest

from s3feed.daemon.jobs.regions import RegionCheck
from s3feed.transfer import S3Config, parse_uri_path
from s3feed.transfer.errors import AccessDenied, InvalidUriPath, TransientError
from s3feed.transfer.store import ObjectPage
from tests.fakes.store import FakeObjectStore

LOCATION = parse_uri_path("https://media.s3.eu-west-1.amazonaws.com/shows/", S3Config())


class Answering(FakeObjectStore):
    """Answers each listing with the next of `answers` (an exception or a page)."""

    def __init__(self, *answers: BaseException | None) -> None:
        super().__init__(bucket="media", endpoint="fake://s3")
        self.answers = list(answers)
        self.prefixes: list[tuple[str, int]] = []

    async def list_page(
        self, prefix: str, *, max_keys: int = 1000, token: str | None = None
    ) -> ObjectPage:
        self.prefixes.append((prefix, max_keys))
        answer = self.answers.pop(0)
        if answer is not None:
            raise answer
        return ObjectPage([])


async def test_another_region_fails_and_is_asked_again() -> None:
    check = RegionCheck()
    store = Answering(InvalidUriPath("S3 says the bucket is in us-west-2"), None)
    with pytest.raises(InvalidUriPath, match="us-west-2"):
        await check.check(store, LOCATION)
    await check.check(store, LOCATION)  # not remembered: asked again, and right now
    assert store.prefixes == [("shows/", 1), ("shows/", 1)]


@pytest.mark.parametrize("answer", [None, AccessDenied("no s3:ListBucket")])
async def test_an_answer_in_the_region_is_remembered_per_bucket(
    answer: BaseException | None,
) -> None:
    check = RegionCheck()
    store = Answering(answer)
    await check.check(store, LOCATION)
    await check.check(store, LOCATION)
    await check.check(store, LOCATION)
    assert check.requests == 1 and len(store.prefixes) == 1


async def test_no_answer_lets_the_job_register_and_is_not_remembered() -> None:
    check = RegionCheck()
    store = Answering(TransientError("reset", "reset"), None)
    await check.check(store, LOCATION)
    await check.check(store, LOCATION)
    assert check.requests == 2


async def test_a_silent_s3_does_not_hold_the_registration() -> None:
    class Silent(Answering):
        async def list_page(
            self, prefix: str, *, max_keys: int = 1000, token: str | None = None
        ) -> ObjectPage:
            await asyncio.Event().wait()  # never answers
            raise AssertionError

    check = RegionCheck(timeout=0)  # the timeout is due at the first await
    await check.check(Silent(), LOCATION)
    assert check.requests == 1


async def test_the_memory_is_bounded() -> None:
    def at(bucket: str) -> object:
        return parse_uri_path(f"https://{bucket}.s3.eu-west-1.amazonaws.com/", S3Config())

    check = RegionCheck(keep=2)
    for bucket in ("bucket-a", "bucket-b", "bucket-c", "bucket-a"):
        await check.check(Answering(None), at(bucket))  # type: ignore[arg-type]
    assert check.requests == 4  # bucket-a was the oldest of three: forgotten
