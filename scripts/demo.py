#!/usr/bin/env python3
"""`make demo`: one real job, end to end, on a local embedded AWS.

Starts ministack (S3 + STS + IAM with real ExternalId checks) through the
localaws package, then `s3feed serve` (localaws.daemon, the harness the tests
and the benchmark use) with the daemon's own IAM keys and endpoint overrides
pointing at it, registers a job exactly as an encoder would (curl over the Unix socket), fetches an MP4 whose index is at the end
into the cache and has ffprobe read the file, streams an MPEG-TS to ffprobe
through a pipe, shows STS refusing a job with the wrong tenant name, and
stops everything it started. Run it again: it starts from scratch.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # localaws is not installed: it lives at the root

import localaws  # noqa: E402
from localaws.daemon import DaemonError, Identity, running  # noqa: E402

VENV_BIN = Path(sys.executable).parent
S3FEED = str(VENV_BIN / "s3feed")


def say(text: str) -> None:
    print(f"\033[1m==> {text}\033[0m" if sys.stdout.isatty() else f"==> {text}", flush=True)


def show(cmd: str) -> None:
    print(f"    $ {cmd}", flush=True)


def curl(sock: Path, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    cmd = ["curl", "-sS", "--unix-socket", str(sock), "-X", method, "-w", "\n%{http_code}"]
    if body is not None:
        cmd += ["-H", "Content-Type: application/json", "-d", json.dumps(body)]
    cmd.append(f"http://localhost{path}")
    shown = [*cmd[:-1], cmd[-1]]
    if body is not None:
        shown[shown.index("-d") + 1] = "'" + json.dumps(body) + "'"
    show(
        " ".join(
            a if a.startswith("'") else shlex.quote(a)
            for a in shown
            if a != "\n%{http_code}" and a != "-w"
        )
    )
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    text, _, status = out.rpartition("\n")
    return int(status), json.loads(text) if text.strip() else None


def main() -> int:
    paths = localaws.Paths()
    say("starting the local AWS (ministack on 127.0.0.1, auth on)")
    was_running = bool(localaws.read_state(paths).get("ministack"))
    localaws.start_ministack(paths, owner="demo")
    env = localaws.env_vars(paths)
    identity = Identity(
        # The daemon's own identity, as an instance profile would give it.
        endpoint_url=env["S3FEED_LOCAL_ENDPOINT_URL"],
        region=env["S3FEED_LOCAL_REGION"],
        access_key_id=env["S3FEED_LOCAL_DAEMON_ACCESS_KEY_ID"],
        secret_access_key=env["S3FEED_LOCAL_DAEMON_SECRET_ACCESS_KEY"],
    )
    work = paths.root / "demo"
    overrides = {
        "api": {"socket_mode": "0660", "http_listen": "127.0.0.1:0"},
        "transfer": {"part_size": "1MiB"},
        "cache": {"max_size": "1GiB", "min_free": "0"},
    }
    ok = False
    try:
        say("starting s3feed serve (every AWS endpoint is the local ministack)")
        show(f"s3feed serve --config {work / 's3feed.toml'}")
        with running(identity, work, overrides, fresh=True) as daemon:
            ok = run_job(daemon.socket, env)
            say("stopping s3feed (SIGTERM: drain, exit 0)")
        print(f"    s3feed exited with 0; its log: {daemon.log}")
    except DaemonError as exc:
        print(f"    {exc}")
        ok = False
    finally:
        if not was_running:
            say("stopping the local AWS")
            localaws.stop(paths, ("ministack",))
    say("demo " + ("succeeded" if ok else "FAILED"))
    return 0 if ok else 1


def run_job(sock: Path, env: dict[str, str]) -> bool:
    cli_env = {**os.environ, "S3FEED_SOCKET": str(sock)}
    bucket = env["S3FEED_LOCAL_ACME_BUCKET"]
    tenant = env["S3FEED_LOCAL_ACME_TENANT"]
    role = env["S3FEED_LOCAL_ACME_ROLE_ARN"]
    uri = f"https://{bucket}.s3.us-east-1.amazonaws.com/media/"

    say(f"registering a job for tenant {tenant!r}, as an encoder does")
    status, job = curl(
        sock,
        "POST",
        "/v1/jobs",
        {
            "JobId": "demo-job-1",
            "TenantName": tenant,
            "Source": {
                "Provider": "AmazonS3",
                "UriPath": uri,
                "RoleArnToAssume": role,
                "RoleSessionDurationInSeconds": 3600,
            },
        },
    )
    if status != 201:
        print(f"    registration failed: {status} {job}")
        return False
    print(
        f"    201: role session {job['RoleSessionName']}, credentials until {job['CredentialsExpireAt']}"
    )

    say("listing the job's folder")
    show("s3feed ls demo-job-1")
    subprocess.run([S3FEED, "ls", "demo-job-1"], env=cli_env, check=True)

    say("fetching sample.mp4 (index at the end: needs a file) into the cache")
    show("s3feed fetch demo-job-1 sample.mp4")
    path = subprocess.run(
        [S3FEED, "fetch", "demo-job-1", "sample.mp4"],
        env=cli_env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    print(f"    cached at {path} ({os.path.getsize(path)} bytes)")
    show(f"ffprobe {path}")
    probe = ffprobe([path])
    print(f"    ffprobe: {probe}")

    say("the same MP4 through a URL only this job's uids can open: ffprobe seeks in it")
    show('ffprobe "$(s3feed url demo-job-1 sample.mp4)"')
    url = subprocess.run(
        [S3FEED, "url", "demo-job-1", "sample.mp4"],
        env=cli_env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    print(f"    {url}")
    probe_url = ffprobe([url])
    print(f"    ffprobe: {probe_url}")

    say("streaming sample.ts through a pipe to ffprobe")
    show("s3feed cat demo-job-1 sample.ts | ffprobe -i pipe:0")
    cat = subprocess.Popen(
        [S3FEED, "cat", "demo-job-1", "sample.ts"], env=cli_env, stdout=subprocess.PIPE
    )
    probe_ts = ffprobe(["-i", "pipe:0"], stdin=cat.stdout)
    assert cat.stdout is not None
    cat.stdout.close()
    cat.wait(timeout=60)
    print(f"    ffprobe: {probe_ts}")

    say("a job whose TenantName does not match the role's ExternalId")
    status, denied = curl(
        sock,
        "POST",
        "/v1/jobs",
        {
            "JobId": "demo-job-2",
            "TenantName": "globex",
            "Source": {"Provider": "AmazonS3", "UriPath": uri, "RoleArnToAssume": role},
        },
    )
    print(f"    {status} {denied['Error']['Code']}: {denied['Error']['Message']}")

    say("the trust policy a customer must put on their role")
    show(f"s3feed trust-policy {tenant}")
    subprocess.run([S3FEED, "trust-policy", tenant], env=cli_env, check=True)

    curl(sock, "DELETE", "/v1/jobs/demo-job-1")
    return (
        bool(probe)
        and probe_url == probe
        and bool(probe_ts)
        and status == 403
        and denied["Error"]["Code"] == "AssumeRoleDenied"
    )


def ffprobe(args: list[str], stdin: Any = None) -> str:
    out = subprocess.run(
        [
            "ffprobe",
            "-v",
            "error",
            "-count_packets",
            "-show_entries",
            "format=format_name,duration:stream=codec_name,nb_read_packets",
            "-of",
            "json",
            *args,
        ],
        stdin=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if out.returncode != 0:
        print(f"    ffprobe failed: {out.stderr.strip()}")
        return ""
    doc = json.loads(out.stdout)
    codecs = ", ".join(s["codec_name"] for s in doc.get("streams", []))
    fmt = doc.get("format", {})
    return (
        f"format {fmt.get('format_name')}, {float(fmt.get('duration', 0)):.1f} s, streams: {codecs}"
    )


if __name__ == "__main__":
    raise SystemExit(main())
