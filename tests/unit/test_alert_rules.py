"""grafana/alerts: promtool checks the rules and runs their unit tests; every alert
has a firing and a quiet case, annotations, and a runbook paragraph that exists.

promtool comes from Debian's `prometheus` package, which `make test` installs
(scripts/debian-packages); without it these tests fail rather than skip.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ALERTS = Path(__file__).resolve().parents[2] / "grafana" / "alerts"
RULES = ALERTS / "s3feed.rules.yml"
RULE_TESTS = ALERTS / "s3feed.rules.test.yml"
RUNBOOK = ALERTS.parent / "RUNBOOK.md"


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool is missing: run `scripts/debian-packages prometheus` (make test does)"
        )
    return path


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *args], capture_output=True, text=True, timeout=120, check=False
    )


def alerts() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"] if "alert" in rule]


def test_promtool_check_rules() -> None:
    out = run_promtool("check", "rules", str(RULES))
    assert out.returncode == 0, out.stdout + out.stderr


def test_promtool_test_rules() -> None:
    out = run_promtool("test", "rules", str(RULE_TESTS))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_every_alert_is_tested_firing_and_quiet() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in alerts()}
    assert names - firing == set(), "alerts without a firing case"
    assert names - quiet == set(), "alerts without a quiet case"
    assert (firing | quiet) - names == set(), "test cases for alerts that do not exist"


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to dashes."""
    headings = re.findall(r"^#+\s+(.+?)\s*$", markdown, flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


@pytest.mark.parametrize("rule", alerts(), ids=lambda r: r["alert"])
def test_alert_has_severity_annotations_and_a_runbook_paragraph(rule: dict[str, Any]) -> None:
    assert rule["labels"]["severity"] in {"critical", "warning", "info"}
    annotations = rule["annotations"]
    assert annotations["summary"].strip()
    assert annotations["description"].strip()
    path, _, anchor = annotations["runbook_url"].partition("#")
    assert path == "grafana/RUNBOOK.md"
    assert anchor == rule["alert"].lower()
    assert anchor in _anchors(RUNBOOK.read_text())


def test_rendered_rules_link_the_runbook_url_and_still_pass_promtool(tmp_path: Path) -> None:
    """grafana/render_rules.py: the runbook_url base is the operator's; the
    rendered rules and their tests, rendered alike, stay green."""
    url = "https://git.example.com/s3feed/blob/v0.2.0/grafana/RUNBOOK.md"
    render = Path(__file__).resolve().parents[2] / "grafana" / "render_rules.py"
    for source in (RULES, RULE_TESTS):
        out = subprocess.run(
            [sys.executable, str(render), "--runbook-url", url, str(source)],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        (tmp_path / source.name).write_text(out.stdout)
    rendered = yaml.safe_load((tmp_path / RULES.name).read_text())
    links = [r["annotations"]["runbook_url"] for g in rendered["groups"] for r in g["rules"]]
    assert links and all(link == f"{url}#{link.split('#')[1]}" for link in links)
    assert len(links) == len(alerts())
    result = run_promtool("test", "rules", str(tmp_path / RULE_TESTS.name))
    assert result.returncode == 0, result.stdout + result.stderr
    bad = subprocess.run(
        [sys.executable, str(render), "--runbook-url", "not a url", str(RULES)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert bad.returncode == 1 and "http(s) URL" in bad.stderr
