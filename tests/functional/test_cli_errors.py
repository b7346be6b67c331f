"""The `s3feed` CLI's failures, each class against the in-process daemon over its
real socket (or against no daemon, a socket it may not open, a daemon that
hangs up): the exit code, one line on stderr that says what to do, never a
traceback; `--json` anywhere on the line; Ctrl-C on `s3feed fetch` cancels
the fetch (a real SIGINT to a real CLI process)."""

from __future__ import annotations

import asyncio
import contextlib
import grp
import json
import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import ACME_ROLE, ACME_URI, Harness

from s3feed.daemon.jobs.records import TransferRecord, TransferState
from tests.fakes.sts import FakeSts

MiB = 1024 * 1024
SITE_PACKAGES = next(Path(sys.prefix, "lib").glob("python3*/site-packages"))


async def cli(
    harness: Harness | None, *args: str, as_user: str | None = None, socket_path: str = ""
) -> tuple[int, str, str]:
    sock = socket_path or (harness.socket if harness else "")
    cmd = [sys.executable, "-m", "s3feed.daemon", "--socket", sock, *args]
    if as_user is not None:
        # The venv's interpreter may live where another uid cannot read it: the
        # system one, given the venv's packages (its .pth files included).
        boot = f"import site, sys; site.addsitedir({str(SITE_PACKAGES)!r}); "
        boot += "from s3feed.daemon.cli.entry import main; sys.exit(main())"
        cmd = [
            "setpriv",
            f"--reuid={as_user}",
            f"--regid={'nogroup' if as_user == 'nobody' else as_user}",
            "--clear-groups",
            "/usr/bin/python3",
            "-c",
            boot,
            "--socket",
            sock,
            *args,
        ]
    # The daemon runs on this test's loop: the CLI must run in another process.
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    async with asyncio.timeout(60):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def one_line(err: str) -> str:
    assert "Traceback" not in err, err
    assert err.endswith("\n") and err.count("\n") == 1, err
    return err.strip()


async def job(harness: Harness, job_id: str = "job-1") -> None:
    answer = await harness.create_job(job_id)
    assert answer.status == 201, answer.body


async def test_exit_codes_by_class(harness: Harness) -> None:
    await job(harness)
    harness.store().put("sources/locked.mp4", b"x")
    harness.store().deny("sources/locked.mp4")

    code, out, err = await cli(harness, "job", "show", "nope")
    assert (code, out) == (3, "")
    assert one_line(err).startswith("s3feed: NoSuchJob: no job 'nope'")
    code, _, err = await cli(harness, "fetch", "job-1", "missing.mp4")
    assert code == 3 and one_line(err).startswith("s3feed: NoSuchKey: ")
    code, _, err = await cli(harness, "cat", "job-1", "missing.mp4")
    assert code == 3 and one_line(err).startswith("s3feed: NoSuchKey: ")

    code, _, err = await cli(harness, "fetch", "job-1", "locked.mp4")
    assert code == 4 and one_line(err).startswith("s3feed: AccessDenied: ")
    harness.sts.fail_next(harness.sts.access_denied(ACME_ROLE, "acme-films"))
    code, _, err = await cli(
        harness,
        "job",
        "create",
        "job-2",
        "--tenant",
        "acme-films",
        "--uri",
        ACME_URI,
        "--role",
        ACME_ROLE,
    )
    assert code == 4 and one_line(err).startswith("s3feed: AssumeRoleDenied: ")

    harness.sts.fail_always(FakeSts.server_error())
    code, _, err = await cli(
        harness,
        "job",
        "create",
        "job-3",
        "--tenant",
        "acme-films",
        "--uri",
        ACME_URI,
        "--role",
        ACME_ROLE,
    )
    harness.sts.fail_always(None)
    assert code == 5 and one_line(err).startswith("s3feed: StsUnavailable: ")

    code, _, err = await cli(
        harness,
        "job",
        "create",
        "x",
        "--tenant",
        "acme-films",
        "--uri",
        "s3://b/",
        "--role",
        ACME_ROLE,
    )
    assert code == 7 and one_line(err).startswith("s3feed: InvalidUriPath: ")


async def test_a_source_changed_mid_fetch_exits_6(harness: Harness) -> None:
    store = harness.store()
    store.put("sources/a.ts", os.urandom(3 * MiB))
    overwritten = False

    async def overwrite_once(key: str, pos: int) -> None:
        nonlocal overwritten
        if pos > 0 and not overwritten:  # after the first bytes: the fetch is running
            overwritten = True
            store.overwrite(key, b"new bytes")

    store.gate = overwrite_once
    await job(harness)
    code, _, err = await cli(harness, "fetch", "job-1", "a.ts")
    assert code == 6 and one_line(err).startswith("s3feed: SourceChanged: ")


