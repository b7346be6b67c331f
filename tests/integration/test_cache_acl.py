"""Cache files open only for the uids of the jobs that hold them: real uids, real files.

Objects come from the local S3 (ministack) through a job's own credentials;
the cache directory is on ext4 (/tmp) and on tmpfs (/dev/shm); encoders are
real system users, `s3feed-test-acl-a` and `-b`, both members of the cache
group `s3feed-test-acl` (created here when missing), and run as themselves
with `setpriv`: `cat`, `stat`, ffprobe and ffmpeg open the path the way an
encoder does. A file system without ACLs is a real ramfs, mounted in a
private mount namespace (`unshare --mount`).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from s3feed.auth.credentials import Credentials
from s3feed.transfer.cache import acl
from s3feed.transfer.cache.cache import Cache
from s3feed.transfer.config import CacheConfig, GiB, S3Config, TransferConfig
from s3feed.transfer.engine import Engine
from s3feed.transfer.observer import NullTransferObserver
from s3feed.transfer.progress import Progress
from s3feed.transfer.s3.client import S3Client
from s3feed.transfer.s3.objects import S3ObjectStore
from s3feed.transfer.uri import parse_uri_path

if TYPE_CHECKING:
    from conftest import LocalAws, TestBucket

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root: creates users and runs programs as them (CI is root)"
)

GROUP = "s3feed-test-acl"
USERS = ("s3feed-test-acl-a", "s3feed-test-acl-b")
DENIED = "Permission denied"


@dataclass(frozen=True)
class Encoder:
    name: str
    uid: int

    def run(self, *argv: str) -> subprocess.CompletedProcess[bytes]:
        """`argv` as this user, with its own groups (the cache group among them)."""
        cmd = ["setpriv", f"--reuid={self.name}", f"--regid={self.name}", "--init-groups", *argv]
        return subprocess.run(cmd, capture_output=True, timeout=60, check=False)

    def read(self, path: Path) -> bytes | str:
        """The file's bytes, or the error `cat` reported."""
        r = self.run("cat", str(path))
        return r.stdout if r.returncode == 0 else r.stderr.decode()


def _tool(*argv: str) -> None:
    for _ in range(20):  # another test session may hold /etc/passwd's lock (exit 10)
        r = subprocess.run(argv, capture_output=True, timeout=30, check=False)
        if r.returncode in (0, 9):  # 9: already exists
            return
        if r.returncode != 10:
            raise RuntimeError(f"{argv}: {r.returncode} {r.stderr.decode().strip()}")
    raise RuntimeError(f"{argv}: /etc/passwd stayed locked")


@pytest.fixture(scope="module")
def encoders() -> tuple[Encoder, Encoder]:
    _tool("groupadd", "--system", GROUP)
    for name in USERS:
        _tool(
            "useradd",
            "--system",
            "--no-create-home",
            "--user-group",
            "--shell",
            "/usr/sbin/nologin",
            "--groups",
            GROUP,
            name,
        )
        _tool("usermod", "--append", "--groups", GROUP, name)
    a, b = (Encoder(n, pwd.getpwnam(n).pw_uid) for n in USERS)
    return a, b


def _fs_roots() -> list[str]:
    return ["/tmp", "/dev/shm"] if os.path.isdir("/dev/shm") else ["/tmp"]


@pytest.fixture(params=_fs_roots(), ids=lambda r: acl.filesystem(Path(r)).split()[0])
def cache_dir(request: pytest.FixtureRequest) -> Iterator[Path]:
    """A cache directory other uids can reach (pytest's tmp_path is 0700 root's)."""
    base = Path(tempfile.mkdtemp(prefix="s3feed-acl-", dir=request.param))
    base.chmod(0o711)
    try:
        yield base / "cache"
    finally:
        shutil.rmtree(base)


def _new_cache(path: Path) -> Cache:
    config = CacheConfig(dir=path, max_size=GiB, min_free=0, group=GROUP)
    return Cache(config, Engine(TransferConfig()), NullTransferObserver())


@contextlib.asynccontextmanager
async def _started(path: Path) -> AsyncIterator[Cache]:
    cache = _new_cache(path)
    await cache.start()
    try:
        yield cache
    finally:
        await cache.close()


class _Creds:
    """The job's credentials, as a CredentialSource (no refresh in these short tests)."""

    def __init__(self, c: dict[str, Any]) -> None:
        self._c = Credentials(
            c["AccessKeyId"], c["SecretAccessKey"], c["SessionToken"], c["Expiration"]
        )

    async def current(self) -> Credentials:
        return self._c

    async def refresh_now(self, reason: str) -> Credentials:
        return self._c


@pytest.fixture
async def store(local_aws: LocalAws, bucket: TestBucket) -> AsyncIterator[S3ObjectStore]:
    """The store of a job (tenant acme) whose role may read `bucket`."""
    clients = S3Client(S3Config(endpoint_url=local_aws.endpoint_url))
    uri = f"https://{bucket.name}.s3.{local_aws.region}.amazonaws.com/"
    creds = _Creds(local_aws.assume(local_aws.acme_role_arn, local_aws.acme_tenant))
    location = parse_uri_path(uri, clients.s3)
    s = S3ObjectStore(location, creds, clients=clients, observer=NullTransferObserver())
    yield s
    await s.close()
    await clients.close()


async def _fetch(cache: Cache, store: S3ObjectStore, key: str, owner: str, *uids: int) -> Path:
    entry = await cache.fetch(
        store, key, tenant="acme", owner=owner, progress=Progress(), readers=frozenset(uids)
    )
    return entry.path


