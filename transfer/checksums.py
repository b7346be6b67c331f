"""Verification of what S3 says an object's bytes are.

What is verified, in order of preference:
- a full-object CRC (CRC32, CRC32C, CRC64NVME; `checksum_type` FULL_OBJECT, or
  any CRC of a single-part object): every range keeps its own running CRC,
  updated per received slice in order, and the range CRCs are combined in
  offset order at the end (`combine`, O(log n) per range: no re-read);
- a COMPOSITE checksum of a multipart object ("base64-N"): the CRC over the
  concatenated per-part CRCs, which needs our ranges to tile the object's own
  parts (the engine aligns them); when the part size is only guessed, a
  mismatch is recorded as not verified rather than failed;
- the ETag as MD5, for a single-part object with no checksum. MD5 cannot be
  combined, so ranges that completed out of order are verified by re-reading
  the finished file, which costs far more than any CRC path (docs/design.md,
  Performance notes: Checksums). SSE-KMS and SSE-C ETags are not MD5s
  and the store does not say which objects those are: an MD5 mismatch is
  retried by re-downloading, and when the second download has the same MD5 as
  the first, the ETag is taken as not an MD5 and nothing is recorded.

Each algorithm uses the fastest implementation measured on the same bytes
(docs/design.md, Performance notes: Checksums; `bench/checksum_speed.py`):
CRC32 from isal (ISA-L's folded carry-less multiply, 3-10x zlib's), CRC32C and
CRC64NVME (S3's default for new uploads) from awscrt, which also combines all
three. A checksum of another algorithm is left out of `verified` (the fetch
document says what was checked).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable
from dataclasses import dataclass

from awscrt import checksums as crt
from isal import isal_zlib

from s3feed.transfer.errors import ChecksumMismatch

UpdateFn = Callable[[bytes | memoryview, int], int]
CombineFn = Callable[[int, int, int], int]


@dataclass(frozen=True)
class Algorithm:
    name: str  # as S3 names it in x-amz-checksum-*
    width: int  # bits
    poly: int  # reflected polynomial (init and xorout all ones)
    update: UpdateFn  # update(data, crc) -> crc, crc of b"" is 0
    combine: CombineFn  # combine(crc(A), crc(B), len(B)) -> crc(A + B), O(log len(B))

    def digest(self, crc: int) -> bytes:
        return crc.to_bytes(self.width // 8, "big")


def _load() -> dict[str, Algorithm]:
    return {
        "CRC32": Algorithm("CRC32", 32, 0xEDB88320, isal_zlib.crc32, crt.combine_crc32),
        "CRC32C": Algorithm("CRC32C", 32, 0x82F63B78, crt.crc32c, crt.combine_crc32c),
        "CRC64NVME": Algorithm(
            "CRC64NVME", 64, 0x9A6C9329AC4BC9B5, crt.crc64nvme, crt.combine_crc64nvme
        ),
    }


ALGORITHMS: dict[str, Algorithm] = _load()
_MD5_ETAG = re.compile(r'^"?([0-9a-fA-F]{32})"?$')
_MULTIPART_ETAG = re.compile(r'^"?[0-9a-fA-F]{32}-(\d+)"?$')


def crc32c(data: bytes | bytearray | memoryview) -> str:
    """Base64 CRC32C, as S3's x-amz-checksum-crc32c carries it (uploads)."""
    return base64.b64encode(crt.crc32c(data).to_bytes(4, "big")).decode()


def composite(part_checksums: list[str]) -> str:
    """S3's COMPOSITE checksum of a multipart object: CRC of the part CRCs, '-N'."""
    raw = b"".join(base64.b64decode(c) for c in part_checksums)
    return f"{crc32c(raw)}-{len(part_checksums)}"


def etag_parts(etag: str) -> int | None:
    """N for a multipart ETag ("...-N"), else None."""
    m = _MULTIPART_ETAG.match(etag)
    return int(m.group(1)) if m else None


class RangeDigest:
    """Running CRC of one range; slices must arrive in order."""

    __slots__ = ("alg", "crc", "end", "pos", "start")

    def __init__(self, alg: Algorithm, start: int, end: int) -> None:
        self.alg, self.start, self.end, self.pos, self.crc = alg, start, end, start, 0

    def update(self, offset: int, data: memoryview) -> None:
        if offset != self.pos:
            raise ValueError(f"range digest got offset {offset}, expected {self.pos}")
        self.crc = self.alg.update(data, self.crc)
        self.pos += len(data)


