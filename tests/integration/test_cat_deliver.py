"""`s3feed cat` passing its stdout to the daemon (SCM_RIGHTS), on the local AWS:
the daemon writes the object into the caller's pipe or file itself
(docs/design.md, Socket API: deliveries)."""

from __future__ import annotations

import asyncio
import fcntl
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from daemonproc import S3FEED, Daemon, running_daemon
from reliability import blob

from s3feed.client import AsyncClient, Client, S3feedError

if TYPE_CHECKING:
    from conftest import LocalAws, TestBucket

MiB = 1024 * 1024
DATA = blob(24 * MiB + 12345, seed=31)


def uri(bucket: str, folder: str = "") -> str:
    return f"https://{bucket}.s3.us-east-1.amazonaws.com/{folder}"


@pytest.fixture
def job(local_aws: LocalAws, bucket: TestBucket, tmp_path: Path) -> Iterator[tuple[Daemon, Client]]:
    bucket.put("c/v.bin", DATA)
    with running_daemon(
        local_aws, tmp_path / "d", transfer={"stream_window": "4MiB", "concurrency": 2}
    ) as daemon:
        client = Client(str(daemon.socket))
        client.create_job(
            "cat", local_aws.acme_tenant, uri(bucket.name, "c/"), local_aws.acme_role_arn
        )
        yield daemon, client


def cat(daemon: Daemon, *args: str, **kwargs: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [S3FEED, "cat", "cat", *args], env=daemon.env, stderr=subprocess.PIPE, **kwargs
    )


def streams(client: Client) -> list[dict[str, Any]]:
    return [t for t in client.get_job("cat")["Transfers"] if t["Mode"] == "stream"]


# The CLI in-process, then what it wrote in all (/proc/self/io wchar) on stderr's last line.
COUNTED_CAT = """
import sys
from s3feed.daemon.cli.entry import main
code = main(sys.argv[1:])
wchar = [l for l in open("/proc/self/io") if l.startswith("wchar:")][0].split()[1]
sys.stderr.write("wchar=" + wchar)
sys.exit(code)
"""


def test_cat_into_a_pipe_is_written_by_the_daemon(job: tuple[Daemon, Client]) -> None:
    daemon, client = job
    proc = cat(daemon, "v.bin", stdout=subprocess.PIPE)
    out, err = proc.communicate(timeout=120)
    assert (proc.returncode, err) == (0, b"")
    assert out == DATA
    [record] = streams(client)
    assert record["State"] == "done" and record["BytesDone"] == len(DATA)


@pytest.mark.parametrize("through_socket", [False, True])
def test_cat_grows_the_readers_pipe_to_a_mib(
    job: tuple[Daemon, Client], through_socket: bool
) -> None:
    # From byte 0 into a pipe, cat watches the box headers through a pipe of
    # its own and splices on into stdout; left at 64 KiB, stdout held each
    # splice to 16 pages (docs/design.md, Performance notes: Pipes).
    daemon, _ = job
    r, w = os.pipe()
    with os.fdopen(r, "rb") as reader:
        assert fcntl.fcntl(r, fcntl.F_GETPIPE_SZ) == 64 * 1024
        with os.fdopen(w, "wb") as writer:
            proc = cat(
                daemon, "v.bin", *(["--through-socket"] if through_socket else []), stdout=writer
            )
        got = reader.read()
        assert fcntl.fcntl(r, fcntl.F_GETPIPE_SZ) == MiB
    _, err = proc.communicate(timeout=120)
    assert (proc.returncode, err) == (0, b"")
    assert got == DATA


@pytest.mark.parametrize("through_socket", [False, True])
def test_the_bytes_never_pass_through_the_cli(
    job: tuple[Daemon, Client], tmp_path: Path, through_socket: bool
) -> None:
    daemon, _ = job
    args = ["cat", "cat", "v.bin"] + (["--through-socket"] if through_socket else [])
    target = tmp_path / "out.bin"
    with target.open("wb") as f:
        proc = subprocess.Popen(
            [sys.executable, "-c", COUNTED_CAT, *args],
            env=daemon.env,
            stdout=f,
            stderr=subprocess.PIPE,
        )
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert target.read_bytes() == DATA
    wrote = int(err.decode().rpartition("wchar=")[2])
    if through_socket:
        assert wrote >= len(DATA)  # written by the CLI (the control: the count sees it)
    else:
        assert wrote < MiB  # the daemon wrote the file, not the CLI


