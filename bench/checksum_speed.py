#!/usr/bin/env python3
"""CPU per GiB of each checksum implementation on the same bytes.

    python bench/checksum_speed.py [--mib 64] [--slice-kib 1024 64] [--rounds 3]

For each algorithm S3 names (CRC32, CRC32C, CRC64NVME, plus MD5 and SHA256 from
hashlib), every implementation importable here is fed the same random buffer a
slice at a time (as the receive path feeds a range's running CRC: one update per
received slice), its process CPU time is taken, and its result is checked against
the others and against the algorithm's check value (CRC of b"123456789"). An
implementation that disagrees is reported as WRONG and its time is not a result.
Prints a Markdown table, best of `--rounds`, CPU-s per GiB. Missing packages are
skipped: install the candidates into a scratch venv to compare them
(awscrt, isal, zlib-ng, crc32c, google-crc32c, anycrc, fastcrc).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import time
import zlib
from collections.abc import Callable, Iterator

Update = Callable[[memoryview, int], int]
CHECK = b"123456789"
CHECK_VALUES = {"CRC32": 0xCBF43926, "CRC32C": 0xE3069283, "CRC64NVME": 0xAE8B14860A799888}


def candidates() -> Iterator[tuple[str, str, Update]]:
    """(algorithm, implementation, update(data, crc) -> crc) for what imports."""
    yield "CRC32", "zlib (stdlib)", lambda d, c: zlib.crc32(d, c)
    try:
        from awscrt import checksums as crt

        yield "CRC32", "awscrt", lambda d, c: crt.crc32(d, c)
        yield "CRC32C", "awscrt", lambda d, c: crt.crc32c(d, c)
        yield "CRC64NVME", "awscrt", lambda d, c: crt.crc64nvme(d, c)
    except ImportError:
        pass
    try:
        from isal import isal_zlib

        yield "CRC32", "isal", lambda d, c: isal_zlib.crc32(d, c)
    except ImportError:
        pass
    try:
        from zlib_ng import zlib_ng

        yield "CRC32", "zlib-ng", lambda d, c: zlib_ng.crc32(d, c)
    except ImportError:
        pass
    try:
        import crc32c

        yield "CRC32C", "crc32c", lambda d, c: crc32c.crc32c(d, c)
    except ImportError:
        pass
    try:
        import google_crc32c

        # Its C extension takes only objects without a buffer release (bytes):
        # a received slice (a view of the connection's buffer) costs a copy.
        yield "CRC32C", "google-crc32c (bytes copy)", lambda d, c: google_crc32c.extend(c, bytes(d))
    except ImportError:
        pass
    try:
        import anycrc

        for alg, model in (("CRC32", "CRC32"), ("CRC32C", "CRC32C"), ("CRC64NVME", "CRC64-NVME")):
            yield alg, "anycrc", anycrc.Model(model).calc
    except ImportError:
        pass
    try:
        import fastcrc

        yield "CRC32", "fastcrc", lambda d, c: fastcrc.crc32.iso_hdlc(d, c)
        yield "CRC32C", "fastcrc", lambda d, c: fastcrc.crc32.iscsi(d, c)
    except ImportError:
        pass


def hashes() -> Iterator[tuple[str, str, Callable[[memoryview, int], object]]]:
    for name in ("md5", "sha1", "sha256"):
        yield name.upper(), "hashlib (OpenSSL)", _hasher(name)


def _hasher(name: str) -> Callable[[memoryview, int], object]:
    def run(data: memoryview, slice_size: int) -> object:
        h = hashlib.new(name)
        for i in range(0, len(data), slice_size):
            h.update(data[i : i + slice_size])
        return h.hexdigest()

    return run


def crc_over(update: Update, data: memoryview, slice_size: int) -> int:
    crc = 0
    for i in range(0, len(data), slice_size):
        crc = update(data[i : i + slice_size], crc)
    return crc


def cpu_per_gib(run: Callable[[], object], size: int, rounds: int) -> tuple[float, object]:
    best, value = float("inf"), None
    for _ in range(rounds):
        t0 = time.process_time()
        value = run()
        best = min(best, time.process_time() - t0)
    return best * (1 << 30) / size, value


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=64, help="buffer size (default 64 MiB)")
    ap.add_argument("--slice-kib", type=int, nargs="+", default=[1024, 64])
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    data = memoryview(os.urandom(args.mib << 20))
    size = len(data)
    rows: list[tuple[str, str, list[str]]] = []
    crcs = list(candidates())
    reference: dict[str, int] = {}
    for alg, impl, update in crcs:
        check_ok = crc_over(update, memoryview(CHECK), 4) == CHECK_VALUES[alg]
        cells = []
        for kib in args.slice_kib:
            secs, value = cpu_per_gib(
                lambda u=update, k=kib: crc_over(u, data, k << 10), size, args.rounds
            )
            reference.setdefault(alg, value)  # type: ignore[arg-type]
            ok = check_ok and value == reference[alg]
            cells.append(f"{secs:.3f}" if ok else "WRONG")
        rows.append((alg, impl, cells))
    for alg, impl, run in hashes():
        cells = []
        for kib in args.slice_kib:
            secs, _ = cpu_per_gib(lambda r=run, k=kib: r(data, k << 10), size, args.rounds)
            cells.append(f"{secs:.3f}")
        rows.append((alg, impl, cells))
    heads = " | ".join(f"{k} KiB slices" for k in args.slice_kib)
    print(f"CPU-s per GiB, best of {args.rounds}, {args.mib} MiB of random bytes\n")
    print(f"| algorithm | implementation | {heads} |")
    print("|---|---|" + "---|" * len(args.slice_kib))
    order = [*CHECK_VALUES, "MD5", "SHA1", "SHA256"]
    for alg, impl, cells in sorted(rows, key=lambda r: order.index(r[0])):
        print(f"| {alg} | {impl} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
