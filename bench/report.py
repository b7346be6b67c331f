"""bench/RESULTS.md from the raw figures of one run of bench/run.py.

Medians over the measured rounds (the warm-up is only a check). Ratios are
paired: a contender's figure divided by s3feed's in the same round, then
the median of those, so a noisy round moves both sides of a ratio. GB are
10^9 bytes; MiB are 2^20. CPU-s per GB, the first figure (on an encoder
host every CPU-second is taken from the encode), counts the daemon and the
client process (the consumer every stream is piped into is the same for all
and reported apart; SeaweedFS's own CPU is shown for context, not counted).
Upload rows read the same way: the producer every pipe upload is fed by
(`cat REF`) is the same for all and reported apart, like the consumer.
On the remote profile (`--link remote`) the relay that stands in for the
network is one more process, its CPU reported apart and not counted.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from s3feed.transfer.config import TransferConfig

from .measure import STALLS
from .peers import BASELINE, CONTENDERS, UPLOADS

_DEFAULTS = TransferConfig()  # what "default [transfer] settings" were in this run


def med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def _f(x: float | None, nd: int = 2) -> str:
    return "—" if x is None or x != x else f"{x:.{nd}f}"


def _other(r: dict[str, Any]) -> float:
    measured = r["client_cpu_s"] + r["daemon_cpu_s"] + r["server_cpu_s"] + r["reader_cpu_s"]
    measured += r.get("relay_cpu_s", 0.0)
    return float(r["machine_busy_s"] - measured)


def summarize(facts: dict[str, Any], key: str = "main") -> dict[str, dict[str, Any]]:
    """Per contender, over facts[key] ("main": plain HTTP; "main_https"; "uploads",
    "uploads_https")."""
    size = facts["object"]["size"]
    rows = [r for r in facts.get(key, []) if r["round"] > 0]
    by: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by[r["name"]].append(r)
    checks: dict[str, tuple[int, int, int]] = {}
    for r in facts.get(key, []):
        ok, total, exact = checks.get(r["name"], (0, 0, 0))
        good = r["error"] is None
        checks[r["name"]] = (ok + good, total + 1, exact + (good and r["exact"]))
    out: dict[str, dict[str, Any]] = {}
    for name, runs in by.items():
        good = [r for r in runs if r["error"] is None]
        cpu = [r["client_cpu_s"] + r["daemon_cpu_s"] for r in good]
        walls = [r["wall_s"] for r in good]
        s: dict[str, Any] = {
            "mode": runs[0]["mode"],
            "n": len(good),
            "failed": len(runs) - len(good),
            "wall_s": med(walls),
            "wall_min": min(walls, default=float("nan")),
            "wall_max": max(walls, default=float("nan")),
            "gbps": size / 1e9 / med(walls) if good else float("nan"),
            "cpu_s": med(cpu),
            "cpu_per_gb": med(cpu) / (size / 1e9),
            "client_cpu_s": med([r["client_cpu_s"] for r in good]),
            "client_sys_s": med([r.get("client_sys_s", float("nan")) for r in good]),
            "stalls": (  # None: runs from before they were counted
                {k: sum(r["kernel_stalls"][k] for r in good) for k in STALLS}
                if good and all("kernel_stalls" in r for r in good)
                else None
            ),
            "daemon_cpu_s": med([r["daemon_cpu_s"] for r in good]),
            "daemon_sys_s": med([r.get("daemon_sys_s", 0.0) for r in good]),
            "reader_cpu_s": med([r["reader_cpu_s"] for r in good]),
            "server_cpu_s": med([r["server_cpu_s"] for r in good]),
            "server_user_s": med([r.get("server_user_s", float("nan")) for r in good]),
            "relay_cpu_s": med([r.get("relay_cpu_s", 0.0) for r in good]),
            "other_cpu_s": med([_other(r) for r in good]),
            "client_rss_mib": max((r["client_rss_mib"] for r in good), default=float("nan")),
            "daemon_hwm_mib": max(
                (r["daemon_hwm_mib"] for r in good if r["daemon_hwm_mib"]), default=None
            ),
            "daemon_growth_mib": max(
                (
                    r["daemon_hwm_mib"] - r["daemon_base_mib"]
                    for r in good
                    if r["daemon_hwm_mib"] and r.get("daemon_base_mib")
                ),
                default=None,
            ),
            "checks": checks.get(name, (0, 0, 0)),
        }
        out[name] = s
    for name, s in out.items():
        base = BASELINE[s["mode"]]
        base_by_round = {r["round"]: r for r in by.get(base, []) if r["error"] is None}
        wr, cr = [], []
        for r in by[name]:
            b = base_by_round.get(r["round"])
            if r["error"] is None and b is not None:
                wr.append(r["wall_s"] / b["wall_s"])
                bc = b["client_cpu_s"] + b["daemon_cpu_s"]
                if bc > 0:
                    cr.append((r["client_cpu_s"] + r["daemon_cpu_s"]) / bc)
        s["wall_ratio"], s["cpu_ratio"] = med(wr), med(cr)
    return out


def remote(facts: dict[str, Any]) -> bool:
    return bool(facts.get("link", {}).get("profile") == "remote")


def _link_lines(facts: dict[str, Any]) -> list[str]:
    if not remote(facts):
        return []
    link = facts["link"]
    stats = [s for s in link.get("relay_stats") or [] if s]  # {}: a relay wrote none
    ahead = max((s.get("max_ahead", 0.0) for s in stats), default=float("nan"))
    out = [
        f"**Remote profile** (`--link remote --link-rate {link['rate']:.0f} --link-delay"
        f" {link['delay']:g}`): every contender (the daemon's `[s3]`/`[sts]` endpoint, the"
        " peers, the presigned URLs) reaches SeaweedFS through one relay process,"
        " localaws/relay.py, which paces each connection's server-to-client bytes to"
        f" {link['rate'] / 1e6:g} MB/s (a token bucket {link['burst'] >> 10} KiB deep, read"
        f" {link['slice'] >> 10} KiB at a time) and holds each new connection for"
        f" {link['delay'] * 1e3:g} ms and each request for {link['delay'] * 1e3:g} ms more"
        " (client-to-server bytes are not paced). Its CPU is in the `relay CPU-s` column,"
        " apart from each contender's and not counted in CPU-s/GB.",
    ]
    if stats:
        out[0] += (
            f" Over the whole run it relayed {sum(s['bytes_down'] for s in stats) / 1e9:.2f} GB"
            f" down on {sum(s['connections'] for s in stats)} connections, never more than"
            f" {_f(ahead / 1024, 0)} KiB ahead of its pace (one read is"
            f" {link['slice'] >> 10} KiB)."
        )
    cap = facts.get("link_capacity")
    if cap:
        out += [
            "",
            f"What the relay carries on this machine, SeaweedFS behind it: {cap['streams']}"
            f" presigned GETs at once, {cap.get('bytes_each', 0) >> 20} MiB each, into curl to"
            " /dev/null"
            f" (paced, they could take {_f(cap.get('paced_mbps'), 0)} MB/s):"
            f" {_f(cap['aggregate_mbps'], 0)} MB/s aggregate, relay"
            f" {_f(cap['relay_cpu_per_gb'])} CPU-s/GB, {'all complete' if cap['ok'] else 'FAILED'}."
            " The scale rows are read against this figure.",
        ]
    return [*out, ""]


def render(facts: dict[str, Any]) -> str:
    m = facts["machine"]
    obj = facts["object"]
    size = obj["size"]
    lines = [
        "# s3feed vs other S3 clients",
        "",
        f"Run {facts['started']} to {facts['finished']} by `bench/run"
        f" --size {size}` ({size / (1 << 30):g} GiB, {facts['args']['runs']} measured rounds"
        f" after a checked warm-up). Written by bench/report.py; raw figures in"
        f" {facts.get('raw', 'RESULTS.json')} beside it.",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, {m['os']},"
        f" kernel {m['kernel']}, Python {m['python']}, output to {m['fs']} (page cache)."
        f" Load average at start {facts['loadavg_start']}, at end {facts['loadavg_end']}"
        " (the 2 cores are shared with other engineers' test runs: see the `other CPU-s`"
        " column). SeaweedFS 4.48 `weed mini` on 127.0.0.1 with defaults (no"
        " readerCacheSizeMB); client, daemon and server share the same 2 cores.",
        "",
        f"Object: {size} bytes, multipart with {obj['upload_part_size'] >> 20} MiB parts,"
        f" ETag {obj['etag']}, checksums from HEAD: {obj['checksums'] or 'none'}.",
        "",
        "Versions: " + "; ".join(f"{k} `{v}`" for k, v in facts["versions"].items()) + ".",
        "",
        *_link_lines(facts),
    ]
    for key, proto, modes, note in (
        ("main", "plain HTTP", DOWNLOAD_MODES, None),
        ("main_https", "HTTPS", DOWNLOAD_MODES, ("HTTPS", "https_note")),
        ("uploads", "plain HTTP", UPLOAD_MODES, None),
        ("uploads_https", "HTTPS", UPLOAD_MODES, ("Uploads over HTTPS", "uploads_https_note")),
    ):
        if not facts.get(key):
            continue
        if note is not None:
            lines += [f"# {note[0]}: {facts.get(note[1], '')}", ""]
        lines += _tables(facts, key, proto, modes)
    if facts.get("ttfb"):
        lines += [
            "## Time to first byte",
            "",
            "From spawning the reader process to its first byte (the first 64 KiB"
            " compared with the reference), on one running daemon, each sample"
            " once the machine is quiet again (under a quarter of a core busy"
            " over 100 ms, at most 5 s); medians.",
            "",
            "| contender | median s | min s | max s |",
            "|---|---|---|---|",
        ]
        for n, xs in facts["ttfb"].items():
            lines.append(f"| {n} | {_f(med(xs), 3)} | {_f(min(xs), 3)} | {_f(max(xs), 3)} |")
        lines.append("")
    if facts.get("slow"):
        s = facts["slow"]
        lines += [
            "## Slow reader",
            "",
            f"{s['size']} bytes streamed to `curl --limit-rate {s['rate_limit']}` (| consume):"
            f" {_f(s['wall_s'], 1)} s ({_f(s['size'] / s['wall_s'] / 1e6, 1)} MB/s),"
            f" {'byte-exact' if s['ok'] else 'FAILED'}. Daemon RSS {_f(s['base_rss_mib'], 0)} MiB"
            f" before, peak {_f(s['daemon_hwm_mib'], 0)} MiB (VmHWM; sampled max"
            f" {_f(s['peak_rss_sampled_mib'], 0)}), against the budget: baseline +"
            f" `stream_memory` {s.get('budget_mib', float('nan')):g} MiB ="
            f" {_f(s['base_rss_mib'] + s.get('budget_mib', float('nan')), 0)} MiB; stream window"
            f" {s['window_mib']:g} MiB, `s3feed_stream_buffered_bytes` peak"
            f" {_f(s['peak_buffered_mib'], 0)} MiB; daemon CPU {_f(s['daemon_cpu_s'])} s.",
            "",
        ]
    if facts.get("crowd"):
        lines += _crowd(facts["crowd"])
    if facts.get("concurrency"):
        lines += _concurrency(facts["concurrency"], _capacity(facts))
    if facts.get("idle"):
        i = facts["idle"]
        lines += [
            "## Idle daemon",
            "",
            f"One job registered, no transfer: RSS {_f(i['rss_mib'], 0)} MiB,"
            f" {_f(i['cpu_s'], 3)} CPU-s over {i['seconds']:g} s.",
            "",
        ]
    lines += _targets(facts)
    lines += [
        "## How it was measured",
        "",
        "- Each run is a fresh process for every peer and a fresh `s3feed serve` (empty cache)"
        " for every s3feed run. Peer CPU and peak RSS are the process's own (`wait4` rusage),"
        " start-up included. The daemon's CPU is the /proc/PID/stat delta around the request"
        " only (its start-up, imports and the job's AssumeRole are not counted; another job's"
        " listing first loads botocore's models, as in a long-lived daemon, but the measured"
        " job creates its own S3 client inside the measured request, as every new job does);"
        " its peak RSS is VmHWM since start.",
        _transfer_line(facts),
        "- All read with the same kind of credentials: role-session keys from AssumeRole of the"
        " reader role (the daemon assumes it for its job; the peers get the keys of one"
        " AssumeRole). Every stream contender writes into the same consumer, bench/consume.c"
        " (read(2) into 1 MiB, memcmp against the mmap'd reference, length checked: every byte"
        " of every run checked, for about the CPU of `cat >/dev/null`); every file contender"
        " writes into the same file system (the work directory), compared with `cmp` after the"
        " timed part. `s3feed cat` passes its stdout (the consumer's pipe) to the daemon, which"
        " writes into it itself.",
        "- Uploads (when run): the reference written to S3 with a session of the writer role"
        " (the daemon's job, whose Destination is `bench-out/`, and the peers alike), from the"
        " file or from `cat REF |` (the same producer for every pipe row, its CPU reported"
        " apart); `s3feed put` talks to a fresh daemon per run like the rows above. After the"
        " timed part each object is read back (presigned GET, plain HTTP) into the consumer,"
        " every byte compared, then deleted (with any multipart upload left) before the next"
        " run.",
        "- `os.sync()` before each run, so no run pays for another's dirty pages. At least 5"
        " measured rounds, in alternating order (A B C, C B A); medians, and paired ratios"
        " (per round, then the median).",
        "- `other CPU-s` = machine busy time during the run minus everything measured: other"
        " people's load plus kernel threads (writeback, softirq).",
        "- `server CPU-s` is SeaweedFS's process group during the run; `user` is its own code"
        " (Go: request handling, scheduler, GC), the rest the kernel's copies and TCP. The"
        " server shares the 2 cores with the contender: its user time grows when they are"
        " saturated (bench/FINDINGS.md, sixth pass).",
        "",
    ]
    return "\n".join(lines)


DOWNLOAD_MODES = (
    ("file", "To a file (cache mode)", "consumer CPU-s"),
    ("stream", "Streams, in order", "consumer CPU-s"),
)
UPLOAD_MODES = (
    ("upload-file", "Uploads from a file", "producer CPU-s"),
    ("upload-pipe", "Uploads from a pipe (`cat REF |`)", "producer CPU-s"),
)


def _tables(
    facts: dict[str, Any], key: str, proto: str, modes: tuple[tuple[str, str, str], ...]
) -> list[str]:
    """One table per mode of facts[key], then its failed runs."""
    lines: list[str] = []
    summary = summarize(facts, key)
    far = remote(facts)
    every = CONTENDERS + UPLOADS
    how = {c.name: c.how for c in every}
    for mode, title, apart in modes:
        names = [c.name for c in every if c.name in summary and summary[c.name]["mode"] == mode]
        if not names:
            continue
        base = BASELINE[mode]
        lines += [
            f"## {title}, {proto}",
            "",
            f"Ratios are the contender's over {base}'s in the same round (> 1: s3feed better).",
            "",
            "| contender | how | CPU-s/GB | CPU ratio | wall s (min-max) | wall ratio | GB/s"
            f" | client + daemon CPU-s | {apart} | peak RSS MiB client / daemon (+ over"
            " its baseline) | server CPU-s |"
            + (" relay CPU-s |" if far else "")
            + " other CPU-s | checked |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|" + ("---|" if far else ""),
        ]
        for n in names:
            s = summary[n]
            ok, total, exact = s["checks"]
            growth = f" (+{_f(s['daemon_growth_mib'], 0)})" if s["daemon_growth_mib"] else ""
            apart_cpu = s["reader_cpu_s"] if mode in ("stream", "upload-pipe") else None
            lines.append(
                f"| {n} | {how[n]} | **{_f(s['cpu_per_gb'])}** | {_f(s['cpu_ratio'])}"
                f" | {_f(s['wall_s'])} ({_f(s['wall_min'])}-{_f(s['wall_max'])})"
                f" | {_f(s['wall_ratio'])} | {_f(s['gbps'])}"
                f" | {_f(s['client_cpu_s'])}{_client_sys(s)} + {_f(s['daemon_cpu_s'])}{_sys(s)}"
                f" | {_f(apart_cpu)}"
                f" | {_f(s['client_rss_mib'], 0)} / {_f(s['daemon_hwm_mib'], 0)}{growth}"
                f" | {_f(s['server_cpu_s'])}{_user(s)}"
                + (f" | {_f(s['relay_cpu_s'])}" if far else "")
                + f" | {_f(s['other_cpu_s'])}"
                f" | {ok}/{total} ok, {exact} byte-exact |"
            )
        lines += _stall_line(summary, names)
        lines.append("")
    return lines + _failures(facts, key)


def _stall_line(summary: dict[str, dict[str, Any]], names: list[str]) -> list[str]:
    """Which contenders' runs met direct reclaim or compaction (charged to
    whichever process allocated: bench/measure.py, STALLS), or that none did."""
    counted = {n: summary[n]["stalls"] for n in names if summary[n]["stalls"] is not None}
    if not counted:
        return []
    hit = [
        f"{n} ({', '.join(f'{k} {v}' for k, v in stalls.items() if v)})"
        for n, stalls in counted.items()
        if any(stalls.values())
    ]
    if not hit:
        return ["", "No measured run met direct reclaim or compaction (/proc/vmstat)."]
    return ["", "Measured runs that met direct reclaim or compaction: " + "; ".join(hit) + "."]


def _client_sys(s: dict[str, Any]) -> str:
    sys_s = s["client_sys_s"]
    return "" if math.isnan(sys_s) else f" ({_f(sys_s)} sys)"  # NaN: a run from before it


def _user(s: dict[str, Any]) -> str:
    """The server's user-space share: what its own code spent, apart from the kernel's copies."""
    user = s["server_user_s"]
    return "" if math.isnan(user) else f" ({_f(user)} user)"  # NaN: a run from before the split


def _sys(s: dict[str, Any]) -> str:
    return f" ({_f(s['daemon_sys_s'])} sys)" if s["daemon_hwm_mib"] else ""


def _failures(facts: dict[str, Any], key: str = "main") -> list[str]:
    failed = [r for r in facts[key] if r["error"]]
    if not failed:
        return []
    out = ["Failed runs:", ""]
    out += [f"- {r['name']} round {r['round']}: {r['error'][:300]}" for r in failed]
    return [*out, ""]


def _crowd(rows: list[dict[str, Any]]) -> list[str]:
    out = [
        "## Streams at once (stream memory)",
        "",
        "Several streams of the object at once on one fresh daemon, each into the consumer;"
        " the daemon's peak RSS against its baseline plus `[transfer] stream_memory` (all"
        " stream windows together) and the buffered-bytes gauge's peak (sampled every 100 ms).",
        "",
        "| streams | readers | wall s | aggregate MB/s | daemon CPU-s | RSS before MiB"
        " | peak RSS MiB (VmHWM) | budget: before + stream_memory MiB | buffered peak MiB"
        " | within | checked |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        readers = (
            "`s3feed cat` (keep up)"
            if r["rate_limit"] is None
            else f"curl --limit-rate {r['rate_limit'] / 1e6:g} MB/s"
        )
        limit = r["base_rss_mib"] + r["budget_mib"]
        out.append(
            f"| {r['streams']} | {readers} | {_f(r['wall_s'], 1)}"
            f" | {_f(r['streams'] * r['size'] / r['wall_s'] / 1e6, 0)} | {_f(r['daemon_cpu_s'])}"
            f" | {_f(r['base_rss_mib'], 0)} | {_f(r['daemon_hwm_mib'], 0)} | {_f(limit, 0)}"
            f" | {_f(r['peak_buffered_mib'], 0)} | {'yes' if r['daemon_hwm_mib'] <= limit else '**no**'}"
            f" | {'byte-exact' if r['ok'] else 'FAILED'} |"
        )
    return [*out, ""]


def _by_jobs(rounds: list[dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    """The concurrency rounds by their count of jobs, in the order they ran."""
    out: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for r in rounds:
        out[r["jobs"]].append(r)
    return dict(out)


def _scale(n: int, rs: list[dict[str, Any]]) -> dict[str, float]:
    """One count of jobs: medians over its rounds (bytes/s, CPU-s per GB)."""
    size = rs[0]["size"]
    gb = n * size / 1e9
    return {
        "agg": med([n * size / r["wall_s"] for r in rs]),
        "seq": med([n * size / r["seq_s"] for r in rs]),
        "first": med([size / r["single_s"] for r in rs]),
        "fair": med([max(r["durations_s"]) / min(r["durations_s"]) for r in rs]),
        "cpu_gb": med([r["daemon_cpu_s"] / gb for r in rs]),
        "seq_cpu_gb": med([r["seq_cpu_s"] / gb for r in rs]),
        "relay_gb": med([r.get("relay_cpu_s", 0.0) / gb for r in rs]),
        "hwm": max(r["daemon_hwm_mib"] for r in rs),
    }


def _concurrency(rounds: list[dict[str, Any]], capacity: float | None = None) -> list[str]:
    """The concurrency rows, one per count of jobs; `capacity`: what the
    remote profile's relay carries (bytes/s), when measured."""
    r0 = rounds[0]
    size = r0["size"]
    groups = _by_jobs(rounds)
    out = [
        "## Concurrency",
        "",
        f"Each job fetches its own {size >> 20} MiB object, all at the same moment on one"
        f" daemon (jobs spread over {r0['tenants']} tenants), against the same fetches one"
        " after another on a fresh daemon (same bytes, so the same page-cache writeback);"
        f" {len(groups[r0['jobs']])} rounds per count, medians. CPU-s/GB is the daemon's over"
        " all the jobs' bytes" + (", the relay's apart" if capacity else "") + ". (SeaweedFS"
        " cannot check ExternalId: tenants are names.) Fetches hold no stream window:"
        " `stream_memory` does not apply; receive buffers are `global_concurrency` x 1 MiB.",
        "",
        "| jobs | aggregate MB/s | x one after another | x the first alone"
        + (" | x what the relay carries" if capacity else "")
        + " | daemon CPU-s/GB at once / one after another"
        + (" | relay CPU-s/GB" if capacity else "")
        + " | slowest/fastest | daemon peak RSS MiB |",
        "|---|---|---|---|---|---|---|" + ("---|---|" if capacity else ""),
    ]
    for n, rs in groups.items():
        x = _scale(n, rs)
        out.append(
            f"| {n} | {_f(x['agg'] / 1e6, 0)} | {_f(x['agg'] / x['seq'])}"
            f" | {_f(x['agg'] / x['first'])}"
            + (f" | {_f(x['agg'] / capacity)}" if capacity else "")
            + f" | {_f(x['cpu_gb'])} / {_f(x['seq_cpu_gb'])}"
            + (f" | {_f(x['relay_gb'])}" if capacity else "")
            + f" | {_f(x['fair'])} | {_f(x['hwm'], 0)} |"
        )
    out.append("")
    for r in rounds:
        ds = ", ".join(f"{d:.1f}" for d in r["durations_s"])
        ss = ", ".join(f"{d:.1f}" for d in r["seq_durations_s"])
        out.append(
            f"- {r['jobs']} jobs, round {r['round']}: at once {r['wall_s']:.2f} s (per job s:"
            f" {ds}); one after another {r['seq_s']:.2f} s (per job s: {ss})"
        )
    return [*out, ""]


