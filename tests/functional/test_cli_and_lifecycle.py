"""The `s3feed` CLI against the in-process daemon, and the daemon's own lifecycle:
socket file handling, idle-job reaping, SIGHUP reload."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
import sys
from pathlib import Path

import pytest
from harness import Harness

from s3feed.client import Client
from s3feed.daemon.service import SocketInUse, bind_unix_socket


async def cli(harness: Harness, *args: str) -> tuple[int, str, str]:
    # The daemon runs on this test's loop: the CLI must run in another process.
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "s3feed.daemon",
        "--socket",
        harness.socket,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_cli_job_ls_fetch_cat_status(harness: Harness) -> None:
    harness.store().put("sources/show/a.ts", b"0123456789" * 1000)
    code, out, _ = await cli(
        harness,
        "job",
        "create",
        "cli-1",
        "--tenant",
        "acme-films",
        "--uri",
        "https://acme-media.s3.eu-west-1.amazonaws.com/sources/",
        "--role",
        "arn:aws:iam::123456789012:role/acme-reader",
    )
    assert code == 0 and out.startswith("cli-1\tacme-films\ts3://acme-media/sources/")
    code, out, _ = await cli(harness, "--json", "job", "list")
    assert [j["JobId"] for j in json.loads(out)["Jobs"]] == ["cli-1"]
    code, out, _ = await cli(harness, "ls", "cli-1")
    assert code == 0 and out.split("\t")[-1].strip() == "show/a.ts"
    code, out, err = await cli(harness, "fetch", "cli-1", "show/a.ts")
    assert code == 0, err
    assert Path(out.strip()).read_bytes() == b"0123456789" * 1000
    code, out, _ = await cli(harness, "cat", "cli-1", "show/a.ts", "--range", "5-14")
    assert code == 0 and out == "5678901234"
    code, out, _ = await cli(harness, "--json", "status")
    assert json.loads(out)["Jobs"] == 1
    code, out, _ = await cli(harness, "trust-policy", "acme-films")
    assert json.loads(out)["Statement"][0]["Condition"]["StringEquals"] == {
        "sts:ExternalId": "acme-films"
    }
    code, out, _ = await cli(harness, "job", "delete", "cli-1")
    assert code == 0 and out.strip() == "deleted cli-1"


async def test_cli_errors_print_the_code_and_exit_non_zero(harness: Harness) -> None:
    code, out, err = await cli(harness, "job", "show", "nope")
    assert code == 3 and out == ""  # exit codes by class: tests/functional/test_cli_errors.py
    assert err.startswith("s3feed: NoSuchJob: no job 'nope'")
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
        "arn:aws:iam::123456789012:role/r",
    )
    assert code == 7 and "InvalidUriPath" in err
    code, _, err = await cli(harness, "--socket", "/nonexistent/s.sock", "status")
    assert code == 7 and "no daemon at /nonexistent/s.sock" in err


def test_socket_file_mode_stale_and_live(tmp_path: Path) -> None:
    path = tmp_path / "api.sock"
    first = bind_unix_socket(path, 0o660)
    assert stat.S_IMODE(path.stat().st_mode) == 0o660
    with pytest.raises(SocketInUse, match="another daemon is already serving"):
        bind_unix_socket(path, 0o660)
    first.close()  # the daemon died without removing its socket: stale
    second = bind_unix_socket(path, 0o600)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    second.close()
    path.unlink()
    path.write_text("not a socket")
    with pytest.raises(SocketInUse, match="is not a socket"):
        bind_unix_socket(path, 0o660)


def test_the_client_leaks_no_socket_when_no_daemon_answers(tmp_path: Path) -> None:
    """A client polling for a daemon that is not up yet (scripts do) keeps no fd."""
    fds = len(os.listdir("/proc/self/fd"))
    stale = tmp_path / "stale.sock"
    bind_unix_socket(stale, 0o600).close()  # a socket file nobody listens on
    for path, refused in [
        (tmp_path / "none.sock", FileNotFoundError),
        (stale, ConnectionRefusedError),
    ]:
        for _ in range(20):
            with pytest.raises(refused):
                Client(str(path), timeout=1).health()
    assert len(os.listdir("/proc/self/fd")) == fds


async def test_idle_jobs_are_reaped_busy_ones_are_not(harness: Harness) -> None:
    await harness.create_job("idle")
    await harness.create_job("busy")
    registry = harness.daemon.registry
    busy = registry.get(0, "busy")
    busy.open_streams = 1  # a stream is being read
    now = [1000.0]
    for job in registry.all_jobs():
        job._monotonic = lambda: now[0]
        job.touch()
    now[0] += 50
    assert await registry.reap_idle(ttl=60) == []
    now[0] += 20
    assert await registry.reap_idle(ttl=60) == ["idle"]
    assert (await harness.request("GET", "/v1/jobs/idle")).code == "NoSuchJob"
    assert (await harness.request("GET", "/v1/jobs/busy")).status == 200
    busy.open_streams = 0


async def test_sighup_reload_applies_safe_keys_and_keeps_the_rest(
    harness: Harness, tmp_path: Path
) -> None:
    daemon = harness.daemon
    path = tmp_path / "s3feed.toml"
    path.write_text("[api]\njob_idle_ttl = 120\ndrain_grace = 5\n[transfer]\npart_size = '32MiB'\n")
    daemon.config_path = path
    part_size = daemon.config.transfer.part_size
    daemon.reload()
    assert daemon.config.api.job_idle_ttl == 120 and daemon.config.api.drain_grace == 5
    assert daemon.config.transfer.part_size == part_size, "needs a restart"
    path.write_text("[api]\njob_idle_ttl = 'soon'\n")
    daemon.reload()  # a bad file is logged and ignored
    assert daemon.config.api.job_idle_ttl == 120


async def test_stop_removes_the_socket_it_created(harness: Harness) -> None:
    assert os.path.exists(harness.socket)
    await harness.daemon.stop()
    assert not os.path.exists(harness.socket)
    with socket.socket(socket.AF_UNIX) as s, pytest.raises(OSError):
        s.connect(harness.socket)


async def test_cli_cat_to_a_pipe_and_to_a_file_is_byte_exact(
    harness: Harness, tmp_path: Path
) -> None:
    data = bytes(range(256)) * 12289  # 3 MiB + 256: several pipe fills
    harness.store().put("sources/clip.ts", data)
    await harness.create_job("cat-1")
    command = (sys.executable, "-m", "s3feed.daemon", "--socket", harness.socket, "cat")
    # To a pipe: the body is spliced from the socket.
    proc = await asyncio.create_subprocess_exec(
        *command, "cat-1", "clip.ts", stdout=asyncio.subprocess.PIPE
    )
    async with asyncio.timeout(60):
        piped, _ = await proc.communicate()
    assert proc.returncode == 0 and piped == data
    # To a file: through a buffer.
    target = tmp_path / "out.ts"
    with target.open("wb") as f:
        proc = await asyncio.create_subprocess_exec(*command, "cat-1", "clip.ts", stdout=f)
        async with asyncio.timeout(60):
            assert await proc.wait() == 0
    assert target.read_bytes() == data