def test_cat_into_a_file_and_a_range(job: tuple[Daemon, Client], tmp_path: Path) -> None:
    daemon, client = job
    target = tmp_path / "out.bin"
    with target.open("wb") as f:
        proc = cat(daemon, "v.bin", stdout=f)
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert target.read_bytes() == DATA
    with target.open("wb") as f:
        proc = cat(daemon, "v.bin", "--range", "5000000-9000000", stdout=f)
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert target.read_bytes() == DATA[5000000:9000001]
    proc = cat(daemon, "v.bin", "--range", "-1000", stdout=subprocess.PIPE)
    out, err = proc.communicate(timeout=120)
    assert (proc.returncode, out) == (0, DATA[-1000:]), err
    # The file's flags are the caller's again (O_NONBLOCK is put back on pipes).
    r, w = os.pipe()
    try:
        doc = client.deliver("cat", "v.bin", w, "0-99")
        assert doc["Bytes"] == 100 and doc["ContentRange"] == f"bytes 0-99/{len(DATA)}"
        assert os.get_blocking(w), "O_NONBLOCK was taken back off the caller's pipe"
        assert os.read(r, 200) == DATA[:100]
    finally:
        os.close(r)
        os.close(w)
    assert [t["State"] for t in streams(client)] == ["done"] * 4


def test_source_overwritten_mid_stream_is_short_and_exit_6(
    job: tuple[Daemon, Client], bucket: TestBucket
) -> None:
    daemon, client = job
    proc = cat(daemon, "v.bin", stdout=subprocess.PIPE)
    assert proc.stdout is not None
    first = proc.stdout.read(MiB)  # the daemon has begun; it holds <= 4 MiB + the pipe ahead
    bucket.put("c/v.bin", b"new")
    rest = proc.stdout.read()
    _, err = proc.communicate(timeout=120)
    got = first + rest
    assert proc.returncode == 6, err
    assert b"SourceChanged" in err
    assert len(got) < len(DATA)
    assert got == DATA[: len(got)], "never a wrong byte"
    [record] = streams(client)
    assert record["State"] == "failed" and record["Error"]["Code"] == "SourceChanged"


def test_reader_closing_early_is_cancelled_quietly(job: tuple[Daemon, Client]) -> None:
    daemon, client = job
    r, w = os.pipe()
    proc = cat(daemon, "v.bin", stdout=w)
    os.close(w)
    first = os.read(r, 65536)
    assert first and first == DATA[: len(first)]
    os.close(r)  # the encoder had enough
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert err == b""
    [record] = streams(client)
    assert record["State"] == "cancelled"
    log = daemon.log.read_text()
    assert "Traceback" not in log and "delivery failed" not in log


def test_directory_and_read_only_descriptors_are_refused(
    job: tuple[Daemon, Client], tmp_path: Path
) -> None:
    daemon, client = job
    ro = tmp_path / "ro.bin"
    ro.write_bytes(b"keep")
    for fd in (os.open(tmp_path, os.O_RDONLY), os.open(ro, os.O_RDONLY)):
        try:
            with pytest.raises(S3feedError) as err:
                client.deliver("cat", "v.bin", fd)
            assert (err.value.status, err.value.code) == (400, "InvalidRequest")
        finally:
            os.close(fd)
    assert ro.read_bytes() == b"keep"
    with ro.open("rb") as f:  # the CLI with a read-only stdout: one line, exit 7
        proc = cat(daemon, "v.bin", stdout=f)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 7 and b"not open for writing" in err
    assert streams(client) == []


def test_async_client_delivers_into_a_pipe(job: tuple[Daemon, Client]) -> None:
    daemon, _ = job

    async def run() -> bytes:
        r, w = os.pipe()
        loop = asyncio.get_running_loop()
        got = bytearray()

        def drain() -> None:
            while chunk := os.read(r, MiB):
                got.extend(chunk)

        reader = loop.run_in_executor(None, drain)
        try:
            async with AsyncClient(str(daemon.socket)) as c:
                doc = await c.deliver("cat", "v.bin", w)
            assert doc["Bytes"] == len(DATA)
        finally:
            os.close(w)
        await reader
        os.close(r)
        return bytes(got)

    assert asyncio.run(run()) == DATA