_TARGETS_HEAD = [
    "## Targets (issues 8, 13, 14)",
    "",
    "Issue 14's bar is for 2 GiB on HTTP and HTTPS; a row says which run this is.",
    "",
    "| target | measured | met |",
    "|---|---|---|",
]


def _capacity(facts: dict[str, Any]) -> float | None:
    """What the remote profile's relay carried, bytes/s (None: not measured)."""
    cap = facts.get("link_capacity")
    return float(cap["aggregate_mbps"]) * 1e6 if cap and cap["ok"] else None


def _targets(facts: dict[str, Any]) -> list[str]:
    rows: list[str] = []
    s = summarize(facts) if facts.get("main") else {}

    def row(what: str, measured: str, ok: bool | None) -> None:
        rows.append(
            f"| {what} | {measured} | {'—' if ok is None else ('yes' if ok else '**no**')} |"
        )

    if remote(facts):
        _targets_25(row, facts)
        head = ["## Targets (issue 25, remote profile)", "", *_TARGETS_HEAD[-2:]]
        return [*head, *rows, ""] if rows else []

    for key, proto in (("main", "HTTP"), ("main_https", "HTTPS")):
        p = summarize(facts, key) if facts.get(key) else {}
        _targets_14(row, proto, p)
    c, rc = s.get("s3feed-cache"), s.get("rclone-copyto")
    st, rcat = s.get("s3feed-cat"), s.get("rclone-cat")
    for r in facts.get("crowd", []):
        limit = r["base_rss_mib"] + r["budget_mib"]
        kind = "keep up" if r["rate_limit"] is None else "slow"
        row(
            f"13: {r['streams']} streams at once ({kind}): peak RSS <= baseline + stream_memory",
            f"{_f(r['daemon_hwm_mib'], 0)} MiB vs {_f(limit, 0)} MiB",
            r["daemon_hwm_mib"] <= limit,
        )
    if c and rc:
        row(
            "cache wall <= rclone copyto",
            f"{_f(c['wall_s'])} s vs {_f(rc['wall_s'])} s (paired ratio {_f(rc['wall_ratio'])})",
            rc["wall_ratio"] >= 1,
        )
        row(
            "cache CPU-s/GB <= rclone's",
            f"{_f(c['cpu_per_gb'])} vs {_f(rc['cpu_per_gb'])}",
            c["cpu_per_gb"] <= rc["cpu_per_gb"],
        )
    if c:
        row(
            "cache-mode peak RSS <= 150 MiB",
            f"{_f(c['daemon_hwm_mib'], 0)} MiB",
            c["daemon_hwm_mib"] is not None and c["daemon_hwm_mib"] <= 150,
        )
    if st and rcat:
        row(
            "stream wall <= rclone cat",
            f"{_f(st['wall_s'])} s vs {_f(rcat['wall_s'])} s"
            f" (paired ratio {_f(rcat['wall_ratio'])})",
            rcat["wall_ratio"] >= 1,
        )
    t = facts.get("ttfb", {})
    if t.get("s3feed-curl") and t.get("curl"):
        a, b = med(t["s3feed-curl"]), med(t["curl"])
        row("TTFB <= 1.5 x curl's (both curl)", f"{_f(a, 3)} s vs {_f(b, 3)} s", a <= 1.5 * b)
    if facts.get("slow"):
        sl = facts["slow"]
        if "budget_mib" in sl:
            row(
                "13: slow reader: peak RSS <= baseline + stream_memory",
                f"{_f(sl['daemon_hwm_mib'], 0)} MiB vs {_f(sl['base_rss_mib'] + sl['budget_mib'], 0)} MiB",
                sl["daemon_hwm_mib"] <= sl["base_rss_mib"] + sl["budget_mib"],
            )
        row(
            "slow reader: peak RSS <= window + 100 MiB",
            f"{_f(sl['daemon_hwm_mib'], 0)} MiB vs {sl['window_mib'] + 100:g} MiB",
            sl["daemon_hwm_mib"] <= sl["window_mib"] + 100,
        )
    if facts.get("idle"):
        i = facts["idle"]
        row(
            "idle daemon <= 80 MiB, ~0 CPU",
            f"{_f(i['rss_mib'], 0)} MiB, {_f(i['cpu_s'] / i['seconds'] * 100, 2)} % of a core",
            i["rss_mib"] <= 80 and i["cpu_s"] / i["seconds"] < 0.01,
        )
    for n, rs in _by_jobs(facts.get("concurrency", [])).items():
        if n < 2:
            continue
        x = _scale(n, rs)
        row(
            f"{n} jobs: aggregate >= 0.9 x single (one after another)",
            f"{_f(x['agg'] / x['seq'])} x",
            x["agg"] >= 0.9 * x["seq"],
        )
        row(f"{n} jobs: slowest/fastest <= 1.5", _f(x["fair"]), x["fair"] <= 1.5)
    return [*_TARGETS_HEAD, *rows, ""] if rows else []  # no row: a run without those suites


