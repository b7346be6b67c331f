"""grafana/: the dashboards' structure, the provisioning files, and that every
metric name used anywhere under grafana/ is one daemon/metrics.py defines.

Whether each query returns data from a real daemon is
tests/integration/test_prometheus.py's job.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from s3feed.daemon.metrics import Metrics

GRAFANA = Path(__file__).resolve().parents[2] / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
DS_REF = {"type": "prometheus", "uid": "${datasource}"}
# Series Prometheus makes itself for every target.
PROMETHEUS_SERIES = {"up"}

PROMQL_KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "inf",
    "nan",
}


def defined_metric_names() -> set[str]:
    """Every series name the daemon's registry can expose, with type suffixes."""
    metrics = Metrics(CollectorRegistry(), "x")
    # The earliest-expiry gauge exists only while a job is live.
    metrics.expiry_changed("probe", datetime.now(UTC))
    names: set[str] = set()
    for family in metrics.registry.collect():
        names.update(sample.name for sample in family.samples)
        suffixes = {
            "counter": ["_total"],
            "histogram": ["_bucket", "_sum", "_count"],
            "summary": ["", "_sum", "_count"],
            "info": ["_info"],
        }.get(family.type, [""])
        names.update(family.name + s for s in suffixes)
    return names


def promql_metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that are not functions,
    keywords, label names (in braces or grouping clauses) or string contents."""
    expr = re.sub(r'"(?:\\.|[^"\\])*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", "{}", expr)
    expr = re.sub(r"\[[^\]]*\]", "[]", expr)
    # Grouping clauses go whole: `sum by (x) (...)` then reads as the call `sum (...)`.
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    names = set()
    for m in re.finditer(r"(?<![\w.$])[a-zA-Z_:][\w:]*", expr):
        rest = expr[m.end() :].lstrip()
        if rest.startswith("(") or m.group().lower() in PROMQL_KEYWORDS:
            continue
        names.add(m.group())
    return names


def load(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text()))


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # collapsed rows hold their panels


def query_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in panels(dashboard) if p["type"] != "row"]


def variables(dashboard: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in dashboard["templating"]["list"]}


def variable_query(var: dict[str, Any]) -> str:
    q = var["query"]
    return str(q["query"] if isinstance(q, dict) else q)


def all_queries() -> Iterator[tuple[str, str]]:
    """(where, PromQL or Grafana variable query) for everything under grafana/."""
    for path in DASHBOARDS:
        d = load(path)
        for p in query_panels(d):
            for t in p["targets"]:
                yield f"{path.name}: {p['title']} {t['refId']}", t["expr"]
        for name, var in variables(d).items():
            if var["type"] == "query":
                yield f"{path.name}: variable {name}", variable_query(var)
    for rules in (GRAFANA / "alerts").glob("*.rules.yml"):
        for group in yaml.safe_load(rules.read_text())["groups"]:
            for rule in group["rules"]:
                yield f"{rules.name}: {rule.get('alert') or rule.get('record')}", rule["expr"]


def test_there_is_a_dashboard() -> None:
    assert [p.name for p in DASHBOARDS] == ["s3feed-overview.json"]


def test_promql_metric_names_finds_names_and_skips_the_rest() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, op) (rate(s3feed_x_bucket{job=~"$job", op="a b"}'
        "[$__rate_interval]))) / on (job) group_left up offset 5m > 1e-9 or vector(0)"
    )
    assert promql_metric_names(expr) == {"s3feed_x_bucket", "up"}


@pytest.mark.parametrize(("where", "query"), list(all_queries()), ids=lambda v: str(v)[:80])
def test_every_metric_used_is_defined(where: str, query: str) -> None:
    m = re.fullmatch(r"\s*label_values\((.*),\s*(\w+)\s*\)\s*", query, flags=re.DOTALL)
    expr = m.group(1) if m else query
    unknown = promql_metric_names(expr) - defined_metric_names() - PROMETHEUS_SERIES
    assert not unknown, f"{where}: not in daemon/metrics.py: {sorted(unknown)}"


def test_every_s3feed_name_in_grafana_files_is_defined() -> None:
    """Also the prose: README and runbook must not name metrics that do not exist."""
    defined = defined_metric_names()
    for path in GRAFANA.rglob("*"):
        if path.is_file():
            used = set(re.findall(r"\bs3feed_[a-z0-9_]*[a-z0-9]", path.read_text()))
            assert used <= defined, f"{path}: {sorted(used - defined)}"


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_is_provisionable(path: Path) -> None:
    text = path.read_text()
    d = load(path)
    # Exported-for-sharing dashboards carry ${DS_...} inputs that file
    # provisioning cannot fill.
    assert "__inputs" not in d and "${DS_" not in text
    assert d["uid"] and d["title"] and d.get("id") is None
    v = variables(d)
    assert v["datasource"]["type"] == "datasource"
    assert v["datasource"]["query"] == "prometheus"
    assert variable_query(v["job"]) == "label_values(s3feed_build_info, job)"
    assert variable_query(v["instance"]) == 'label_values(s3feed_build_info{job=~"$job"}, instance)'
    for name in ("job", "instance"):
        assert v[name]["datasource"] == DS_REF
        assert v[name]["multi"] and v[name]["includeAll"]


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_every_panel_is_described_has_a_unit_and_uses_the_variables(path: Path) -> None:
    d = load(path)
    ids = [p["id"] for p in panels(d)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for p in query_panels(d):
        title = p["title"]
        assert p.get("description", "").strip(), f"{title}: no description"
        assert p["datasource"] == DS_REF, title
        defaults = p["fieldConfig"]["defaults"]
        assert defaults.get("unit"), f"{title}: no unit"
        assert defaults["thresholds"]["steps"], f"{title}: no thresholds"
        assert p["targets"], f"{title}: no query"
        for t in p["targets"]:
            assert t["datasource"] == DS_REF, title
            for selector in re.findall(
                r"\b(?:s3feed_\w+|up)\{[^}]*\}|\bs3feed_\w+\b(?!\{)", t["expr"]
            ):
                assert 'job=~"$job"' in selector and 'instance=~"$instance"' in selector, (
                    f"{title}: {selector} ignores the job/instance variables"
                )


def test_panels_do_not_overlap() -> None:
    for path in DASHBOARDS:
        taken: set[tuple[int, int]] = set()
        for p in load(path)["panels"]:
            g = p["gridPos"]
            assert g["x"] + g["w"] <= 24, p["title"]
            cells = {
                (x, y)
                for x in range(g["x"], g["x"] + g["w"])
                for y in range(g["y"], g["y"] + g["h"])
            }
            assert not cells & taken, f"{path.name}: {p['title']} overlaps"
            taken |= cells


def test_overview_rows_cover_what_operators_need() -> None:
    d = load(GRAFANA / "dashboards" / "s3feed-overview.json")
    rows = [p["title"] for p in d["panels"] if p["type"] == "row"]
    assert rows == [
        "Overview",
        "Transfers and jobs",
        "S3",
        "Stream buffer",
        "Cache",
        "Outputs",
        "API and event loop",
        "Credentials",
    ]
    exprs = " ".join(t["expr"] for p in query_panels(d) for t in p["targets"])
    for needle in (
        "sum by (instance) (rate(s3feed_received_bytes_total",
        "sum by (tenant) (rate(s3feed_received_bytes_total",
        'histogram_quantile(0.99, sum by (le) (rate(s3feed_s3_request_duration_seconds_bucket{job=~"$job", instance=~"$instance", op="GetObject"}',
        "sum by (op, code) (rate(s3feed_s3_request_errors_total",
        "sum by (reason) (rate(s3feed_range_retries_total",
        "s3feed_stream_buffered_bytes",
        "s3feed_cache_capacity_bytes",
        "s3feed_cache_evictions_total",
        "s3feed_credentials_earliest_expiry_timestamp_seconds",
        "sum by (code) (rate(s3feed_credential_refresh_failures_total",
        "(rate(s3feed_event_loop_lag_seconds_bucket",
        "sum by (route) (rate(s3feed_api_requests_total",
        "sum by (code) (rate(s3feed_api_requests_total",
        "sum by (code) (rate(s3feed_assume_role_failures_total",
        "sum by (instance) (rate(s3feed_sent_bytes_total",
        "sum by (outcome) (rate(s3feed_uploads_total",
        "s3feed_upload_part_duration_seconds_bucket",
    ):
        assert needle in exprs, needle


def test_expiry_panels_turn_red_when_expiry_is_near() -> None:
    d = load(GRAFANA / "dashboards" / "s3feed-overview.json")
    expiry = [
        p for p in query_panels(d) if any("earliest_expiry" in t["expr"] for t in p["targets"])
    ]
    assert len(expiry) >= 2
    for p in expiry:
        defaults = p["fieldConfig"]["defaults"]
        assert defaults["unit"] == "s"
        steps = defaults["thresholds"]["steps"]
        assert steps[0] == {"color": "red", "value": None}, p["title"]
        assert 0 < steps[1]["value"] <= 600, p["title"]
        assert steps[-1]["color"] == "green", p["title"]


def test_provisioning_files() -> None:
    (provider,) = yaml.safe_load(
        (GRAFANA / "provisioning" / "dashboards" / "s3feed.yaml").read_text()
    )["providers"]
    assert provider["type"] == "file"
    assert Path(provider["options"]["path"]).is_absolute()
    (source,) = yaml.safe_load(
        (GRAFANA / "provisioning" / "datasources" / "prometheus.yaml").read_text()
    )["datasources"]
    assert source["type"] == "prometheus" and source["url"].startswith("http")
    # Grafana reads only these two subfolders (and others it knows) of provisioning/.
    assert {p.name for p in (GRAFANA / "provisioning").iterdir()} == {"dashboards", "datasources"}
