"""Every metric s3feed exports, defined against a registry it is given.

`Metrics` implements the observer protocols of auth/ (CredentialObserver)
and transfer/ (TransferObserver); those packages never import
prometheus_client. The dashboards and alert rules in grafana/ use only the
names defined here. No per-job labels: `tenant`, `mode`, `op`, `reason`,
`outcome`, `code`, `limit` and `route` (a route template) are the only label
dimensions. Label values that can
be known in advance are exported at 0 from the start, so rate() and absent()
behave from the first scrape.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from s3feed.transfer import RETRY_REASONS

MODES = ("cache", "stream")
OUTCOMES = ("success", "failed", "cancelled")
S3_OPS = (
    "GetObject",
    "HeadObject",
    "ListObjectsV2",
    "PutObject",
    "CreateMultipartUpload",
    "UploadPart",
    "CompleteMultipartUpload",
    "AbortMultipartUpload",
)

# Time to first byte and request latency on loopback are milliseconds; on
# AWS tens of milliseconds to seconds.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
# The event loop's lag: under a millisecond when idle; the watchdog kills
# the daemon at 20 s (docs/design.md, Configuration: under systemd).
LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
DURATION_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400)


LIMIT_KEYS = (
    "jobs_per_uid",
    "streams_per_uid",
    "connections_per_uid",
    "job_creates_per_minute_per_uid",
    "uploads_per_uid",
)


class Metrics:
    def __init__(self, registry: CollectorRegistry, version: str) -> None:
        # *_created series double the exposition and no dashboard reads them.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = registry
        r = registry
        ProcessCollector(registry=r)
        # Exported as s3feed_build_info{version}.
        Info("s3feed_build", "Version of the running s3feed.", registry=r).info(
            {"version": version}
        )
        self.jobs_active = Gauge(
            "s3feed_jobs_active", "Jobs registered and not deleted.", registry=r
        )
        self.transfers_active = Gauge(
            "s3feed_transfers_active", "Transfers running now.", ["mode"], registry=r
        )
        self.transfers = Counter(
            "s3feed_transfers", "Transfers finished, by outcome.", ["mode", "outcome"], registry=r
        )
        self.received = Counter(
            "s3feed_received_bytes", "Bytes received from S3, by tenant.", ["tenant"], registry=r
        )
        self.served = Counter(
            "s3feed_served_bytes",
            "Bytes handed to encoders (streamed or cached).",
            ["mode"],
            registry=r,
        )
        self.transfer_duration = Histogram(
            "s3feed_transfer_duration_seconds",
            "Wall time of finished transfers.",
            ["mode"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.s3_requests = Counter(
            "s3feed_s3_requests", "S3 requests answered.", ["op"], registry=r
        )
        self.s3_errors = Counter(
            "s3feed_s3_request_errors",
            "S3 requests that failed, by S3 error code.",
            ["op", "code"],
            registry=r,
        )
        self.s3_duration = Histogram(
            "s3feed_s3_request_duration_seconds",
            "S3 request latency; time to first byte for GetObject.",
            ["op"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.retries = Counter(
            "s3feed_range_retries", "Ranges retried, by reason.", ["reason"], registry=r
        )
        self.stream_buffered_bytes = Gauge(
            "s3feed_stream_buffered_bytes",
            "Bytes held in stream windows ahead of readers.",
            registry=r,
        )
        self.limit_refusals = Counter(
            "s3feed_limit_refusals",
            "Requests and connections refused with 429 LimitExceeded, by [limits] key.",
            ["limit"],
            registry=r,
        )
        self.stream_memory_budget = Gauge(
            "s3feed_stream_memory_budget_bytes",
            "[transfer] stream_memory: the budget of all stream windows together.",
            registry=r,
        )
        self.stream_memory_used = Gauge(
            "s3feed_stream_memory_used_bytes",
            "Bytes granted to stream windows (their capacities), against the budget.",
            registry=r,
        )
        self.connection_rate = Gauge(
            "s3feed_range_connection_rate_bytes_per_second",
            "What one GET connection carries, as learned from the GETs seen (0 before any).",
            registry=r,
        )
        self.gets_wanted = Gauge(
            "s3feed_range_gets_wanted",
            "GETs in flight a transfer keeps to reach [transfer] target_throughput (0 before any rate is seen).",
            registry=r,
        )
        self.upload_memory_budget = Gauge(
            "s3feed_upload_memory_budget_bytes",
            "[transfer] upload_memory_total: the budget of all uploads' part buffers.",
            registry=r,
        )
        self.upload_memory_used = Gauge(
            "s3feed_upload_memory_used_bytes",
            "Bytes of part buffers held by uploads, against the budget (floors may overdraw it).",
            registry=r,
        )
        self.assume_role_calls = Counter(
            "s3feed_assume_role", "STS AssumeRole calls, refreshes included.", registry=r
        )
        self.assume_role_failures = Counter(
            "s3feed_assume_role_failures",
            "STS AssumeRole calls that failed, by code.",
            ["code"],
            registry=r,
        )
        self.refreshes = Counter(
            "s3feed_credential_refreshes", "Role sessions refreshed successfully.", registry=r
        )
        self.refresh_failures = Counter(
            "s3feed_credential_refresh_failures",
            "Refresh attempts that failed, by code.",
            ["code"],
            registry=r,
        )
        self._expiries: dict[str, float] = {}
        r.register(_EarliestExpiry(self._expiries))
        self.last_refresh = Gauge(
            "s3feed_credentials_last_refresh_timestamp_seconds",
            "Unix time of the last successful credential refresh.",
            registry=r,
        )
        self.cache_size_bytes = Gauge(
            "s3feed_cache_size_bytes", "Bytes the cache holds.", registry=r
        )
        self.cache_capacity_bytes = Gauge(
            "s3feed_cache_capacity_bytes", "Bytes the cache may hold.", registry=r
        )
        self.cache_hits = Counter(
            "s3feed_cache_hits", "Requests served from the cache.", registry=r
        )
        self.cache_misses = Counter(
            "s3feed_cache_misses", "Requests the cache had to download.", registry=r
        )
        self.cache_evictions = Counter(
            "s3feed_cache_evictions", "Cache entries evicted.", registry=r
        )
        self.read_bytes_total = Counter(
            "s3feed_cache_read_bytes",
            "Bytes URL reads handed out, by source: present in the cache, or fetched from S3 for them.",
            ["source"],
            registry=r,
        )
        self.sent = Counter(
            "s3feed_sent_bytes",
            "Bytes of outputs uploaded to S3 (acknowledged), by tenant.",
            ["tenant"],
            registry=r,
        )
        self.uploads = Counter(
            "s3feed_uploads", "Outputs uploads finished, by outcome.", ["outcome"], registry=r
        )
        self.uploads_active = Gauge(
            "s3feed_uploads_active", "Outputs uploads running now.", registry=r
        )
        self.upload_duration = Histogram(
            "s3feed_upload_duration_seconds",
            "Wall time of finished uploads.",
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.upload_part_duration = Histogram(
            "s3feed_upload_part_duration_seconds",
            "Latency of an acknowledged part upload (or single PutObject), its last attempt.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.api_requests = Counter(
            "s3feed_api_requests",
            "API requests answered on both listeners, by route template and status code;"
            " route 'connection' counts connections the guard refused before a request.",
            ["route", "code"],
            registry=r,
        )
        self.event_loop_lag = Histogram(
            "s3feed_event_loop_lag_seconds",
            "How late the event loop ran a timer: time every request, transfer and"
            " watchdog ping waited behind other work.",
            buckets=LAG_BUCKETS,
            registry=r,
        )
        self._export_zeroes()

    def _export_zeroes(self) -> None:
        for mode in MODES:
            self.transfers_active.labels(mode)
            self.served.labels(mode)
            self.transfer_duration.labels(mode)
            for outcome in OUTCOMES:
                self.transfers.labels(mode, outcome)
        for op in S3_OPS:
            self.s3_requests.labels(op)
            self.s3_duration.labels(op)
        for reason in RETRY_REASONS:
            self.retries.labels(reason)
        for outcome in OUTCOMES:
            self.uploads.labels(outcome)
        for limit in LIMIT_KEYS:
            self.limit_refusals.labels(limit)
        for source in ("cache", "s3"):
            self.read_bytes_total.labels(source)

    # CredentialObserver

    def assume_role(self) -> None:
        self.assume_role_calls.inc()

    def assume_role_failed(self, code: str) -> None:
        self.assume_role_failures.labels(code).inc()

    def refreshed(self, at: datetime) -> None:
        self.refreshes.inc()
        self.last_refresh.set(at.timestamp())

    def refresh_failed(self, code: str) -> None:
        self.refresh_failures.labels(code).inc()

    def expiry_changed(self, session_id: str, expires_at: datetime | None) -> None:
        if expires_at is None:
            self._expiries.pop(session_id, None)
        else:
            self._expiries[session_id] = expires_at.timestamp()

    # TransferObserver

    def transfer_started(self, mode: str) -> None:
        self.transfers_active.labels(mode).inc()

    def transfer_finished(self, mode: str, outcome: str, seconds: float) -> None:
        self.transfers_active.labels(mode).dec()
        self.transfers.labels(mode, outcome).inc()
        self.transfer_duration.labels(mode).observe(seconds)

    def bytes_received(self, tenant: str, n: int) -> None:
        self.received.labels(tenant).inc(n)

    def bytes_served(self, mode: str, n: int) -> None:
        self.served.labels(mode).inc(n)

    def s3_request(self, op: str, seconds: float) -> None:
        self.s3_requests.labels(op).inc()
        self.s3_duration.labels(op).observe(seconds)

    def s3_request_error(self, op: str, code: str) -> None:
        self.s3_errors.labels(op, code).inc()

    def range_retry(self, reason: str) -> None:
        self.retries.labels(reason).inc()

    def stream_buffered(self, delta: int) -> None:
        self.stream_buffered_bytes.inc(delta)

    def api_request(self, route: str, status: int) -> None:
        """One answer; `route` is a route template (bounded), never the raw path."""
        self.api_requests.labels(route, str(status)).inc()

    def connection_refused(self, status: int) -> None:
        self.api_requests.labels("connection", str(status)).inc()

    def loop_lag(self, seconds: float) -> None:
        self.event_loop_lag.observe(seconds)

    def limit_refused(self, key: str) -> None:
        self.limit_refusals.labels(key).inc()

    def upload_memory(self, used: int, budget: int) -> None:
        self.upload_memory_used.set(used)
        self.upload_memory_budget.set(budget)

    def stream_memory(self, used: int, budget: int) -> None:
        self.stream_memory_used.set(used)
        self.stream_memory_budget.set(budget)

    def link_estimate(self, per_connection: float, gets: int) -> None:
        self.connection_rate.set(per_connection)
        self.gets_wanted.set(gets)

    # UploadObserver
    def upload_started(self) -> None:
        self.uploads_active.inc()

    def upload_finished(self, outcome: str, seconds: float) -> None:
        self.uploads_active.dec()
        self.uploads.labels(outcome).inc()
        self.upload_duration.observe(seconds)

    def bytes_sent(self, tenant: str, n: int) -> None:
        self.sent.labels(tenant).inc(n)

    def upload_part(self, seconds: float) -> None:
        self.upload_part_duration.observe(seconds)

    def cache_hit(self) -> None:
        self.cache_hits.inc()

    def cache_miss(self) -> None:
        self.cache_misses.inc()

    def cache_eviction(self) -> None:
        self.cache_evictions.inc()

    def cache_size(self, size_bytes: int, capacity_bytes: int) -> None:
        self.cache_size_bytes.set(size_bytes)
        self.cache_capacity_bytes.set(capacity_bytes)

    def read_bytes(self, source: str, n: int) -> None:
        self.read_bytes_total.labels(source).inc(n)


class _EarliestExpiry(Collector):
    """s3feed_credentials_earliest_expiry_timestamp_seconds, absent while no job is live."""

    def __init__(self, expiries: dict[str, float]) -> None:
        self._expiries = expiries

    def collect(self) -> Iterator[Metric]:
        if self._expiries:
            yield GaugeMetricFamily(
                "s3feed_credentials_earliest_expiry_timestamp_seconds",
                "Unix time at which the first live job's credentials expire; absent with no job.",
                value=min(self._expiries.values()),
            )

    def describe(self) -> Iterator[Metric]:
        return iter(())
