"""A real Prometheus on 127.0.0.1 for the integration tests, and a way to ask
every query of a Grafana dashboard through its HTTP API.

`running_prometheus(workdir, targets)` starts Debian's `prometheus` on a free
port with its storage and configuration in `workdir`, scraping `targets`
({job: [host:port, ...]}; `SELF` is Prometheus itself) every second, waits until it is ready, and on exit
stops it (SIGTERM, then SIGKILL) and checks its port is closed again.
`dashboard_queries` lists a dashboard's panel targets and variable queries;
`evaluate` runs one of them with Grafana's variables replaced by concrete
values.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from daemonproc import free_port, stop

SELF = "SELF"  # in a target list: Prometheus' own address


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def http_get(url: str, timeout: float = 10) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return bytes(resp.read())


@dataclass
class Prometheus:
    url: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    def api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        try:
            body = http_get(f"{self.url}/api/v1/{path}?{query}")
        except urllib.error.HTTPError as exc:
            # A bad query answers 400 with the reason in the body.
            raise AssertionError(f"{path} {params}: {exc.code} {exc.read().decode()}") from None
        doc = json.loads(body)
        assert doc["status"] == "success", doc
        return doc["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query at the current time; the result vector (or a scalar as one sample)."""
        data = self.api("query", query=expr)
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        return list(data["result"])

    def last_scrape(self, job: str) -> float:
        """Time of the latest sample of up{job=...}; 0 before the first scrape."""
        result = self.query(f'timestamp(up{{job="{job}"}})')
        return max((float(r["value"][1]) for r in result), default=0.0)

    def wait_for_scrapes(self, job: str, after: float, count: int = 2, timeout: float = 30) -> None:
        """Until `count` scrapes of `job` that started after the Unix time `after`."""
        deadline = time.monotonic() + timeout
        seen: set[float] = set()
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"prometheus exited; see {self.log}"
            last = self.last_scrape(job)
            if last > after:
                seen.add(last)
                if len(seen) >= count:
                    return
            time.sleep(0.2)
        raise AssertionError(f"no {count} scrapes of {job} after {after} within {timeout} s")

    def metadata(self, metric: str) -> list[dict[str, Any]]:
        """What the scraped targets said about `metric` in # TYPE/# HELP lines."""
        return list(self.api("targets/metadata", metric=metric))


def scrape_config(targets: dict[str, list[str]], interval: str, me: str) -> dict[str, Any]:
    targets = {job: [me if h == SELF else h for h in hosts] for job, hosts in targets.items()}
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": hosts}]}
            for job, hosts in targets.items()
        ],
    }


@contextlib.contextmanager
def running_prometheus(
    workdir: Path, targets: dict[str, list[str]], interval: str = "1s", timeout: float = 60
) -> Iterator[Prometheus]:
    binary = shutil.which("prometheus")
    assert binary, (
        "prometheus is missing: run `scripts/debian-packages prometheus` (make test does)"
    )
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = workdir / "prometheus.yml"
    config.write_text(yaml.safe_dump(scrape_config(targets, interval, f"127.0.0.1:{port}")))
    log = workdir / "prometheus.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=workdir,
        )
    prom = Prometheus(f"http://127.0.0.1:{port}", port, process, log)
    try:
        deadline = time.monotonic() + timeout
        while True:
            assert process.poll() is None, f"prometheus exited: {log.read_text()[-2000:]}"
            with contextlib.suppress(OSError):
                if http_get(f"{prom.url}/-/ready", timeout=2).strip():
                    break
            assert time.monotonic() < deadline, f"prometheus not ready in {timeout} s"
            time.sleep(0.1)
        yield prom
    finally:
        stop(process)
        assert not port_open(port), f"port {port} still open after prometheus stopped"


# ------------------------------------------------------------------ dashboards


@dataclass(frozen=True)
class Query:
    where: str  # "dashboard: panel title refId" or "dashboard: variable name"
    expr: str
    is_variable: bool = False


def dashboard_queries(dashboard: dict[str, Any], name: str) -> list[Query]:
    """Every panel target and every query variable of a dashboard."""
    queries = []
    stack = list(dashboard["panels"])
    while stack:
        panel = stack.pop(0)
        stack.extend(panel.get("panels", []))  # collapsed rows
        for target in panel.get("targets", []):
            queries.append(Query(f"{name}: {panel['title']} {target['refId']}", target["expr"]))
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            q = var["query"]
            expr = q["query"] if isinstance(q, dict) else q
            queries.append(Query(f"{name}: variable {var['name']}", expr, is_variable=True))
    return queries


def substitute(expr: str, values: dict[str, str], window_seconds: int) -> str:
    """Grafana's template variables -> concrete values, as Grafana would send them."""
    builtins = {
        "__rate_interval": f"{window_seconds}s",
        "__interval": f"{window_seconds}s",
        "__range": f"{window_seconds}s",
        "__range_s": str(window_seconds),
    }
    allv = {**builtins, **values}

    def one(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        if name not in allv:
            raise KeyError(f"no value for ${name} in {expr!r}")
        return allv[name]

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", one, expr)


def evaluate(
    prom: Prometheus, query: Query, values: dict[str, str], window_seconds: int
) -> list[dict[str, Any]]:
    """The query's result; a variable's label_values(sel, label) answers one
    sample per value of `label` (its labels are the variable's options)."""
    expr = substitute(query.expr, values, window_seconds)
    if query.is_variable:
        m = re.fullmatch(r"\s*label_values\((.*),\s*(\w+)\s*\)\s*", expr, flags=re.DOTALL)
        assert m, f"{query.where}: only label_values(selector, label) is supported: {expr}"
        selector, label = m.groups()
        result = prom.query(f"count by ({label}) ({selector})")
        return [r for r in result if r["metric"].get(label)]
    return prom.query(expr)