def _targets_25(row: Callable[[str, str, bool | None], None], facts: dict[str, Any]) -> None:
    """Issue 25's bar for the remote profile. A peer's paired ratio is the
    peer's figure over s3feed's, so "s3feed <= k x peer" is "ratio >= 1/k"."""
    for key, proto in (("main", "HTTP"), ("main_https", "HTTPS")):
        s = summarize(facts, key) if facts.get(key) else {}
        for mine, peer, k in (
            ("s3feed-cache", "rclone-copyto", 0.35),
            ("s3feed-cache", "s5cmd-cp", 0.5),
            ("s3feed-cat", "rclone-cat", 0.3),
        ):
            a, b = s.get(mine), s.get(peer)
            if a and b:
                row(
                    f"25 ({proto}): {mine} wall <= {k:g} x {peer}'s (paired)",
                    f"{_f(a['wall_s'])} s vs {_f(b['wall_s'])} s: {_f(1 / b['wall_ratio'])} x",
                    1 / b["wall_ratio"] <= k,
                )
        for mine, peer in (
            ("s3feed-cache", "rclone-copyto"),
            ("s3feed-cache", "s5cmd-cp"),
            ("s3feed-cat", "rclone-cat"),
            ("s3feed-cat", "s5cmd-cat"),
        ):
            a, b = s.get(mine), s.get(peer)
            if a and b:
                row(
                    f"25 ({proto}): {mine} CPU-s/GB <= 1.0 x {peer}'s (paired)",
                    f"{_f(a['cpu_per_gb'])} vs {_f(b['cpu_per_gb'])}: {_f(1 / b['cpu_ratio'])} x",
                    1 / b["cpu_ratio"] <= 1.0,
                )
    t = facts.get("ttfb", {})
    for mine in ("s3feed-curl", "s3feed-cat"):
        if t.get(mine) and t.get("curl"):
            first, curl = med(t[mine]), med(t["curl"])
            row(
                f"25: time to first byte, {mine} <= 1.2 x curl's",
                f"{_f(first, 3)} s vs {_f(curl, 3)} s",
                first <= 1.2 * curl,
            )
    capacity = _capacity(facts)
    for n, rs in _by_jobs(facts.get("concurrency", [])).items():
        x = _scale(n, rs)
        if capacity and n == max(r["jobs"] for r in facts["concurrency"]):
            row(
                f"25: {n} jobs: aggregate >= 0.8 x what the relay carries",
                f"{_f(x['agg'] / 1e6, 0)} vs {_f(capacity / 1e6, 0)} MB/s: {_f(x['agg'] / capacity)} x",
                x["agg"] >= 0.8 * capacity,
            )
        if n > 1:
            row(f"25: {n} jobs: slowest/fastest <= 1.5", _f(x["fair"]), x["fair"] <= 1.5)


