"""grafana/generate.py writes the committed dashboard JSON byte for byte, and
its layout places panels as its docstring says (no overlaps, inside the grid,
ids in order). Edit the generator, not the JSON: see grafana/README.md."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from grafana import generate

REPO = Path(__file__).resolve().parents[2]
COMMITTED = REPO / "grafana" / "dashboards" / "s3feed-overview.json"


def test_committed_dashboard_is_what_the_generator_writes() -> None:
    assert generate.OUT == COMMITTED
    committed = COMMITTED.read_text()
    generated = generate.render()
    if committed != generated:
        # Name the first differing line rather than dumping 2,000 lines.
        for number, (a, b) in enumerate(
            zip(committed.splitlines(), generated.splitlines(), strict=False), 1
        ):
            assert a == b, f"line {number} differs: run python grafana/generate.py"
    assert committed == generated, "run python grafana/generate.py"


def test_check_mode_fails_on_a_hand_edit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "dashboard.json"
    monkeypatch.setattr(generate, "OUT", out)
    assert generate.main([]) == 0
    assert generate.main(["--check"]) == 0
    doc = json.loads(out.read_text())
    doc["panels"][1]["title"] = "edited by hand"
    out.write_text(json.dumps(doc, indent=2) + "\n")
    assert generate.main(["--check"]) == 1


def cells(pos: dict[str, int]) -> set[tuple[int, int]]:
    return {
        (x, y)
        for x in range(pos["x"], pos["x"] + pos["w"])
        for y in range(pos["y"], pos["y"] + pos["h"])
    }


def test_layout_has_no_overlaps_and_sequential_ids() -> None:
    panels = generate.dashboard()["panels"]
    assert [p["id"] for p in panels] == list(range(1, len(panels) + 1))
    taken: set[tuple[int, int]] = set()
    for p in panels:
        pos = p["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= generate.GRID_WIDTH, p["title"]
        mine = cells(pos)
        assert not mine & taken, f"{p['title']} overlaps another panel"
        taken |= mine
    # Rows are full width and each starts below everything before it.
    for i, p in enumerate(panels):
        if p["type"] == "row":
            above = [q["gridPos"]["y"] + q["gridPos"]["h"] for q in panels[:i]]
            assert p["gridPos"]["y"] == max(above, default=0)


def test_layout_wraps_a_panel_that_would_pass_the_grid() -> None:
    wide = generate.stat(title="a", description="", w=16, h=3, unit="none", expr="up")
    tall = generate.stat(title="b", description="", w=8, h=5, unit="none", expr="up")
    panels = generate.layout([generate.row("r", wide, tall, wide)])
    assert [p["gridPos"] for p in panels] == [
        {"h": 1, "w": 24, "x": 0, "y": 0},
        {"h": 3, "w": 16, "x": 0, "y": 1},
        {"h": 5, "w": 8, "x": 16, "y": 1},
        {"h": 3, "w": 16, "x": 0, "y": 6},  # below the taller of the line
    ]


def test_every_query_selects_job_and_instance() -> None:
    for p in generate.dashboard()["panels"]:
        for t in p.get("targets", []):
            assert "$SEL" not in t["expr"]
            if "{" in t["expr"]:
                assert generate.SEL in t["expr"], (p["title"], t["expr"])
