"""daemon/api/objects.py: the Range header of GET .../objects/{Key}."""

from __future__ import annotations

import pytest

from s3feed.daemon.api.objects import parse_range
from s3feed.transfer.errors import InvalidRange


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        (None, 10, None),
        ("bytes=0-4", 10, (0, 4)),
        ("bytes=5-", 10, (5, 9)),
        ("bytes=-3", 10, (7, 9)),
        ("bytes=-30", 10, (0, 9)),
        ("bytes=2-100", 10, (2, 9)),
        ("bytes = 1 - 2", 10, (1, 2)),
        ("bytes=0-1,4-5", 10, None),  # multi-range: ignored
        ("items=0-4", 10, None),  # unparsable: ignored
        ("bytes=", 10, None),
        ("bytes=5-2", 10, None),  # last < first: invalid syntax, ignored
        ("bytes=0-" + "9" * 19, 10, (0, 9)),  # the longest offset taken
        ("bytes=-" + "9" * 19, 10, (0, 9)),
        ("bytes=0-" + "9" * 20, 10, None),  # longer: ignored, as unparsable
        ("bytes=" + "1" * 5000 + "-", 10, None),  # int() would refuse it: no 500
        ("bytes=-" + "7" * 5000, 10, None),
        ("bytes=0-" + "8" * 5000, 10, None),
    ],
)
def test_ranges(header: str | None, size: int, expected: tuple[int, int] | None) -> None:
    assert parse_range(header, size) == expected


@pytest.mark.parametrize(("header", "size"), [("bytes=10-", 10), ("bytes=-0", 10), ("bytes=0-", 0)])
def test_unsatisfiable(header: str, size: int) -> None:
    with pytest.raises(InvalidRange) as err:
        parse_range(header, size)
    assert err.value.size == size
