"""CRC combination and the Verifier's choice of what to check."""

from __future__ import annotations

import base64
import hashlib
import os
import random
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from s3feed.transfer.checksums import ALGORITHMS, Verifier, etag_parts
from s3feed.transfer.errors import ChecksumMismatch


def reference_crc(poly: int, width: int, data: bytes) -> int:
    """Bitwise reflected CRC with all-ones init and xorout (CRC32, CRC32C, CRC64NVME)."""
    mask = (1 << width) - 1
    crc = mask
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ poly if crc & 1 else crc >> 1
    return crc ^ mask


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_update_matches_reference(name: str) -> None:
    alg = ALGORITHMS[name]
    data = random.Random(1).randbytes(999)
    assert alg.update(data, 0) == reference_crc(alg.poly, alg.width, data)
    assert alg.update(data[500:], alg.update(data[:500], 0)) == alg.update(data, 0)


# The check values of the CRC catalogue: the CRC of b"123456789".
CHECK_VALUES = {"CRC32": 0xCBF43926, "CRC32C": 0xE3069283, "CRC64NVME": 0xAE8B14860A799888}


def test_every_algorithm_has_a_check_value() -> None:
    assert set(ALGORITHMS) == set(CHECK_VALUES)


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_check_value(name: str) -> None:
    alg = ALGORITHMS[name]
    assert alg.update(b"123456789", 0) == CHECK_VALUES[name]
    assert alg.digest(CHECK_VALUES[name]) == CHECK_VALUES[name].to_bytes(alg.width // 8, "big")


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_incremental_updates_of_a_received_buffer(name: str) -> None:
    """Slices as the connection hands them over: views of one reused bytearray."""
    alg = ALGORITHMS[name]
    rng = random.Random(name)
    data = rng.randbytes(3000)
    whole = reference_crc(alg.poly, alg.width, data)
    for _ in range(20):
        cuts = sorted(rng.sample(range(1, len(data)), rng.randint(1, 12)))
        crc, buf = 0, bytearray(len(data))
        for s, e in zip([0, *cuts], [*cuts, len(data)], strict=True):
            buf[: e - s] = data[s:e]
            crc = alg.update(memoryview(buf)[: e - s], crc)
        assert crc == whole
    assert alg.update(memoryview(bytearray()), whole) == whole


def test_crc32_agrees_with_zlib_on_megabytes() -> None:
    alg = ALGORITHMS["CRC32"]
    data = memoryview(random.Random(5).randbytes(5 << 20))
    crc = 0
    for off in range(0, len(data), 65536 + 17):
        crc = alg.update(data[off : off + 65536 + 17], crc)
    assert crc == zlib.crc32(data)


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_combine_over_megabytes(name: str) -> None:
    """A range of several MiB combined onto its predecessor, as ranges are."""
    alg = ALGORITHMS[name]
    rng = random.Random(7)
    a, b = rng.randbytes(1 << 20), rng.randbytes((3 << 20) + 5)
    crc_b = alg.update(b, 0)
    assert alg.combine(alg.update(a, 0), crc_b, len(b)) == alg.update(a + b, 0)
    assert alg.combine(0, crc_b, len(b)) == crc_b
    assert alg.combine(crc_b, 0, 0) == crc_b


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
@given(a=st.binary(max_size=300), b=st.binary(max_size=300))
def test_combine(name: str, a: bytes, b: bytes) -> None:
    alg = ALGORITHMS[name]
    assert alg.combine(alg.update(a, 0), alg.update(b, 0), len(b)) == alg.update(a + b, 0)


def test_crc32_is_always_there() -> None:
    assert "CRC32" in ALGORITHMS


def b64(alg_name: str, data: bytes) -> str:
    alg = ALGORITHMS[alg_name]
    return base64.b64encode(alg.digest(alg.update(data, 0))).decode()


def feed(v: Verifier, data: bytes, ranges: list[tuple[int, int]]) -> None:
    for s, e in reversed(ranges):  # out of order across ranges, in order within
        d = v.range_digest(s, e)
        assert d is not None
        for off in range(s, e + 1, 7):
            d.update(off, memoryview(data[off : min(off + 7, e + 1)]))


def test_full_object_crc_from_ranges_out_of_order() -> None:
    data = os.urandom(100)
    v = Verifier(100, '"x"', {"CRC32": b64("CRC32", data)}, "FULL_OBJECT")
    feed(v, data, [(0, 29), (30, 79), (80, 99)])
    assert v.verify_crc() == ["CRC32"] and v.md5_expected is None
    # Flip bits of the last byte: unlike writing a fixed byte, never the same data.
    bad = Verifier(
        100, '"x"', {"CRC32": b64("CRC32", data[:-1] + bytes([data[-1] ^ 0xFF]))}, "FULL_OBJECT"
    )
    feed(bad, data, [(0, 99)])
    with pytest.raises(ChecksumMismatch):
        bad.verify_crc()


def test_composite_needs_parts_and_forgives_a_guessed_layout() -> None:
    data = os.urandom(90)
    parts = [(0, 39), (40, 79), (80, 89)]
    crcs = b"".join(
        ALGORITHMS["CRC32"].digest(ALGORITHMS["CRC32"].update(data[s : e + 1], 0)) for s, e in parts
    )
    value = b64("CRC32", crcs) + "-3"
    v = Verifier(90, '"a-3"', {"CRC32": value}, "COMPOSITE", parts, True)
    feed(v, data, [(0, 19), (20, 39), (40, 79), (80, 89)])
    assert v.verify_crc() == ["CRC32-COMPOSITE"]
    wrong = [(0, 29), (30, 59), (60, 89)]
    guessed = Verifier(90, '"a-3"', {"CRC32": value}, "COMPOSITE", wrong, False)
    feed(guessed, data, wrong)
    assert guessed.verify_crc() == []
    exact = Verifier(90, '"a-3"', {"CRC32": value}, "COMPOSITE", wrong, True)
    feed(exact, data, wrong)
    with pytest.raises(ChecksumMismatch):
        exact.verify_crc()
    assert Verifier(90, '"a-3"', {"CRC32": value}, "COMPOSITE").unverifiable == ["CRC32"]


def test_md5_only_without_other_checksums() -> None:
    md5 = hashlib.md5(b"x").hexdigest()
    assert Verifier(1, f'"{md5}"', {}, None).md5_expected == md5
    assert Verifier(1, f'"{md5}"', {"CRC32": b64("CRC32", b"x")}, None).md5_expected is None
    assert Verifier(1, f'"{md5}-2"', {}, None).md5_expected is None
    assert etag_parts(f'"{md5}-12"') == 12 and etag_parts(f'"{md5}"') is None


def test_missing_digests_are_the_gaps() -> None:
    v = Verifier(100, '"x"', {"CRC32": b64("CRC32", b"")}, None)
    data = bytes(100)
    feed(v, data, [(10, 19), (50, 59)])
    assert v.missing_digests() == [(0, 9), (20, 49), (60, 99)]
