"""daemon/api/objects.py: the Range header of GET .../objects/{Key}."""

from __future__ import annotations

import pytest

from s3feed.daemon.api.objects import early_range, parse_range
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


@pytest.mark.parametrize(
    "header",
    [
        None,
        "bytes=0-4",
        "bytes=5-",
        "bytes=2-100",
        "bytes = 1 - 2",
        "bytes=0-1,4-5",
        "items=0-4",
        "bytes=",
        "bytes=5-2",
        "bytes=0-" + "9" * 20,
        "bytes=" + "1" * 5000 + "-",
    ],
)
def test_the_early_range_is_where_parse_range_starts(header: str | None) -> None:
    """The stream's early GET starts where the range will (docs/design.md,
    Streams: first bytes), for any object large enough."""
    guess = early_range(header)
    assert guess is not None
    chosen = parse_range(header, 10**9) or (0, 10**9 - 1)
    assert guess[0] == chosen[0]
    assert guess[1] is None or guess[1] == chosen[1]


@pytest.mark.parametrize("header", ["bytes=-3", "bytes=-" + "9" * 19])
def test_a_suffix_range_has_no_early_range(header: str) -> None:
    assert early_range(header) is None
