"""Observer protocol through which transfer/ reports to metrics (daemon/metrics.py).

`mode` is "cache" or "stream"; `op` is the S3 operation ("GetObject",
"HeadObject", "ListObjectsV2", and for outputs "PutObject", "CreateMultipartUpload",
"UploadPart", "CompleteMultipartUpload", "AbortMultipartUpload",
"ListMultipartUploads"); `outcome` is "success", "failed" or "cancelled".
"""

from __future__ import annotations

from typing import Protocol


class TransferObserver(Protocol):
    def transfer_started(self, mode: str) -> None: ...
    def transfer_finished(self, mode: str, outcome: str, seconds: float) -> None: ...
    def bytes_received(self, tenant: str, n: int) -> None: ...
    def bytes_served(self, mode: str, n: int) -> None: ...
    def s3_request(self, op: str, seconds: float) -> None:
        """One request answered; for GETs, seconds is the time to first byte."""

    def s3_request_error(self, op: str, code: str) -> None: ...
    def range_retry(self, reason: str) -> None: ...
    def stream_buffered(self, delta: int) -> None:
        """Bytes held in stream windows changed by delta (may be negative)."""

    def stream_memory(self, used: int, budget: int) -> None:
        """Bytes granted to stream windows now, against `[transfer] stream_memory`."""

    def link_estimate(self, per_connection: float, gets: int) -> None:
        """The per-connection rate learned (bytes/s) and the GETs in flight a
        transfer keeps for `target_throughput` (transfer/linkrate.py)."""

    def cache_hit(self) -> None: ...
    def cache_miss(self) -> None: ...
    def cache_eviction(self) -> None: ...
    def cache_size(self, size_bytes: int, capacity_bytes: int) -> None: ...
    def read_bytes(self, source: str, n: int) -> None:
        """Bytes a read through the cache handed out (transfer/cache/reads.py),
        `source` "cache" (present before) or "s3" (fetched for it)."""


class NullTransferObserver:
    def transfer_started(self, mode: str) -> None:
        pass

    def transfer_finished(self, mode: str, outcome: str, seconds: float) -> None:
        pass

    def bytes_received(self, tenant: str, n: int) -> None:
        pass

    def bytes_served(self, mode: str, n: int) -> None:
        pass

    def s3_request(self, op: str, seconds: float) -> None:
        pass

    def s3_request_error(self, op: str, code: str) -> None:
        pass

    def range_retry(self, reason: str) -> None:
        pass

    def stream_buffered(self, delta: int) -> None:
        pass

    def stream_memory(self, used: int, budget: int) -> None:
        pass

    def link_estimate(self, per_connection: float, gets: int) -> None:
        pass

    def cache_hit(self) -> None:
        pass

    def cache_miss(self) -> None:
        pass

    def cache_eviction(self) -> None:
        pass

    def cache_size(self, size_bytes: int, capacity_bytes: int) -> None:
        pass

    def read_bytes(self, source: str, n: int) -> None:
        pass


class UploadObserver(Protocol):
    """Outputs (transfer/upload/multipart.py, daemon/api/outputs.py): `outcome` as for transfers."""

    def upload_started(self) -> None: ...
    def upload_finished(self, outcome: str, seconds: float) -> None: ...
    def bytes_sent(self, tenant: str, n: int) -> None: ...
    def upload_part(self, seconds: float) -> None:
        """One part (or a single PutObject) acknowledged; seconds of its last attempt."""


class NullUploadObserver:
    def upload_started(self) -> None:
        pass

    def upload_finished(self, outcome: str, seconds: float) -> None:
        pass

    def bytes_sent(self, tenant: str, n: int) -> None:
        pass

    def upload_part(self, seconds: float) -> None:
        pass