class Verifier:
    """What can be verified for one object, and the per-range state to do it.

    `parts` is the object's own part layout as (start, end) tuples when its
    ETag ends in -N; `parts_exact` says whether that layout was learned from
    S3 or guessed from size and N.
    """

    def __init__(
        self,
        size: int,
        etag: str,
        checksums: dict[str, str],
        checksum_type: str | None,
        parts: list[tuple[int, int]] | None = None,
        parts_exact: bool = False,
        *,
        parts_later: bool = False,
    ) -> None:
        self.size = size
        self.parts = parts
        self.parts_exact = parts_exact
        self.alg: Algorithm | None = None
        self.expected = b""
        self.composite = False
        self.unverifiable: list[str] = []
        for name, value in checksums.items():
            alg = ALGORITHMS.get(name.upper())
            raw, _, n = value.partition("-")
            if alg is None:
                self.unverifiable.append(name.upper())
                continue
            composite = bool(n) or checksum_type == "COMPOSITE"
            if composite and parts is None and not parts_later:
                self.unverifiable.append(name.upper())
                continue
            try:
                self.expected = base64.b64decode(raw, validate=True)
            except binascii.Error:
                continue
            self.alg, self.composite = alg, composite
            break
        m = _MD5_ETAG.match(etag)
        self.md5_expected = (
            m.group(1).lower() if (m and self.alg is None and not checksums) else None
        )
        self.md5_got: str | None = None
        self._digests: dict[int, RangeDigest] = {}

    def learn_parts(self, parts: list[tuple[int, int]] | None, exact: bool) -> None:
        """The part layout, learned after ranges started (`parts_later`)."""
        self.parts, self.parts_exact = parts, exact

    def range_digest(self, start: int, end: int) -> RangeDigest | None:
        """A fresh digest for range [start, end] (replacing any earlier one)."""
        if self.alg is None:
            return None
        d = RangeDigest(self.alg, start, end)
        self._digests[start] = d
        return d

    def adopt(self, digest: RangeDigest) -> None:
        """A finished digest of this object's bytes, computed elsewhere (a
        URL read's piece: transfer/cache/reads.py)."""
        if digest.alg is not self.alg or digest.pos != digest.end + 1:
            raise ValueError(f"digest {digest.start}-{digest.end} does not fit this verifier")
        self._digests[digest.start] = digest

    def missing_digests(self) -> list[tuple[int, int]]:
        """Ranges (e.g. resumed from disk) whose CRC must come from re-reading."""
        if self.alg is None or self.size == 0:
            return []
        covered = sorted((d.start, d.end) for d in self._digests.values() if d.pos > d.end)
        out, pos = [], 0
        for s, e in covered:
            if s > pos:
                out.append((pos, s - 1))
            pos = max(pos, e + 1)
        if pos < self.size:
            out.append((pos, self.size - 1))
        return out

    def verify_crc(self) -> list[str]:
        """Combine range CRCs and compare; returns the kinds verified."""
        if self.alg is None:
            return []
        alg = self.alg
        digests = sorted(self._digests.values(), key=lambda d: d.start)
        if self.composite:
            if self.parts is None or not all(
                any(ps <= d.start and d.end <= pe for ps, pe in self.parts) for d in digests
            ):
                return []  # a range across a part boundary (a stream's first): no part CRCs
            part_crcs = b""
            for ps, pe in self.parts:
                part_crcs += alg.digest(_combine_span(alg, digests, ps, pe))
            got = alg.digest(alg.update(part_crcs, 0))
            if got != self.expected:
                if not self.parts_exact:
                    return []  # our guess of the part layout may be what is wrong
                raise ChecksumMismatch(f"{alg.name} composite checksum mismatch")
            return [f"{alg.name}-COMPOSITE"]
        got = alg.digest(_combine_span(alg, digests, 0, self.size - 1) if self.size else 0)
        if got != self.expected:
            raise ChecksumMismatch(
                f"{alg.name} mismatch: S3 says {base64.b64encode(self.expected).decode()}, "
                f"received bytes give {base64.b64encode(got).decode()}"
            )
        return [alg.name]


def _combine_span(alg: Algorithm, digests: list[RangeDigest], start: int, end: int) -> int:
    crc, pos = 0, start
    for d in digests:
        if d.end < start or d.start > end:
            continue
        if d.start != pos or d.end > end or d.pos != d.end + 1:
            raise ValueError(f"ranges do not tile {start}-{end} at {pos}")
        crc = alg.combine(crc, d.crc, d.end - d.start + 1)
        pos = d.end + 1
    if pos != end + 1:
        raise ValueError(f"ranges do not tile {start}-{end}: stopped at {pos}")
    return crc
