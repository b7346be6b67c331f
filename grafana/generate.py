#!/usr/bin/env python3
"""Writes the Grafana dashboard grafana/dashboards/s3feed-overview.json.

    python grafana/generate.py           # (re)write the JSON
    python grafana/generate.py --check   # exit 1 if the committed JSON differs

The JSON is generated, never edited by hand: change a panel here, run this,
commit both (tests/unit/test_grafana_generate.py fails when they differ).
The metric names are daemon/metrics.py's (docs/design.md, Metrics); every
query selects the dashboard's `job` and `instance` variables through `$SEL`.

Layout: rows one under another, each a full-width row header and then its
panels left to right, wrapping to a new line when the next panel would pass
the 24 grid columns (a line is as high as its tallest panel). Panel ids count
up from 1 in that order, row headers included.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "dashboards" / "s3feed-overview.json"
GRID_WIDTH = 24
DS = {"type": "prometheus", "uid": "${datasource}"}
# The dashboard variables every query filters on; written `{$SEL}` or `{$SEL, ...}`.
SEL = 'job=~"$job", instance=~"$instance"'

Steps = list[tuple[str, float | None]]
GREEN: Steps = [("green", None)]


@dataclass(frozen=True)
class Target:
    legend: str
    expr: str


@dataclass(frozen=True)
class Panel:
    """A panel's JSON without its id and position (the layout sets those)."""

    w: int
    h: int
    body: dict[str, Any]


@dataclass(frozen=True)
class Row:
    title: str
    panels: tuple[Panel, ...]


def row(title: str, *panels: Panel) -> Row:
    return Row(title, panels)


def q(expr: str) -> str:
    return expr.replace("$SEL", SEL)


def thresholds(steps: Steps) -> dict[str, Any]:
    return {
        "mode": "absolute",
        "steps": [{"color": color, "value": value} for color, value in steps],
    }


def query_targets(items: list[Target]) -> list[dict[str, Any]]:
    return [
        {
            "datasource": DS,
            "expr": q(t.expr),
            "legendFormat": t.legend,
            "range": True,
            "refId": chr(ord("A") + i),
        }
        for i, t in enumerate(items)
    ]


def _panel(kind: str, title: str, description: str, w: int, h: int, **rest: Any) -> Panel:
    body = {"type": kind, "title": title, "description": description, "datasource": DS}
    return Panel(w, h, {**body, **rest})


REDUCE_LAST = {"calcs": ["lastNotNull"], "fields": "", "values": False}


def stat(
    *,
    title: str,
    description: str,
    w: int,
    h: int,
    unit: str,
    expr: str,
    steps: Steps = GREEN,
    decimals: int | None = None,
) -> Panel:
    """One number, coloured by its thresholds, with a sparkline."""
    defaults: dict[str, Any] = {
        "unit": unit,
        "thresholds": thresholds(steps),
        "color": {"mode": "thresholds"},
    }
    if decimals is not None:
        defaults["decimals"] = decimals
    return _panel(
        "stat",
        title,
        description,
        w,
        h,
        fieldConfig={"defaults": defaults, "overrides": []},
        options={
            "reduceOptions": REDUCE_LAST,
            "orientation": "auto",
            "colorMode": "background",
            "graphMode": "area",
            "justifyMode": "auto",
            "textMode": "auto",
        },
        targets=query_targets([Target("", expr)]),
    )


def gauge(
    *,
    title: str,
    description: str,
    w: int,
    h: int,
    unit: str,
    expr: str,
    steps: Steps = GREEN,
    min: float = 0,
    max: float = 1,
) -> Panel:
    return _panel(
        "gauge",
        title,
        description,
        w,
        h,
        fieldConfig={
            "defaults": {
                "unit": unit,
                "thresholds": thresholds(steps),
                "color": {"mode": "thresholds"},
                "min": min,
                "max": max,
            },
            "overrides": [],
        },
        options={
            "reduceOptions": REDUCE_LAST,
            "orientation": "auto",
            "showThresholdLabels": False,
            "showThresholdMarkers": True,
        },
        targets=query_targets([Target("", expr)]),
    )