async def test_only_the_granted_uid_opens_the_file_and_only_while_a_job_holds_it(
    store: S3ObjectStore,
    bucket: TestBucket,
    cache_dir: Path,
    encoders: tuple[Encoder, Encoder],
) -> None:
    a, b = encoders
    data = os.urandom(3 * 1024 * 1024 + 17)
    bucket.put("shows/ep1.bin", data)
    async with _started(cache_dir) as cache:
        path = await _fetch(cache, store, "shows/ep1.bin", "job-1", a.uid)
        assert a.read(path) == data
        # b is in the cache group and can reach the path: the file itself says no.
        assert b.run("stat", "-c", "%s", str(path)).stdout.strip() == str(len(data)).encode()
        assert DENIED in b.read(path)

        # A second job granting a: a keeps access when the first job ends.
        await _fetch(cache, store, "shows/ep1.bin", "job-2", a.uid, b.uid)
        assert b.read(path) == data
        cache.unpin_all("job-1")
        assert a.read(path) == data and b.read(path) == data
        cache.unpin_all("job-2")
        assert DENIED in a.read(path) and DENIED in b.read(path)

        # Fetched again by a new job: access comes back for its uids only.
        assert await _fetch(cache, store, "shows/ep1.bin", "job-3", b.uid) == path
        assert b.read(path) == data and DENIED in a.read(path)


async def test_a_restart_or_a_stop_takes_every_grant_away(
    store: S3ObjectStore,
    bucket: TestBucket,
    cache_dir: Path,
    encoders: tuple[Encoder, Encoder],
) -> None:
    a, _ = encoders
    data = os.urandom(1024 * 1024)
    bucket.put("x.bin", data)
    crashed = _new_cache(cache_dir)  # a daemon killed with a job still holding x.bin
    await crashed.start()
    path = await _fetch(crashed, store, "x.bin", "job-1", a.uid)
    assert a.read(path) == data
    try:
        restarted = _new_cache(cache_dir)
        await restarted.start()
        assert restarted._scan is not None
        await restarted._scan
        assert DENIED in a.read(path), "the previous daemon's jobs are gone"
        assert await _fetch(restarted, store, "x.bin", "job-9", a.uid) == path
        assert a.read(path) == data
        await restarted.close()
        assert DENIED in a.read(path), "a stopped daemon grants nothing"
    finally:
        await crashed.close()  # (its tasks; a killed daemon would strip nothing)
    assert DENIED in a.read(path)


async def test_ffprobe_and_ffmpeg_as_the_granted_uid_read_a_seekable_mp4(
    local_aws: LocalAws,
    store: S3ObjectStore,
    bucket: TestBucket,
    cache_dir: Path,
    encoders: tuple[Encoder, Encoder],
) -> None:
    a, b = encoders
    if local_aws.media_mp4_path is None or shutil.which("ffprobe") is None:
        pytest.skip("no ffmpeg: scripts/local_aws.py install makes the sample media with it")
    bucket.put("masters/sample.mp4", local_aws.media_mp4_path)  # moov after mdat: needs seeking
    async with _started(cache_dir) as cache:
        path = await _fetch(cache, store, "masters/sample.mp4", "job-1", a.uid)
        probe = ("ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0")
        r = a.run(*probe, str(path))
        assert r.returncode == 0, r.stderr
        assert abs(float(r.stdout) - 4.0) < 0.2
        r = a.run(
            "ffmpeg",
            "-nostdin",
            "-v",
            "error",
            "-i",
            str(path),
            "-map",
            "0:v",
            "-f",
            "framemd5",
            "-",
        )
        assert r.returncode == 0, r.stderr
        assert r.stdout.count(b"\n0,") == 100, "every frame of 4 s at 25 fps decoded"
        denied = b.run(*probe, str(path))
        assert denied.returncode != 0 and DENIED in denied.stderr.decode()
        cache.unpin_all("job-1")
        again = a.run(*probe, str(path))
        assert again.returncode != 0 and DENIED in again.stderr.decode()


def test_group_sharing_on_a_file_system_without_acls_refuses_to_start(
    encoders: tuple[Encoder, Encoder],
) -> None:
    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1): cannot mount a ramfs privately")
    with tempfile.TemporaryDirectory(prefix="s3feed-acl-ramfs-") as mnt:
        script = textwrap.dedent(
            f"""
            import asyncio, sys
            from pathlib import Path
            from s3feed.transfer.cache import acl
            from s3feed.transfer.cache.cache import Cache
            from s3feed.transfer.config import CacheConfig, TransferConfig
            from s3feed.transfer.engine import Engine
            from s3feed.transfer.observer import NullTransferObserver

            def cache(group):
                cfg = CacheConfig(dir=Path({mnt!r}) / "cache", min_free=0, group=group)
                return Cache(cfg, Engine(TransferConfig()), NullTransferObserver())

            async def main():
                print("supported", acl.supported(Path({mnt!r})))
                alone = cache(None)
                await alone.start()
                await alone.close()
                print("without a group: started")
                try:
                    await cache({GROUP!r}).start()
                except acl.AclUnsupported as exc:
                    print("refused:", exc)
                else:
                    print("started with group sharing")

            asyncio.run(main())
            """
        )
        r = subprocess.run(
            [
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                'mount -t ramfs none "$1" && exec "$2" -c "$3"',
                "sh",
                mnt,
                sys.executable,
                script,
            ],
            capture_output=True,
            timeout=60,
            check=False,
        )
        if r.returncode != 0 and b"mount" in r.stderr:
            pytest.skip(f"cannot mount a ramfs here: {r.stderr.decode().strip()}")
        out = r.stdout.decode()
        assert r.returncode == 0, r.stderr.decode()
        assert "supported False" in out
        assert "without a group: started" in out
        assert f"refused: [cache] group = {GROUP!r}" in out
        assert f"ramfs mounted on {mnt}" in out and "unset [cache] group" in out
