#!/usr/bin/env python3
"""Render the alert rules with runbook links Alertmanager and Grafana can open.

The rules in grafana/alerts/ link each alert to its paragraph of
grafana/RUNBOOK.md by a repository-relative path. Where the runbook is served
from is the operator's choice (a Git web view of the release, a wiki page):

    python3 grafana/render_rules.py --runbook-url \\
        https://git.example.com/s3feed/blob/v0.2.0/grafana/RUNBOOK.md \\
        grafana/alerts/s3feed.rules.yml > /etc/prometheus/rules/s3feed.rules.yml

Every `runbook_url: grafana/RUNBOOK.md#<anchor>` becomes `<URL>#<anchor>`;
nothing else changes. Standard library only: it runs from the wheel's copy
under <prefix>/share/s3feed/grafana/ as well.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

RELATIVE = "grafana/RUNBOOK.md"
_LINK = re.compile(r"^(\s*runbook_url:\s*)" + re.escape(RELATIVE) + r"(#[\w-]+)\s*$", re.M)


def render(text: str, runbook_url: str) -> str:
    if not re.fullmatch(r"https?://\S+", runbook_url) or "#" in runbook_url:
        raise ValueError(f"--runbook-url must be an http(s) URL without '#': {runbook_url!r}")
    rendered, count = _LINK.subn(lambda m: f"{m[1]}{runbook_url}{m[2]}", text)
    if count == 0:
        raise ValueError(f"no `runbook_url: {RELATIVE}#...` line to render")
    return rendered


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runbook-url", required=True, help="where RUNBOOK.md is served")
    p.add_argument("rules", type=Path, help="a rules (or promtool test) file")
    args = p.parse_args(argv)
    try:
        sys.stdout.write(render(args.rules.read_text(), args.runbook_url.rstrip("/")))
    except (OSError, ValueError) as exc:
        print(f"render_rules: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