def timeseries(
    *,
    title: str,
    description: str,
    w: int,
    h: int,
    unit: str,
    targets: list[Target],
    steps: Steps = GREEN,
    max: float | None = None,
    thresholds_style: str = "off",
    overrides: list[dict[str, Any]] | None = None,
) -> Panel:
    """Lines from 0 (to `max` if given); thresholds drawn only with thresholds_style."""
    defaults: dict[str, Any] = {
        "unit": unit,
        "color": {"mode": "palette-classic"},
        "custom": {
            "drawStyle": "line",
            "lineWidth": 1,
            "fillOpacity": 10,
            "showPoints": "never",
            "spanNulls": False,
            "stacking": {"mode": "none", "group": "A"},
            "thresholdsStyle": {"mode": thresholds_style},
        },
        "thresholds": thresholds(steps),
        "min": 0,
    }
    if max is not None:
        defaults["max"] = max
    return _panel(
        "timeseries",
        title,
        description,
        w,
        h,
        fieldConfig={"defaults": defaults, "overrides": overrides or []},
        options={
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
        targets=query_targets(targets),
    )


def dashed(series_regexp: str) -> dict[str, Any]:
    """An override: series matching the regexp drawn dashed and unfilled (limits, budgets)."""
    return {
        "matcher": {"id": "byRegexp", "options": series_regexp},
        "properties": [
            {"id": "custom.lineStyle", "value": {"dash": [10, 10], "fill": "dash"}},
            {"id": "custom.fillOpacity", "value": 0},
        ],
    }


def used_and_budget(what: str, gauges: tuple[str, str], description: str) -> Panel:
    """A memory budget's used gauge (solid) against its budget gauge (dashed), per daemon."""
    used, budget = gauges
    return timeseries(
        title=f"{what} used and budget by host",
        description=description,
        w=8,
        h=8,
        unit="bytes",
        overrides=[dashed("budget .*")],
        targets=[
            Target("used {{instance}}", used + "{$SEL}"),
            Target("budget {{instance}}", budget + "{$SEL}"),
        ],
    )


ROWS = [
    row(
        "Overview",
        stat(
            title="Daemons up",
            description=(
                "Scrape targets of the selected jobs/instances that answered their last scrape. Red "
                "when none does; compare with the number of encoder hosts you expect."
            ),
            w=4,
            h=4,
            unit="none",
            steps=[("red", None), ("green", 1)],
            expr="sum(up{$SEL})",
        ),
        stat(
            title="Active jobs",
            description="Jobs registered and not yet deleted, over the selected hosts.",
            w=4,
            h=4,
            unit="none",
            steps=[("blue", None)],
            expr="sum(s3feed_jobs_active{$SEL})",
        ),
        stat(
            title="Active transfers",
            description="Cache fetches and streams running now, over the selected hosts.",
            w=4,
            h=4,
            unit="none",
            steps=[("blue", None)],
            expr="sum(s3feed_transfers_active{$SEL})",
        ),
        stat(
            title="Receiving from S3",
            description="Bytes per second read from S3 over the selected hosts (all tenants).",
            w=4,
            h=4,
            unit="Bps",
            steps=[("blue", None)],
            expr="sum(rate(s3feed_received_bytes_total{$SEL}[$__rate_interval]))",
        ),
        stat(
            title="Earliest credential expiry",
            description=(
                "Time until the first live job's role session expires, over the selected hosts. "
                "Sessions are refreshed at least 5 minutes before they expire, so below 5 minutes "
                "(red) a refresh is overdue: see the Credentials row and the runbook. Empty while no "
                "job is live."
            ),
            w=4,
            h=4,
            unit="s",
            steps=[("red", None), ("orange", 300), ("green", 600)],
            expr="min(s3feed_credentials_earliest_expiry_timestamp_seconds{$SEL}) - time()",
        ),
        stat(
            title="S3 error ratio",
            description=(
                "Failed S3 requests as a share of all S3 requests over the rate window (NoSuchKey "
                "included: a job asking for a missing key). Above 1% something is wrong with S3 or "
                "the roles' permissions."
            ),
            w=4,
            h=4,
            unit="percentunit",
            steps=[("green", None), ("orange", 0.01), ("red", 0.05)],
            decimals=2,
            expr="sum(rate(s3feed_s3_request_errors_total{$SEL}[$__rate_interval])) / sum(rate(s3feed_s3_requests_total{$SEL}[$__rate_interval]))",
        ),
        timeseries(
            title="Received from S3 by host",
            description=(
                "Bytes per second each daemon reads from S3 (cache fetches and streams). A host at "
                "zero while it has active transfers is stalled."
            ),
            w=12,
            h=8,
            unit="Bps",
            targets=[
                Target(
                    "{{instance}}",
                    "sum by (instance) (rate(s3feed_received_bytes_total{$SEL}[$__rate_interval]))",
                )
            ],
        ),
        timeseries(
            title="Received from S3 by tenant",
            description=(
                "Bytes per second read from S3 for each tenant, over the selected hosts: who is using "
                "the fleet's bandwidth."
            ),
            w=12,
            h=8,
            unit="Bps",
            targets=[
                Target(
                    "{{tenant}}",
                    "sum by (tenant) (rate(s3feed_received_bytes_total{$SEL}[$__rate_interval]))",
                )
            ],
        ),
        timeseries(
            title="Served to encoders by mode",
            description=(
                "Bytes per second handed to encoders: `stream` over the socket in order, `cache` from "
                "cached files. Served above received means the cache is saving S3 reads."
            ),
            w=24,
            h=7,
            unit="Bps",
            targets=[
                Target(
                    "{{mode}}",
                    "sum by (mode) (rate(s3feed_served_bytes_total{$SEL}[$__rate_interval]))",
                )
            ],
        ),
    ),
    row(
        "Transfers and jobs",
        timeseries(
            title="Active jobs by host",
            description=(
                "Jobs registered on each daemon. Every job holds a role session that is refreshed in "
                "the background until the job is deleted (or idles out)."
            ),
            w=8,
            h=8,
            unit="none",
            targets=[Target("{{instance}}", "sum by (instance) (s3feed_jobs_active{$SEL})")],
        ),
        timeseries(
            title="Active transfers by mode",
            description="Cache fetches (`cache`) and streams (`stream`) running now, over the selected hosts.",
            w=8,
            h=8,
            unit="none",
            targets=[Target("{{mode}}", "sum by (mode) (s3feed_transfers_active{$SEL})")],
        ),
        timeseries(
            title="Finished transfers by outcome",
            description=(
                "Transfers finished per second by mode and outcome. `failed` is S3 or credentials "
                "trouble (see the S3 and Credentials rows); `cancelled` is a reader going away or a "
                "job deleted."
            ),
            w=8,
            h=8,
            unit="ops",
            targets=[
                Target(
                    "{{mode}} {{outcome}}",
                    "sum by (mode, outcome) (rate(s3feed_transfers_total{$SEL}[$__rate_interval]))",
                )
            ],
        ),
        timeseries(
            title="Transfer duration quantiles",
            description=(
                "Wall time of finished transfers: median and 95th percentile by mode. Long transfers "
                "are normal for big sources; a jump at constant throughput means slower S3."
            ),
            w=8,
            h=8,
            unit="s",
            targets=[
                Target(
                    "p50 {{mode}}",
                    "histogram_quantile(0.5, sum by (le, mode) (rate(s3feed_transfer_duration_seconds_bucket{$SEL}[$__rate_interval])))",
                ),
                Target(
                    "p95 {{mode}}",
                    "histogram_quantile(0.95, sum by (le, mode) (rate(s3feed_transfer_duration_seconds_bucket{$SEL}[$__rate_interval])))",
                ),
            ],
        ),
        timeseries(
            title="Transfer failure ratio",
            description="Failed transfers as a share of finished transfers, by mode. Red above 5%.",
            w=8,
            h=8,
            unit="percentunit",
            steps=[("green", None), ("red", 0.05)],
            max=1,
            thresholds_style="line",
            targets=[
                Target(
                    "{{mode}}",
                    'sum by (mode) (rate(s3feed_transfers_total{$SEL, outcome="failed"}[$__rate_interval])) / sum by (mode) (rate(s3feed_transfers_total{$SEL}[$__rate_interval]))',
                )
            ],
        ),
        timeseries(
            title="Limit refusals by limit",
            description=(
                "Requests and connections refused with 429 LimitExceeded per second, by the "
                "[limits] key that refused them (docs/design.md, Limits). A steady rate for "
                "one key means a client keeps running into it: find the client, or raise the "
                "limit."
            ),
            w=8,
            h=8,
            unit="ops",
            targets=[
                Target(
                    "{{limit}}",
                    "sum by (limit) (rate(s3feed_limit_refusals_total{$SEL}[$__rate_interval]))",
                )
            ],
        ),
    ),
    row(
        "S3",
        timeseries(
            title="GetObject time to first byte",
            description=(
                "Time from sending a ranged GET to its first byte: median, 90th and 99th percentile "
                "over the selected hosts. On AWS in-region tens of milliseconds; seconds mean S3 "
                "throttling or a congested network."
            ),
            w=12,
            h=8,
            unit="s",
            steps=[("green", None), ("red", 1)],
            thresholds_style="line",
            targets=[
                Target(
                    "p50",
                    'histogram_quantile(0.5, sum by (le) (rate(s3feed_s3_request_duration_seconds_bucket{$SEL, op="GetObject"}[$__rate_interval])))',
                ),
                Target(
                    "p90",
                    'histogram_quantile(0.9, sum by (le) (rate(s3feed_s3_request_duration_seconds_bucket{$SEL, op="GetObject"}[$__rate_interval])))',
                ),
                Target(
                    "p99",
                    'histogram_quantile(0.99, sum by (le) (rate(s3feed_s3_request_duration_seconds_bucket{$SEL, op="GetObject"}[$__rate_interval])))',
                ),
            ],
        ),
        timeseries(
            title="S3 request latency p99 by operation",
            description=(
                "99th percentile latency of each S3 operation (HeadObject and ListObjectsV2 whole "
                "requests; GetObject to first byte)."
            ),
            w=12,
            h=8,
            unit="s",
            targets=[
                Target(
                    "{{op}}",
                    "histogram_quantile(0.99, sum by (le, op) (rate(s3feed_s3_request_duration_seconds_bucket{$SEL}[$__rate_interval])))",
                )
            ],
        ),
        timeseries(
            title="S3 requests by operation",
            description="S3 requests per second by operation, over the selected hosts.",
            w=8,
            h=8,
            unit="reqps",
            targets=[
                Target(
                    "{{op}}", "sum by (op) (rate(s3feed_s3_requests_total{$SEL}[$__rate_interval]))"
                )
            ],
        ),
        timeseries(
            title="S3 errors by code",
            description=(
                "Failed S3 requests per second by operation and S3 error code. AccessDenied: a role's "
                "permissions do not cover the object; SlowDown/5xx: S3 pushing back (retried); "
                "PreconditionFailed: the object changed during a transfer; NoSuchKey: a job asked for "
                "a missing key."
            ),
            w=8,
            h=8,
            unit="reqps",
            targets=[
                Target(
                    "{{op}} {{code}}",
                    "sum by (op, code) (rate(s3feed_s3_request_errors_total{$SEL}[$__rate_interval]))",
                )
            ],
        ),
        timeseries(
            title="Range retries by reason",
            description=(
                "Ranges retried per second by reason: server_error, throttled, reset, truncated, "
                "stall, checksum. Retries are normal in small numbers; a transfer fails when its "
                "retry budget runs out."
            ),
            w=8,
            h=8,
            unit="ops",
            targets=[
                Target(
                    "{{reason}}",
                    "sum by (reason) (rate(s3feed_range_retries_total{$SEL}[$__rate_interval]))",
                )
            ],
        ),
        timeseries(
            title="Link: what one GET carries, and GETs in flight wanted",
            description=(
                "Per host: the per-connection rate learned from the GETs seen (left axis) and the "
                "GETs in flight a transfer keeps to reach [transfer] target_throughput (right "
                "axis; docs/design.md, In flight). A falling rate with the count at "
                "global_concurrency means S3 or the network slowed down."
            ),
            w=24,
            h=8,
            unit="Bps",
            overrides=[
                {
                    "matcher": {"id": "byRegexp", "options": "GETs wanted .*"},
                    "properties": [
                        {"id": "unit", "value": "none"},
                        {"id": "custom.axisPlacement", "value": "right"},
                    ],
                }
            ],
            targets=[
                Target(
                    "per GET {{instance}}",
                    "max by (instance) (s3feed_range_connection_rate_bytes_per_second{$SEL})",
                ),
                Target(
                    "GETs wanted {{instance}}", "max by (instance) (s3feed_range_gets_wanted{$SEL})"
                ),
            ],
        ),
    ),
    row(
        "Stream buffer",
        timeseries(
            title="Stream window bytes by host",
            description=(
                "Bytes fetched ahead of stream readers and held in memory on each host. Bounded by "
                "stream_memory (a window grows past stream_window only to hold a part per GET the "
                "link needs); near that bound the encoders read slower than S3 delivers (fine), near "
                "zero with active streams S3 is the bottleneck."
            ),
            w=8,
            h=8,
            unit="bytes",
            targets=[
                Target("{{instance}}", "sum by (instance) (s3feed_stream_buffered_bytes{$SEL})")
            ],
        ),
        used_and_budget(
            "Stream memory",
            ("s3feed_stream_memory_used_bytes", "s3feed_stream_memory_budget_bytes"),
            "Bytes granted to stream windows (solid) against [transfer] stream_memory "
            "(dashed), per daemon. At the budget, new streams get smaller windows and "
            "stream slower rather than the daemon growing (docs/design.md, Stream memory).",
        ),
        timeseries(
            title="Streams: active and served",
            description=(
                "Streams running now (left axis) and bytes per second streamed to encoders (right "
                "axis), over the selected hosts."
            ),
            w=8,
            h=8,
            unit="none",
            overrides=[
                {
                    "matcher": {"id": "byName", "options": "streamed"},
                    "properties": [
                        {"id": "unit", "value": "Bps"},
                        {"id": "custom.axisPlacement", "value": "right"},
                    ],
                }
            ],
            targets=[
                Target("active streams", 'sum(s3feed_transfers_active{$SEL, mode="stream"})'),
                Target(
                    "streamed",
                    'sum(rate(s3feed_served_bytes_total{$SEL, mode="stream"}[$__rate_interval]))',
                ),
            ],
        ),
    ),
    row(
        "Cache",
        gauge(
            title="Cache fill",
            description=(
                "Cache size over its budget, for the fullest selected host. An LRU cache sits near "
                "its budget in normal work; it is a problem when it stays full while nothing can be "
                "evicted (entries pinned by live jobs): fetches then fail with InsufficientStorage."
            ),
            w=6,
            h=8,
            unit="percentunit",
            steps=[("green", None), ("orange", 0.9), ("red", 0.95)],
            expr="max(s3feed_cache_size_bytes{$SEL} / s3feed_cache_capacity_bytes{$SEL})",
        ),
        timeseries(
            title="Cache size and capacity by host",
            description="Bytes the cache holds (solid) and may hold (its budget, dashed) on each host.",
            w=6,
            h=8,
            unit="bytes",
            overrides=[dashed("capacity .*")],
            targets=[
                Target("size {{instance}}", "s3feed_cache_size_bytes{$SEL}"),
                Target("capacity {{instance}}", "s3feed_cache_capacity_bytes{$SEL}"),
            ],
        ),
        timeseries(
            title="Cache hit ratio",
            description=(
                "Share of cache lookups served from the cache, over the selected hosts. Low when "
                "every job reads different sources, which is normal; a drop at the same workload "
                "means entries are evicted before reuse (budget too small)."
            ),
            w=6,
            h=8,
            unit="percentunit",
            max=1,
            targets=[
                Target(
                    "hit ratio",
                    "sum(rate(s3feed_cache_hits_total{$SEL}[$__rate_interval])) / (sum(rate(s3feed_cache_hits_total{$SEL}[$__rate_interval])) + sum(rate(s3feed_cache_misses_total{$SEL}[$__rate_interval])))",
                )
            ],
        ),
        timeseries(
            title="Cache evictions by host",
            description=(
                "Entries evicted per second (least recently used first, never those pinned by a live "
                "job)."
            ),
            w=6,
            h=8,
            unit="ops",
            targets=[
                Target(
                    "{{instance}}",
                    "sum by (instance) (rate(s3feed_cache_evictions_total{$SEL}[$__rate_interval]))",
                )
            ],
        ),
    ),
    row(
        "Outputs",
        timeseries(
            title="Upload throughput by host",
            description=(
                "Bytes of encoder outputs acknowledged by S3 per second, per daemon "
                "(s3feed put and PUT /v1/jobs/{JobId}/outputs/{Key})."
            ),
            w=8,
            h=8,
            unit="Bps",
            targets=[
                Target(
                    "{{instance}}",
                    "sum by (instance) (rate(s3feed_sent_bytes_total{$SEL}[$__rate_interval]))",
                )
            ],
        ),
        timeseries(
            title="Uploads by outcome",
            description=(
                "Finished uploads per second by outcome, and uploads running now. A failed upload "
                "was aborted: nothing is left at its key (docs/design.md, Outputs)."
            ),
            w=8,
            h=8,
            unit="ops",
            targets=[
                Target(
                    "{{outcome}}",
                    "sum by (outcome) (rate(s3feed_uploads_total{$SEL}[$__rate_interval]))",
                ),
                Target("running", "sum(s3feed_uploads_active{$SEL})"),
            ],
        ),
        timeseries(
            title="Part upload latency",
            description=(
                "p50 and p99 of an acknowledged part upload (or a single PutObject), its last "
                "attempt; a rising p99 with retries in the S3 error panel is S3 throttling."
            ),
            w=8,
            h=8,
            unit="s",
            targets=[
                Target(
                    "p50",
                    "histogram_quantile(0.5, sum by (le) "
                    "(rate(s3feed_upload_part_duration_seconds_bucket{$SEL}[$__rate_interval])))",
                ),
                Target(
                    "p99",
                    "histogram_quantile(0.99, sum by (le) "
                    "(rate(s3feed_upload_part_duration_seconds_bucket{$SEL}[$__rate_interval])))",
                ),
            ],
        ),
        used_and_budget(
            "Upload memory",
            ("s3feed_upload_memory_used_bytes", "s3feed_upload_memory_budget_bytes"),
            "Part buffers held by uploads (solid) against [transfer] upload_memory_total "
            "(dashed), per daemon. At the budget, uploads keep one buffer each and the "
            "encoders' writes wait rather than the daemon growing (docs/design.md, Outputs).",
        ),
    ),
    row(
        "API and event loop",
        timeseries(
            title="Event loop lag by host",
            description=(
                "How late the daemon's one event loop ran a timer (observed every 0.5 s), p99 "
                "and median. Every request, transfer and watchdog ping "
                "waits this long; above 1 s (red) clients see stalls, and at 20 s systemd's "
                "watchdog restarts the daemon. Alert S3feedEventLoopLag."
            ),
            w=8,
            h=8,
            unit="s",
            steps=[("green", None), ("orange", 0.25), ("red", 1)],
            thresholds_style="line",
            targets=[
                Target(
                    "p99 {{instance}}",
                    "histogram_quantile(0.99, sum by (instance, le) "
                    "(rate(s3feed_event_loop_lag_seconds_bucket{$SEL}[$__rate_interval])))",
                ),
                Target(
                    "median {{instance}}",
                    "histogram_quantile(0.5, sum by (instance, le) "
                    "(rate(s3feed_event_loop_lag_seconds_bucket{$SEL}[$__rate_interval])))",
                ),
            ],
        ),
        timeseries(
            title="API requests by route",
            description=(
                "Requests answered per second on both listeners (the socket and the URL "
                "listener), by route template; 'malformed' are requests the HTTP parser refused, "
                "'unmatched' paths no route serves, 'connection' connections the guard refused."
            ),
            w=8,
            h=8,
            unit="reqps",
            targets=[
                Target(
                    "{{route}}",
                    "sum by (route) (rate(s3feed_api_requests_total{$SEL}[$__rate_interval]))",
                )
            ],
        ),
        timeseries(
            title="API refusals and errors by code",
            description=(
                "Answers with a 4xx or 5xx status per second, by code: 429 LimitExceeded, 403 "
                "Forbidden/AccessDenied, 404 NoSuchJob/NoSuchKey, 507 InsufficientStorage, 503 "
                "StsUnavailable/S3Unavailable/CredentialsExpired. The log's request records "
                '("event": "request") name the path and uid.'
            ),
            w=8,
            h=8,
            unit="reqps",
            targets=[
                Target(
                    "{{code}}",
                    'sum by (code) (rate(s3feed_api_requests_total{$SEL, code=~"[45].."}'
                    "[$__rate_interval]))",
                )
            ],
        ),
    ),
    row(
        "Credentials",
        timeseries(
            title="Time to earliest credential expiry by host",
            description=(
                "Seconds until the first live job's role session expires on each host. Refreshes "
                "happen 5 to 60 minutes before expiry depending on session length, so the line "
                "saw-tooths; below 5 minutes (red) a refresh is overdue and jobs will fail with "
                "CredentialsExpired when it reaches zero."
            ),
            w=12,
            h=8,
            unit="s",
            steps=[("red", None), ("orange", 300), ("green", 600)],
            thresholds_style="line+area",
            targets=[
                Target(
                    "{{instance}}",
                    "min by (instance) (s3feed_credentials_earliest_expiry_timestamp_seconds{$SEL}) - time()",
                )
            ],
        ),
        timeseries(
            title="AssumeRole calls and refreshes",
            description=(
                "STS AssumeRole calls per second (new jobs and refreshes) and successful background "
                "refreshes, over the selected hosts."
            ),
            w=12,
            h=8,
            unit="ops",
            targets=[
                Target(
                    "AssumeRole calls",
                    "sum(rate(s3feed_assume_role_total{$SEL}[$__rate_interval]))",
                ),
                Target(
                    "refreshes",
                    "sum(rate(s3feed_credential_refreshes_total{$SEL}[$__rate_interval]))",
                ),
            ],
        ),
        timeseries(
            title="Refresh failures by code",
            description=(
                "Failed background refreshes per second by STS error code. Throttling and 5xx are "
                "retried with backoff while the current credentials stay valid; AccessDenied is not "
                "retried (the customer changed the role's trust policy)."
            ),
            w=12,
            h=8,
            unit="ops",
            steps=[("green", None), ("red", 0.001)],
            targets=[
                Target(
                    "{{code}}",
                    "sum by (code) (rate(s3feed_credential_refresh_failures_total{$SEL}[$__rate_interval]))",
                )
            ],
        ),
        timeseries(
            title="AssumeRole failures by code",
            description=(
                "Failed AssumeRole calls per second by code, refreshes included. "
                "AccessDenied/AssumeRoleDenied are jobs whose role does not trust this daemon's "
                "account with the tenant as ExternalId (print the expected statement with `s3feed "
                "trust-policy TENANT`); a fleet-wide spike usually means the daemon's own identity "
                "changed."
            ),
            w=12,
            h=8,
            unit="ops",
            targets=[
                Target(
                    "{{code}}",
                    "sum by (code) (rate(s3feed_assume_role_failures_total{$SEL}[$__rate_interval]))",
                )
            ],
        ),
    ),
]


def layout(rows: list[Row]) -> list[dict[str, Any]]:
    """Ids and grid positions (see the module docstring), in panel order."""
    out: list[dict[str, Any]] = []
    y = 0
    for r in rows:
        out.append(
            {
                "type": "row",
                "id": len(out) + 1,
                "title": r.title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": GRID_WIDTH, "x": 0, "y": y},
                "panels": [],
            }
        )
        y += 1
        x = line_height = 0
        for p in r.panels:
            if x + p.w > GRID_WIDTH:
                y, x, line_height = y + line_height, 0, 0
            body = dict(p.body)
            placed = {"type": body.pop("type"), "id": len(out) + 1}
            placed["title"] = body.pop("title")
            placed["description"] = body.pop("description")
            placed["datasource"] = body.pop("datasource")
            placed["gridPos"] = {"h": p.h, "w": p.w, "x": x, "y": y}
            out.append({**placed, **body})
            x += p.w
            line_height = max(line_height, p.h)
        y += line_height
    return out


def variable(name: str, label: str, query: str) -> dict[str, Any]:
    """A multi-value variable from label values, with All."""
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DS,
        "definition": query,
        "query": {"query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
        "current": {},
        "hide": 0,
        "includeAll": True,
        "multi": True,
        "options": [],
        "refresh": 2,
        "regex": "",
        "sort": 1,
    }


def dashboard() -> dict[str, Any]:
    return {
        "title": "s3feed overview",
        "uid": "s3feed-overview",
        "description": (
            "s3feed fleet: S3 throughput, transfers, S3 latency and errors, stream windows,"
            " cache and role-session credentials. Runbook: grafana/RUNBOOK.md."
        ),
        "tags": ["s3feed"],
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-6h", "to": "now"},
        "refresh": "30s",
        "timezone": "utc",
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "links": [],
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Data source",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "hide": 0,
                    "includeAll": False,
                    "multi": False,
                    "options": [],
                    "refresh": 1,
                    "regex": "",
                },
                variable("job", "Job", "label_values(s3feed_build_info, job)"),
                variable(
                    "instance", "Instance", 'label_values(s3feed_build_info{job=~"$job"}, instance)'
                ),
            ]
        },
        "panels": layout(ROWS),
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if OUT.read_text() != text:
            print(f"{OUT} is not what grafana/generate.py writes; run it", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
