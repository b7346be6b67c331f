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

A delivery into a file on a frozen file system (`fsfreeze` on a loop-mounted
ext4 image: its writes block until the thaw) must leave the daemon's loop
free: another uid's `/healthz` answers within 1 s while the write hangs, and
the delivery completes, byte for byte, after the thaw.

Descriptors that cannot take the bytes are the caller's error, answered 400
`InvalidRequest` naming why (never 500): O_DIRECT, a memfd sealed against
writes or against growing, a file at the file system's size limit (EFBIG), an
unconnected datagram socket. A Destination overlapping the Source folder is
refused at registration, 400 naming both.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import select
import shutil
import socket
import subprocess
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from daemonproc import Daemon, running_daemon
from faultproxy import wait_until
from reliability import MiB, blob, sha, uri

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


@pytest.fixture
def frozen_dir(tmp_path: Path) -> Iterator[Path]:
    """An ext4 image, loop-mounted (skipped only where the kernel refuses loop
    devices); `fsfreeze` it to make every write into it block."""
    image, mount = tmp_path / "fs.img", Path(tempfile.mkdtemp(prefix="s3feed-frozen-"))
    with image.open("wb") as f:
        f.truncate(64 * MiB)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True, capture_output=True)
    mounted = subprocess.run(
        ["mount", "-o", "loop", str(image), str(mount)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        mount.rmdir()
        pytest.skip(f"the kernel refused a loop mount: {mounted.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["fsfreeze", "-u", str(mount)], capture_output=True)  # if still frozen
        subprocess.run(["umount", str(mount)], check=True)
        mount.rmdir()


_HEALTH = """
import http.client, socket, sys, time
class C(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(self.timeout)
        self.sock.connect(sys.argv[1])
started = time.monotonic()
c = C("localhost", timeout=float(sys.argv[2]))
try:
    c.request("GET", "/healthz")
    status = c.getresponse().status
except (socket.timeout, TimeoutError):
    status = 0
print(status, time.monotonic() - started)
"""


def health_as(uid: int, socket: Path, within: float) -> tuple[int, float]:
    """`/healthz` as `uid`: (status, seconds); status 0 when no answer came in time."""
    out = subprocess.run(
        [
            "setpriv",
            f"--reuid={uid}",
            f"--regid={uid}",
            "--clear-groups",
            SYSTEM_PYTHON,
            "-I",
            "-c",
            _HEALTH,
            str(socket),
            str(within),
        ],
        capture_output=True,
        text=True,
        timeout=within + 30,
        check=True,
    )
    status, seconds = out.stdout.split()
    return int(status), float(seconds)


def test_a_delivery_into_a_frozen_file_system_leaves_the_loop_free(
    daemon: Daemon, seaweed: Seaweed, frozen_dir: Path
) -> None:
    folder = f"frozen-{secrets.token_hex(4)}/"
    data = blob(8 * MiB, seed=93)
    with seaweed.closing_client("s3") as s3:
        s3.put_object(Bucket=seaweed.bucket, Key=folder + "a.bin", Body=data)
    client = Client(str(daemon.socket), timeout=60)
    job = f"frozen-{secrets.token_hex(4)}"
    client.create_job(job, TENANT, uri(seaweed.bucket, folder), seaweed.role_arn)
    out = frozen_dir / "a.bin"
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    answer: list[object] = []

    def deliver() -> None:
        try:
            answer.append(client.deliver(job, "a.bin", fd))
        except Exception as exc:  # seen by the asserts below
            answer.append(exc)

    delivering = threading.Thread(target=deliver)
    poll = Client(str(daemon.socket), timeout=2)
    try:
        subprocess.run(["fsfreeze", "-f", str(frozen_dir)], check=True)
        try:
            delivering.start()
            # The daemon has a chunk in hand (its record counts it) and is
            # writing it into the frozen file: polling another process.
            deadline = time.monotonic() + 30
            while True:
                try:
                    transfers = poll.get_job(job)["Transfers"]
                except TimeoutError:
                    raise AssertionError(
                        "the daemon stopped answering: its loop is blocked"
                    ) from None
                if any(t["Mode"] == "stream" and t["BytesDone"] > 0 for t in transfers):
                    break
                assert time.monotonic() < deadline, "the delivery never started"
                time.sleep(0.02)
            for _ in range(3):
                status, seconds = health_as(ENCODERS[0], daemon.socket, within=1.0)
                assert status == 200, (
                    f"/healthz unanswered for {seconds:.2f} s: the loop is blocked"
                )
            assert delivering.is_alive() and os.fstat(fd).st_size == 0  # the write still hangs
        finally:
            subprocess.run(["fsfreeze", "-u", str(frozen_dir)], check=True)
        delivering.join(timeout=60)
        assert not delivering.is_alive()
    finally:
        os.close(fd)
        with contextlib.suppress(S3feedError):
            client.delete_job(job)
    assert isinstance(answer[0], dict) and answer[0]["Bytes"] == len(data), answer
    assert sha(out.read_bytes()) == sha(data)


def test_a_reader_holding_its_pipe_leaves_the_loop_free(daemon: Daemon, seaweed: Seaweed) -> None:
    """A compromised encoder splice(2)s its delivery pipe into a socket that
    never drains: splice holds the pipe's lock while it waits, and a write into
    that pipe waits for the lock even with O_NONBLOCK. The daemon's write (and
    close) of the pipe run in the delivery's thread: another uid's /healthz
    still answers within 1 s, and once the socket drains the delivery ends whole."""
    folder = f"held-{secrets.token_hex(4)}/"
    data = blob(8 * MiB, seed=94)
    with seaweed.closing_client("s3") as s3:
        s3.put_object(Bucket=seaweed.bucket, Key=folder + "a.bin", Body=data)
    client = Client(str(daemon.socket), timeout=60)
    job = f"held-{secrets.token_hex(4)}"
    client.create_job(job, TENANT, uri(seaweed.bucket, folder), seaweed.role_arn)
    r, w = os.pipe()
    full, drain = socket.socketpair()
    full.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    full.setblocking(False)
    with contextlib.suppress(BlockingIOError):
        while True:
            full.send(b"\0" * 4096)
    full.setblocking(True)  # splice now waits in the kernel, holding the pipe
    spliced = [0]

    def splice() -> None:
        with contextlib.suppress(OSError):
            while n := os.splice(r, full.fileno(), 1 << 20):
                spliced[0] += n

    answer: list[object] = []

    def deliver() -> None:
        try:
            answer.append(client.deliver(job, "a.bin", w))
        except Exception as exc:  # seen by the asserts below
            answer.append(exc)

    splicing = threading.Thread(target=splice, daemon=True)
    delivering = threading.Thread(target=deliver)
    try:
        splicing.start()
        delivering.start()
        wait_until(
            lambda: any(
                t["Mode"] == "stream" and t["BytesDone"] > 0
                for t in client.get_job(job)["Transfers"]
            ),
            30,
            "the delivery to start",
        )
        for _ in range(3):
            status, seconds = health_as(ENCODERS[0], daemon.socket, within=1.0)
            assert status == 200, f"/healthz unanswered for {seconds:.2f} s: the loop is blocked"
        assert delivering.is_alive(), "the pipe is held: the delivery cannot have ended"
        drain.settimeout(60)

        def draining() -> None:  # the encoder's socket drains at last
            with contextlib.suppress(OSError):
                while drain.recv(1 << 20):
                    pass

        threading.Thread(target=draining, daemon=True).start()
        delivering.join(timeout=60)
        assert not delivering.is_alive()
    finally:
        with contextlib.suppress(OSError):
            os.close(w)
        full.close()
        drain.close()
        os.close(r)
        with contextlib.suppress(S3feedError):
            client.delete_job(job)
    assert isinstance(answer[0], dict) and answer[0]["Bytes"] == len(data), answer


def _o_direct(tmp: Path) -> int:
    return os.open(tmp / "direct.bin", os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o600)


def _sealed(seal: int) -> Callable[[Path], int]:
    def make(tmp: Path) -> int:
        fd = os.memfd_create("s3feed-test", os.MFD_ALLOW_SEALING)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seal)
        return fd

    return make


def _at_the_size_limit(tmp: Path) -> int:
    """A file on ext4 (/tmp) positioned 1000 bytes before its largest offset."""
    if acl.filesystem(tmp).split()[0] != "ext4":
        pytest.skip(f"needs ext4 for its file size limit, {tmp} is {acl.filesystem(tmp)}")
    fd = os.open(tmp / "huge.bin", os.O_WRONLY | os.O_CREAT, 0o600)
    os.lseek(fd, 2**44 - 4096 - 1000, os.SEEK_SET)  # ext4, 4 KiB blocks: 16 TiB - 4 KiB
    return fd


def _unconnected_socket(tmp: Path) -> int:
    return socket.socket(socket.AF_INET, socket.SOCK_DGRAM).detach()


@pytest.mark.parametrize(
    ("make_fd", "says", "delivered"),
    [
        (_o_direct, ("O_DIRECT",), 0),
        (_sealed(fcntl.F_SEAL_WRITE), ("sealed against writes",), 0),
        (_sealed(fcntl.F_SEAL_GROW), ("EPERM",), 0),
        (_at_the_size_limit, ("EFBIG",), 1000),
        # A datagram socket refuses a write larger than a datagram before it
        # asks where to: which one depends on the first chunk's size.
        (_unconnected_socket, ("EDESTADDRREQ", "EMSGSIZE"), 0),
    ],
    ids=["o-direct", "memfd-seal-write", "memfd-seal-grow", "efbig", "unconnected-udp"],
)
def test_a_descriptor_that_cannot_take_the_bytes_is_the_callers_400(
    daemon: Daemon,
    seaweed: Seaweed,
    make_fd: Callable[[Path], int],
    says: tuple[str, ...],
    delivered: int,
) -> None:
    folder = f"fd-{secrets.token_hex(4)}/"
    with seaweed.closing_client("s3") as s3:
        s3.put_object(Bucket=seaweed.bucket, Key=folder + "a.bin", Body=blob(MiB, seed=94))
    client = Client(str(daemon.socket), timeout=60)
    job = f"fd-{secrets.token_hex(4)}"
    client.create_job(job, TENANT, uri(seaweed.bucket, folder), seaweed.role_arn)
    tmp = Path(tempfile.mkdtemp(prefix="s3feed-fd-", dir="/tmp"))
    fd = make_fd(tmp)
    try:
        with pytest.raises(S3feedError) as err:
            client.deliver(job, "a.bin", fd)
        assert (err.value.status, err.value.code) == (400, "InvalidRequest"), err.value.document
        assert any(errno_name in err.value.message for errno_name in says), err.value.message
        assert err.value.document["Delivered"] == delivered
        # The daemon is fine, and the next delivery into a good descriptor works.
        r, w = os.pipe()
        with os.fdopen(r, "rb") as reader:
            got = threading.Thread(target=lambda: client.deliver(job, "a.bin", w))
            got.start()
            body = reader.read(MiB)
            got.join(timeout=60)
        os.close(w)
        assert sha(body) == sha(blob(MiB, seed=94))
    finally:
        os.close(fd)
        shutil.rmtree(tmp)
        client.delete_job(job)


def test_a_destination_overlapping_the_source_is_400_naming_both(
    daemon: Daemon, seaweed: Seaweed
) -> None:
    client = Client(str(daemon.socket), timeout=30)
    source = uri(seaweed.bucket, "masters/")
    for destination in (uri(seaweed.bucket), uri(seaweed.bucket, "masters/out/")):
        with pytest.raises(S3feedError) as err:
            client.create_job(
                "overlap",
                TENANT,
                source,
                seaweed.role_arn,
                Destination={"Provider": "AmazonS3", "UriPath": destination},
            )
        assert (err.value.status, err.value.code) == (400, "InvalidRequest")
        assert source in err.value.message and destination in err.value.message
    assert "overlap" not in {j["JobId"] for j in client.list_jobs()}
