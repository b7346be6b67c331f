"""Configuration of the data path: one frozen dataclass per component.

Only daemon/config.py reads files; it builds these from the TOML sections
[s3], [transfer] and [cache] (sizes already converted to bytes).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

MiB = 1024 * 1024
GiB = 1024 * MiB


@dataclass(frozen=True)
class S3Config:
    """Where S3 requests go. With endpoint_url set (S3-compatible stores,
    tests), every accepted AWS UriPath host maps onto it; it never widens
    which UriPaths are accepted."""

    endpoint_url: str | None = None
    addressing: Literal["auto", "path", "virtual"] = "auto"
    # PEM file of the CAs that https S3 endpoints are verified against; None:
    # AWS_CA_BUNDLE if set, else the system's store (docs/design.md, Configuration).
    ca_bundle: str | None = None

    def __post_init__(self) -> None:
        if self.ca_bundle is not None and not self.ca_bundle:
            raise ValueError("s3.ca_bundle must not be empty")
        if self.endpoint_url is not None and not self.endpoint_url.startswith(
            ("http://", "https://")
        ):
            raise ValueError("s3.endpoint_url must start with http:// or https://")
        if self.addressing not in ("auto", "path", "virtual"):
            raise ValueError("s3.addressing must be one of auto, path, virtual")


STREAM_WINDOW_PARTS = 3  # a stream's default window: ranges in flight for a reader that keeps up
MAX_RANGE_PARTS = 4  # a cache fetch's default largest GET, in parts


@dataclass(frozen=True)
class TransferConfig:
    """Ranged-GET engine.

    Memory bound: a cache-mode transfer holds no body in memory (each received
    slice is pwritten at its offset); a stream holds at most `stream_window`
    bytes ahead of its reader, and all streams together `stream_memory` (plus
    512 KiB for each stream started while it was spent: transfer/streammemory.py).
    Uploads: one holds at most `upload_memory` of part buffers, and all together
    `upload_memory_total` (plus one part for each upload started while it was
    spent: transfer/upload/memory.py).
    A stream's window may grow beyond `stream_window` to hold a part for each
    GET the link needs in flight (docs/design.md, Transfers: In flight).
    Receive buffers: one per connection, so at most `global_concurrency` x 1 MiB.
    """

    part_size: int = 16 * MiB
    # Bits per second a transfer aims for: it keeps as many GETs in flight as
    # that takes at the per-connection rate seen (transfer/linkrate.py).
    target_throughput: int = 10 * 10**9
    # Ranges in flight per transfer, fixed (as before target_throughput; windows
    # then stay within stream_window); 0: learned from target_throughput.
    concurrency: int = 0
    global_concurrency: int = 32  # ranges in flight across the daemon
    stream_window: int = 0  # 0: STREAM_WINDOW_PARTS x part_size (48 MiB with 16 MiB parts)
    # A cache fetch of a large object GETs up to this much at once (whole parts):
    # 0 is MAX_RANGE_PARTS x part_size (64 MiB); part_size turns it off.
    max_range: int = 0
    stream_memory: int = 1 * GiB  # all stream windows together
    retries: int = 10  # retry budget per transfer
    stall_timeout: float = 30.0  # seconds without a byte before a range is retried
    # Outputs (transfer/upload/multipart.py): part buffers per upload, at least one part.
    upload_memory: int = 64 * MiB
    upload_memory_total: int = 512 * MiB  # all uploads' part buffers together

    def __post_init__(self) -> None:
        if not 1 * MiB <= self.part_size <= 5 * GiB:
            raise ValueError("transfer.part_size must be between 1MiB and 5GiB")
        if self.concurrency < 0:
            raise ValueError("transfer.concurrency must be >= 0 (0: learned)")
        if self.global_concurrency < 1:
            raise ValueError("transfer.global_concurrency must be >= 1")
        if self.target_throughput <= 0:
            raise ValueError("transfer.target_throughput must be > 0")
        if self.stream_window == 0:  # docs/design.md, Performance notes (Stream window)
            object.__setattr__(self, "stream_window", STREAM_WINDOW_PARTS * self.part_size)
        if self.max_range == 0:  # docs/design.md, Transfers: Ranges
            object.__setattr__(self, "max_range", MAX_RANGE_PARTS * self.part_size)
        if self.max_range < self.part_size:
            raise ValueError("transfer.max_range must be at least transfer.part_size")
        if self.stream_window < self.part_size:
            raise ValueError("transfer.stream_window must be at least transfer.part_size")
        if self.stream_memory < self.part_size:
            raise ValueError("transfer.stream_memory must be at least transfer.part_size")
        if self.upload_memory < 1:
            raise ValueError("transfer.upload_memory must be > 0")
        if self.upload_memory_total < max(self.part_size, 5 * MiB):
            raise ValueError(
                "transfer.upload_memory_total must be at least one upload part "
                "(max(transfer.part_size, 5MiB))"
            )
        if self.retries < 0:
            raise ValueError("transfer.retries must be >= 0")
        if self.stall_timeout <= 0:
            raise ValueError("transfer.stall_timeout must be > 0")


@dataclass(frozen=True)
class CacheConfig:
    dir: Path = Path("/var/cache/s3feed")
    max_size: int = 100 * GiB  # budget for complete and partial entries
    min_free: int = 5 * GiB  # never fill the disk below this
    # The encoders' group: the directory is made traverse-only for it, so an
    # encoder of another uid can reach the path a fetch returned; the file
    # itself opens only for the uids of the jobs holding it (POSIX ACL
    # entries, docs/design.md, Cache; start-up refuses a group on
    # a file system without ACLs). None: files are the daemon's alone.
    group: str | None = None

    def __post_init__(self) -> None:
        if self.max_size <= 0:
            raise ValueError("cache.max_size must be > 0")
        if self.min_free < 0:
            raise ValueError("cache.min_free must be >= 0")