@pytest.mark.parametrize(
    "argv",
    [
        ["--json", "job", "show", "nope"],
        ["job", "--json", "show", "nope"],
        ["job", "show", "--json", "nope"],
        ["job", "show", "nope", "--json"],
    ],
)
async def test_json_anywhere_and_errors_as_the_json_document(
    harness: Harness, argv: list[str]
) -> None:
    await job(harness)
    code, out, err = await cli(harness, *argv)
    assert (code, out) == (3, "")
    doc = json.loads(one_line(err))
    assert doc["Error"]["Code"] == "NoSuchJob"
    # and on success, the document on stdout
    where = argv.index("--json")
    ok = [*argv[:where], *argv[where + 1 :]]
    ok[ok.index("nope")] = "job-1"
    ok.insert(where, "--json")
    code, out, _ = await cli(harness, *ok)
    assert code == 0 and json.loads(out)["JobId"] == "job-1"
    code, out, _ = await cli(harness, "job", "list", "--json")
    assert code == 0 and [j["JobId"] for j in json.loads(out)["Jobs"]] == ["job-1"]


async def test_usage_errors_exit_1_in_one_line_or_json(harness: Harness) -> None:
    for argv in (["job"], ["frobnicate"], ["ls"], ["job", "create", "j"]):
        code, out, err = await cli(harness, *argv)
        assert (code, out) == (1, ""), argv
        assert one_line(err).startswith("s3feed: ") and "--help" in err
        code, _, err = await cli(harness, *argv, "--json")
        assert code == 1 and json.loads(one_line(err))["Error"]["Code"] == "Usage"


async def test_help_version_and_positional_help(harness: Harness) -> None:
    code, out, _ = await cli(harness, "--help")
    assert code == 0
    for line in ("3    not found", "4    denied", "5    temporary, retry", "6    the source"):
        assert line in out
    code, out, _ = await cli(harness, "--version")
    from s3feed.daemon import __version__

    assert (code, out) == (0, f"s3feed {__version__}\n")
    metrics = await harness.request("GET", "/metrics")
    assert f's3feed_build_info{{version="{__version__}"}} 1.0' in metrics.body.decode()
    for argv in (["ls"], ["fetch"], ["cat"], ["job", "show"], ["job", "create"], ["trust-policy"]):
        code, out, _ = await cli(harness, *argv, "--help")
        positionals = out.split("positional arguments:")[1].split("options:")[0]
        for line in positionals.strip().splitlines():
            assert len(line.split()) > 1, f"{argv}: {line!r} has no help"


async def test_no_daemon_refused_and_hung_up(tmp_path: Path) -> None:
    code, _, err = await cli(None, "status", socket_path=str(tmp_path / "none.sock"))
    assert code == 7
    assert one_line(err) == (
        f"s3feed: NoDaemon: no daemon at {tmp_path}/none.sock: start it (systemctl start "
        "s3feed.socket) or give its socket with --socket or S3FEED_SOCKET"
    )
    stale = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(stale))  # a socket file nobody listens on: connection refused
    code, _, err = await cli(None, "job", "list", socket_path=str(stale))
    assert code == 5 and "no daemon listens at" in one_line(err)

    # A daemon that reads the request and closes the connection (a restart).
    hung = tmp_path / "hung.sock"
    got_request = asyncio.Event()

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        got_request.set()
        writer.close()

    server = await asyncio.start_unix_server(hang_up, path=str(hung))
    async with server:
        code, _, err = await cli(None, "--json", "status", socket_path=str(hung))
    assert got_request.is_set()
    assert code == 5
    assert json.loads(one_line(err))["Error"] == {
        "Code": "ConnectionClosed",
        "Message": f"the daemon at {hung} closed the connection (restarting?): retry",
    }


async def test_a_reader_that_had_enough_is_not_an_error(harness: Harness) -> None:
    for n in range(50):
        harness.store().put(f"sources/many/{n:04d}.ts", b"x")
    await job(harness)
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first line: `| head -0`
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "s3feed.daemon",
        "--socket",
        harness.socket,
        "ls",
        "job-1",
        stdout=write,
        stderr=asyncio.subprocess.PIPE,
    )
    os.close(write)
    async with asyncio.timeout(60):
        _, err = await proc.communicate()
    assert (proc.returncode, err) == (0, b"")


@contextlib.contextmanager
def _user_in_group() -> Iterator[tuple[str, str]]:
    """A new user that is a member of a new group (as after `usermod -aG`)."""
    suffix = uuid.uuid4().hex[:8]
    user, group = f"s3fu{suffix}", f"s3fg{suffix}"
    subprocess.run(["groupadd", group], check=True)
    subprocess.run(["useradd", "--no-create-home", "-G", group, user], check=True)
    try:
        yield user, group
    finally:
        subprocess.run(["userdel", user], check=False)
        subprocess.run(["groupdel", group], check=False)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run the CLI as other users")
