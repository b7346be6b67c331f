"""Isolation races (docs/design.md, Roles and isolation; Cache): real daemon, real uids.

`s3feed serve` on SeaweedFS (fast enough for hundreds of jobs in a test), its
socket open to every uid. Two encoder uids (numbers only: setpriv takes them,
no account needed) each run one long-lived worker, the system Python with the
standard library only, that fetches with `?wait=true` whatever job the test
names on its stdin. The test (root) creates a job listing both uids, lets
both fetch, and deletes the job while their fetches run: 500 times, stopping
at the first leak. After each round every cache file must grant no uid at
all (the `system.posix_acl_access` xattr), every fetch must have been
answered; at the end the raced entry must be evictable (no job pins it).
"""

from __future__ import annotations

import json
import os
import secrets
import select
import shutil
import subprocess
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from daemonproc import Daemon, running_daemon
from reliability import MiB, blob, uri

from s3feed.client import Client, S3feedError
from s3feed.transfer.cache import acl

if TYPE_CHECKING:
    from conftest import Seaweed

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run other uids")

SYSTEM_PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else "python3"
ENCODERS = (61230, 61231)
ROUNDS = 500
ANSWER_WITHIN = 10.0  # seconds: a fetch not answered by then is hung
TENANT = "seaweed-tenant"


@pytest.fixture(scope="module")
def open_dir() -> Iterator[Path]:
    """World-traversable and short (AF_UNIX paths are limited to 108 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="s3feed-race-", dir="/tmp"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def daemon(seaweed: Seaweed, open_dir: Path) -> Iterator[Daemon]:
    overrides = {
        "api": {"socket": open_dir / "s.sock", "socket_mode": "0666"},
        # Room for one 2 MiB entry: a second needs the first evicted.
        "cache": {"max_size": "3MiB"},
        "limits": {"job_creates_per_minute_per_uid": 100_000},
    }
    with running_daemon(seaweed, open_dir / "d", **overrides) as d:  # type: ignore[arg-type]
        yield d


_WORKER = """
import http.client, json, socket, sys
class C(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout({timeout})
        self.sock.connect({socket!r})
for line in sys.stdin:
    job, key = line.split()
    c = C("localhost", timeout={timeout})
    try:
        c.request("POST", "/v1/jobs/" + job + "/fetches?wait=true",
                  body=json.dumps({{"Key": key}}), headers={{"Content-Type": "application/json"}})
        print("sent", flush=True)
        r = c.getresponse()
        doc = json.loads(r.read() or b"null")
        code = doc["Error"]["Code"] if r.status >= 300 else doc["State"]
        print(json.dumps([r.status, code]), flush=True)
    except (socket.timeout, TimeoutError):
        print(json.dumps([0, "hung"]), flush=True)
    finally:
        c.close()
"""


class Worker:
    """One uid's fetching process; `line` reads its next output line or fails."""

    def __init__(self, uid: int, socket: Path) -> None:
        script = textwrap.dedent(_WORKER.format(timeout=ANSWER_WITHIN, socket=str(socket)))
        self.uid = uid
        self.proc = subprocess.Popen(
            [
                "setpriv",
                f"--reuid={uid}",
                f"--regid={uid}",
                "--clear-groups",
                SYSTEM_PYTHON,
                "-I",
                "-c",
                script,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        self._buf = b""

    def fetch(self, job: str, key: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{job} {key}\n".encode())
        self.proc.stdin.flush()

    def line(self) -> str:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + ANSWER_WITHIN + 5
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise AssertionError(f"uid {self.uid}'s worker said nothing for {ANSWER_WITHIN} s")
            chunk = os.read(fd, 4096)
            if not chunk:
                raise AssertionError(f"uid {self.uid}'s worker exited: {self.proc.wait()}")
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line.decode()

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=ANSWER_WITHIN + 5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        finally:
            assert self.proc.stdout is not None
            self.proc.stdout.close()


def _granted(cache_dir: Path) -> dict[str, frozenset[int]]:
    """Every cache data file that grants any uid, with the uids (from the xattr)."""
    out = {}
    for path in cache_dir.glob("*.data"):
        try:
            readers = acl.readers(path)
        except FileNotFoundError:
            continue
        if readers:
            out[path.name] = readers
    return out


def test_fetches_racing_delete_leave_no_grant_pin_or_hung_request(
    daemon: Daemon, seaweed: Seaweed
) -> None:
    folder = f"race-{secrets.token_hex(4)}/"
    with seaweed.closing_client("s3") as s3:
        s3.put_object(Bucket=seaweed.bucket, Key=folder + "x.bin", Body=blob(2 * MiB, seed=91))
        s3.put_object(Bucket=seaweed.bucket, Key=folder + "y.bin", Body=blob(2 * MiB, seed=92))
    client = Client(str(daemon.socket), timeout=30)
    workers = [Worker(uid, daemon.socket) for uid in ENCODERS]
    answers: dict[tuple[int, str], int] = {}
    try:
        for i in range(ROUNDS):
            job = f"race-{i}"
            client.create_job(
                job, TENANT, uri(seaweed.bucket, folder), seaweed.role_arn, EncoderUids=[*ENCODERS]
            )
            for w in workers:
                w.fetch(job, "x.bin")
            # The DELETE lands: maybe before the fetches (round 0, 3, ...), while
            # their HEADs or downloads run (1, 2, 4, 5, ...), or after they were
            # answered (every fifth: the grants exist, the close takes them back).
            lines: dict[int, str] = {}
            if i % 3:
                for w in workers:
                    assert w.line() == "sent"
            if i % 5 == 4:
                lines = {w.uid: w.line() for w in workers}
            client.delete_job(job)
            for w in workers:
                line = lines.get(w.uid) or w.line()
                if line == "sent":
                    line = w.line()
                status, code = json.loads(line)
                assert status != 0, f"round {i}: uid {w.uid}'s fetch was never answered"
                assert (status, code) in {
                    (200, "done"),  # done before the DELETE: the job's close revoked it
                    (404, "NoSuchJob"),  # arrived after the DELETE
                    (409, "Cancelled"),  # the DELETE ended it
                }, (i, w.uid, status, code)
                answers[(status, code)] = answers.get((status, code), 0) + 1
            leaked = _granted(daemon.cache_dir)
            assert not leaked, f"round {i}: no job is live, yet cache files grant {leaked}"
    finally:
        for w in workers:
            w.close()
    assert client.list_jobs() == []
    # No pin left: x.bin's entry makes room for y.bin (max_size 3 MiB).
    client.create_job("race-after", TENANT, uri(seaweed.bucket, folder), seaweed.role_arn)
    try:
        assert client.fetch("race-after", "y.bin")["State"] == "done"
    except S3feedError as exc:
        raise AssertionError(f"x.bin is still pinned by a deleted job: {exc}") from exc
    finally:
        client.delete_job("race-after")
    # The fetches ended on every side of the DELETE (else the race was not run).
    assert answers.keys() == {(200, "done"), (404, "NoSuchJob"), (409, "Cancelled")}, answers