def _targets_14(
    row: Callable[[str, str, bool | None], None], proto: str, s: dict[str, Any]
) -> None:
    """Issue 14's bar, for one protocol's rows (its stream wall as issue 25 put it)."""
    c, rc = s.get("s3feed-cache"), s.get("rclone-copyto")
    st, rcat = s.get("s3feed-cat"), s.get("rclone-cat")
    if c and rc:  # rclone's paired ratio is rclone over s3feed: s3feed <= k x rclone is >= 1/k
        row(
            f"14 ({proto}): cache CPU-s/GB <= 0.8 x rclone copyto's (paired)",
            f"{_f(c['cpu_per_gb'])} vs {_f(rc['cpu_per_gb'])}: {_f(1 / rc['cpu_ratio'])} x",
            1 / rc["cpu_ratio"] <= 0.8,
        )
        row(
            f"14 ({proto}): cache wall <= 1.0 x rclone copyto's (paired)",
            f"{_f(c['wall_s'])} s vs {_f(rc['wall_s'])} s: {_f(1 / rc['wall_ratio'])} x",
            1 / rc["wall_ratio"] <= 1.0,
        )
    if st and rcat:
        row(
            f"14 ({proto}): `s3feed cat` CPU-s/GB (daemon + cat) <= 1.0 x rclone cat's (paired)",
            f"{_f(st['cpu_per_gb'])} vs {_f(rcat['cpu_per_gb'])}: {_f(1 / rcat['cpu_ratio'])} x",
            1 / rcat["cpu_ratio"] <= 1.0,
        )
    curl = s.get("curl")
    if st and curl:  # issue 25 replaced 14's 0.9 x rclone cat's wall with the curl ceiling
        row(
            f"25 ({proto}): `s3feed cat` wall <= 1.0 x the curl ceiling row's (paired)",
            f"{_f(st['wall_s'])} s vs {_f(curl['wall_s'])} s: {_f(1 / curl['wall_ratio'])} x",
            1 / curl["wall_ratio"] <= 1.0,
        )
    if st and st["daemon_growth_mib"] is not None:
        row(
            f"14 ({proto}): one stream's peak daemon RSS <= baseline + 64 MiB (reader keeps up)",
            f"+{_f(st['daemon_growth_mib'], 0)} MiB (peak {_f(st['daemon_hwm_mib'], 0)})",
            st["daemon_growth_mib"] <= 64,
        )


def _transfer_line(facts: dict[str, Any]) -> str:
    settings = facts.get("args", {}).get("transfer") or []
    s3feed = (
        "s3feed runs with [transfer] "
        + ", ".join(f"{k} = {v}" for k, v in settings)
        + " (a tuning run; the rest default)"
        if settings
        else f"s3feed runs with default [transfer] settings ({_DEFAULTS.part_size >> 20} MiB"
        f" parts, cache fetches of large objects in ranges of up to {_DEFAULTS.max_range >> 20}"
        f" MiB, GETs in flight learned from the link to reach {_DEFAULTS.target_throughput / 1e9:g}"
        f" Gbit/s, stream windows from {_DEFAULTS.stream_window >> 20} MiB up to a part per GET)"
    )
    return f"- {s3feed}; peers with their defaults except where the `how` column says."