async def test_permission_denied_names_the_group_and_the_login(harness: Harness) -> None:
    os.chmod(harness.socket, 0o660)  # root:root: nobody may not connect
    code, _, err = await cli(harness, "status", as_user="nobody")
    assert code == 4
    assert one_line(err) == (
        f"s3feed: PermissionDenied: permission denied on {harness.socket}: "
        "add nobody to group root and log in again"
    )
    with _user_in_group() as (user, group):
        os.chown(harness.socket, 0, grp.getgrnam(group).gr_gid)
        # setpriv --clear-groups: the user is in the group, its session is not.
        code, _, err = await cli(harness, "status", as_user=user)
        assert code == 4
        assert one_line(err).endswith(
            f"{user} is in group {group}, but this session is not: log in again"
        )


# -- Ctrl-C on `s3feed fetch` ---------------------------------------------------------


class Gate:
    """Holds every range of the fake store after its first slice, until opened."""

    def __init__(self) -> None:
        self.holding = asyncio.Event()
        self.open = asyncio.Event()
        self.cancelled = asyncio.Event()

    async def __call__(self, key: str, pos: int) -> None:
        if pos == 0:
            return  # the first slice moves: the fetch answers 202
        self.holding.set()
        try:
            await self.open.wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise


@contextlib.asynccontextmanager
async def cli_fetch(harness: Harness, key: str) -> AsyncIterator[asyncio.subprocess.Process]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "s3feed.daemon",
        "--socket",
        harness.socket,
        "fetch",
        "job-1",
        key,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def watch_fetches(harness: Harness) -> asyncio.Queue[str]:
    """FetchIds of the fetches job-1 starts from now on, as they start."""
    job = harness.daemon.registry.get(0, "job-1")
    started: asyncio.Queue[str] = asyncio.Queue()
    start_fetch = job.start_fetch

    def spy(*args: Any) -> TransferRecord:
        record = start_fetch(*args)
        started.put_nowait(record.transfer_id)
        return record

    job.start_fetch = spy  # type: ignore[method-assign]
    return started


async def test_ctrl_c_cancels_the_fetch_and_its_download(harness: Harness) -> None:
    gate = Gate()
    harness.store().put("sources/big.ts", os.urandom(4 * MiB))
    harness.store().gate = gate
    await job(harness)
    job_ = harness.daemon.registry.get(0, "job-1")
    started = watch_fetches(harness)
    async with cli_fetch(harness, "big.ts") as proc:
        async with asyncio.timeout(30):
            fetch_id = await started.get()
        record = job_.transfers[fetch_id]
        async with asyncio.timeout(30):
            await gate.holding.wait()
            await record.progress.moving.wait()
        proc.send_signal(signal.SIGINT)
        async with asyncio.timeout(30):
            _, err = await proc.communicate()
            await record.finished.wait()
            await gate.cancelled.wait()  # no other waiter: the download stopped
    assert proc.returncode == 130
    assert one_line(err.decode()) == f"s3feed: fetch {fetch_id} of big.ts cancelled"
    assert record.state is TransferState.CANCELLED
    doc = (await harness.request("GET", f"/v1/jobs/job-1/fetches/{fetch_id}")).json
    assert doc["State"] == "cancelled" and doc["Error"]["Code"] == "Cancelled"
    assert not job_.busy


async def test_ctrl_c_leaves_a_download_another_fetch_waits_for(harness: Harness) -> None:
    gate = Gate()
    data = os.urandom(4 * MiB)
    harness.store().put("sources/big.ts", data)
    harness.store().gate = gate
    await job(harness)
    job_ = harness.daemon.registry.get(0, "job-1")
    first = await harness.request("POST", "/v1/jobs/job-1/fetches", {"Key": "big.ts"})
    assert first.status == 202
    other = job_.transfers[first.json["FetchId"]]
    started = watch_fetches(harness)
    async with cli_fetch(harness, "big.ts") as proc:
        async with asyncio.timeout(30):
            fetch_id = await started.get()
        record = job_.transfers[fetch_id]
        async with asyncio.timeout(30):
            await record.progress.moving.wait()
        proc.send_signal(signal.SIGINT)
        async with asyncio.timeout(30):
            _, err = await proc.communicate()
            await record.finished.wait()
    assert proc.returncode == 130 and "cancelled" in one_line(err.decode())
    assert record.state is TransferState.CANCELLED
    assert not gate.cancelled.is_set() and not other.finished.is_set()
    gate.open.set()
    async with asyncio.timeout(30):
        await other.finished.wait()
    assert other.state is TransferState.DONE
    assert other.path is not None and other.path.read_bytes() == data
