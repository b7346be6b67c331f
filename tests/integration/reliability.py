"""What the reliability suites share: a daemon behind fault proxies, byte checks,
a secrets grep, and the tally that becomes the results table.

    with proxied_daemon(local_aws, tmp_path, sts_expires_in=8) as rig:
        rig.s3.add(Fault("reset"))
        Client(str(rig.daemon.socket)).fetch(...)
        rig.verify(data, received)       # counts bytes verified / corrupt bytes

`rig.daemon` is started and stopped by daemonproc's harness (SIGTERM must end
it with 0), but may also be SIGKILLed and restarted on the same cache directory.
On the way out every rig greps the daemon's log and cache directory for every
secret STS issued through its proxy, and counts what it finds.

The tally is one object per test process; `results_table` (a session fixture
that the suite's modules import) writes it as Markdown when the session ends,
to $S3FEED_RESULTS or, when unset, to a file in the system temp dir.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import os
import signal
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from daemonproc import Daemon, free_port, identity, stop
from faultproxy import ISSUED, FaultProxy

from localaws.daemon import daemon_env, start

if TYPE_CHECKING:
    from conftest import LocalAws

MiB = 1024 * 1024


@dataclass
class Tally:
    faults: collections.Counter[str] = field(default_factory=collections.Counter)
    transfers_completed: int = 0
    transfers_failed_cleanly: int = 0
    bytes_verified: int = 0
    corrupt_bytes: int = 0
    daemon_crashes: int = 0
    daemon_runs: int = 0
    secrets_issued: set[str] = field(default_factory=set)
    secrets_found: int = 0
    places_grepped: int = 0
    notes: list[str] = field(default_factory=list)


TALLY = Tally()


def blob(n: int, seed: int) -> bytes:
    out = bytearray()
    block = hashlib.sha256(seed.to_bytes(8, "big")).digest()
    while len(out) < n:
        block = hashlib.sha512(block).digest()
        out += block * 64
    return bytes(out[:n])


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def uri(bucket: str, folder: str = "") -> str:
    return f"https://{bucket}.s3.us-east-1.amazonaws.com/{folder}"


def check_bytes(expected: bytes, received: bytes, *, offset: int = 0) -> bool:
    """Count what a reader got: every byte it got must be the object's byte at
    that position. True when it got the whole object."""
    want = expected[offset : offset + len(received)]
    wrong = 0
    if want != received:
        wrong = (
            len(received) - len(want) + sum(a != b for a, b in zip(want, received, strict=False))
        )
    TALLY.corrupt_bytes += wrong
    assert wrong == 0, f"{wrong} wrong bytes served"
    complete = offset + len(received) == len(expected)
    if complete:
        assert sha(received) == sha(expected[offset:])
        TALLY.transfers_completed += 1
        TALLY.bytes_verified += len(received)
    return complete


def check_file(expected: bytes, path: str | Path) -> None:
    check_bytes(expected, Path(path).read_bytes())


@dataclass
class Rig:
    local_aws: LocalAws
    work: Path
    s3: FaultProxy
    sts: FaultProxy
    overrides: dict[str, dict[str, Any]]
    daemon: Daemon | None = None
    logs: list[Path] = field(default_factory=list)

    @property
    def socket(self) -> str:
        assert self.daemon is not None
        return str(self.daemon.socket)

    @property
    def pid(self) -> int:
        assert self.daemon is not None
        return self.daemon.process.pid

    def start(self) -> Daemon:
        """Start `s3feed serve` (again) on the same socket, cache and config."""
        self.work.mkdir(parents=True, exist_ok=True)
        port = free_port()
        sections: dict[str, dict[str, Any]] = {
            "api": {"socket": self.work / "s3feed.sock", "drain_grace": 20},
            "metrics": {"listen": f"127.0.0.1:{port}"},
            "sts": {"region": self.local_aws.region, "endpoint_url": self.sts.url},
            "s3": {"endpoint_url": self.s3.url},
            # One part per GET (faults are paced per GET), as in daemonproc's defaults.
            # The daemon's stall timer runs on its own clock, which no test can move:
            # 5 s without a byte is far beyond any pause of a busy machine, and an
            # injected stall lasts until the daemon gives up (test_faults.KINDS).
            "transfer": {
                "part_size": "1MiB",
                "max_range": "1MiB",
                "stall_timeout": 5.0,
                "retries": 10,
            },
            "cache": {"dir": self.work / "cache", "max_size": "2GiB", "min_free": "0"},
        }
        for name, keys in self.overrides.items():
            sections.setdefault(name, {}).update(keys)
        log = self.work / f"s3feed-{len(self.logs)}.log"
        self.logs.append(log)
        TALLY.daemon_runs += 1
        env = daemon_env(identity(self.local_aws))
        self.daemon = start(self.work / "s3feed.toml", sections, env, log)
        return self.daemon

    def kill(self) -> None:
        """SIGKILL, as a crash or the OOM killer would."""
        assert self.daemon is not None
        self.daemon.process.send_signal(signal.SIGKILL)
        self.daemon.process.wait(timeout=10)

    def alive(self) -> bool:
        return self.daemon is not None and self.daemon.process.poll() is None

    def stop(self) -> int:
        """SIGTERM; anything but a clean exit 0 counts as a crash."""
        assert self.daemon is not None
        if self.daemon.process.poll() is not None:
            TALLY.daemon_crashes += 1
            raise AssertionError(
                f"s3feed serve died with {self.daemon.process.returncode}:\n{self.log_text()[-3000:]}"
            )
        code = stop(self.daemon.process)
        if code != 0:
            TALLY.daemon_crashes += 1
        assert code == 0, f"s3feed serve exited with {code}:\n{self.log_text()[-3000:]}"
        return code

    def log_text(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in self.logs if p.exists())

    def metrics(self) -> str:
        import urllib.request

        assert self.daemon is not None
        with urllib.request.urlopen(f"http://{self.daemon.instance}/metrics", timeout=10) as r:
            return str(r.read().decode())

    def grep_secrets(self, extra: Iterable[tuple[str, str | bytes]] = ()) -> list[str]:
        """Every place (logs, cache files, `extra`) that contains a secret STS issued."""
        secrets = set(self.sts.issued_secrets) | ISSUED
        TALLY.secrets_issued |= secrets
        places: list[tuple[str, bytes]] = [
            (str(p), p.read_bytes()) for p in self.logs if p.exists()
        ]
        cache = self.work / "cache"
        if cache.exists():
            places += [(str(p), p.read_bytes()) for p in cache.rglob("*") if p.is_file()]
        places += [(name, v.encode() if isinstance(v, str) else v) for name, v in extra]
        TALLY.places_grepped += len(places)
        found = [
            f"{name}: {s[:6]}..." for name, data in places for s in secrets if s.encode() in data
        ]
        TALLY.secrets_found += len(found)
        return found


def metric_value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        base = head.split("{", 1)[0]
        if base != name:
            continue
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


@contextlib.contextmanager
def proxied_daemon(
    local_aws: LocalAws,
    work: Path,
    *,
    sts_expires_in: float | None = None,
    start: bool = True,
    **overrides: dict[str, Any],
) -> Iterator[Rig]:
    with (
        FaultProxy(local_aws.endpoint_url, "s3") as s3,
        FaultProxy(local_aws.endpoint_url, "sts", expires_in=sts_expires_in) as sts,
    ):
        rig = Rig(local_aws, work, s3, sts, overrides)
        try:
            if start:
                rig.start()
            yield rig
            if rig.alive():
                rig.stop()
            found = rig.grep_secrets()
            assert found == [], f"secrets found: {found}"
        finally:
            if rig.alive():
                assert rig.daemon is not None
                stop(rig.daemon.process, grace=10)
            TALLY.faults.update(s3.injected)
            TALLY.faults.update(sts.injected)


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def wait_fetch(client: Any, job: str, fetch_id: str, timeout: float = 60) -> dict[str, Any]:
    """Poll a fetch until it leaves queued/running."""
    deadline = time.monotonic() + timeout
    while True:
        doc: dict[str, Any] = client.get_fetch(job, fetch_id)
        if doc["State"] not in ("queued", "running"):
            return doc
        assert time.monotonic() < deadline, f"fetch {fetch_id} still {doc['State']}: {doc}"
        time.sleep(0.02)


KNOWN_SHAS: set[str] = set()  # every object body the suites uploaded


def remember(body: bytes) -> bytes:
    KNOWN_SHAS.add(sha(body))
    return body


def no_partial_served(cache_dir: Path) -> None:
    """Every complete entry (`*.data`) in the cache is exactly some object
    that was uploaded: a partial or mixed file never passes as complete."""
    for p in cache_dir.rglob("*.data"):
        assert sha(p.read_bytes()) in KNOWN_SHAS, f"{p} is not any uploaded object"


def _render() -> str:
    t = TALLY
    rows = [
        (
            "faults injected",
            f"{sum(t.faults.values())} ({', '.join(f'{k} {v}' for k, v in sorted(t.faults.items()))})",
        ),
        ("transfers completed and sha256-verified", str(t.transfers_completed)),
        ("transfers that failed with a clear error (as designed)", str(t.transfers_failed_cleanly)),
        ("bytes verified", f"{t.bytes_verified} ({t.bytes_verified / MiB:.1f} MiB)"),
        ("corrupt bytes served", str(t.corrupt_bytes)),
        ("daemon runs / crashes", f"{t.daemon_runs} / {t.daemon_crashes}"),
        ("secrets issued by STS and grepped for", str(len(t.secrets_issued))),
        (
            "places grepped (logs, answers, metrics, cmdline, environ, cache files)",
            str(t.places_grepped),
        ),
        ("secrets found", str(t.secrets_found)),
    ]
    lines = ["| | |", "|---|---|", *(f"| {a} | {b} |" for a, b in rows)]
    return "\n".join(lines) + "\n" + "".join(f"\n- {n}" for n in t.notes) + "\n"


BEGIN, END = "<!-- tally: written by the suites -->\n", "<!-- /tally -->\n"


def _write_table(target: Path, table: str) -> None:
    """The table alone, or between the markers of a results file that has
    them (tests/RESULTS-reliability.md keeps its hand-written text)."""
    text = target.read_text() if target.exists() else ""
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        target.write_text(head + BEGIN + table.rstrip("\n") + "\n" + END + rest.split(END, 1)[1])
    else:
        target.write_text(table)


@pytest.fixture(scope="session", autouse=True)
def results_table() -> Iterator[Tally]:
    yield TALLY
    target = os.environ.get("S3FEED_RESULTS") or str(
        Path(tempfile.gettempdir()) / "s3feed-reliability-results.md"
    )
    _write_table(Path(target), _render())
    Path(target).with_suffix(".json").write_text(
        json.dumps(
            {
                **{k: v for k, v in TALLY.__dict__.items() if k != "secrets_issued"},
                "secrets_issued": len(TALLY.secrets_issued),
            },
            default=list,
            indent=1,
        )
    )
