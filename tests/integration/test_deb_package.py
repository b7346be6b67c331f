"""The Debian package (docs/design.md, Debian package), installed into a fresh
systemd booted in systemd-nspawn (`nspawn.py`), upgraded in place, purged.

The package is built once per session by scripts/build_deb.py, as `make deb`
builds it (gzip rather than xz: faster to build, the same files), in two
revisions of the same version. The container is the machine's /usr with a
writable overlay, so dpkg can install into it, and its dpkg database is an
overlay of the host's, so the package's dependencies are installed; the rest is
fresh. Its network is loopback only: ministack's port inside is a transient
socket unit whose systemd-socket-proxyd relays to a Unix socket bound in from
the host, where another systemd-socket-proxyd relays to ministack. The test
shows:

- `dpkg -i` creates the user and groups, enables and starts the socket
  (0660 s3feed:s3feed-clients) and the service; `/usr/bin/s3feed` runs for
  a user outside every s3feed group (the virtualenv is world-readable, its
  interpreter Debian's); the installed config has URLs on;
- after the admin's edits (endpoints, a credentials drop-in, users), a job
  created by the agent is fetched (the cache file's bytes), streamed
  (`s3feed cat`) and probed through its URL (ffprobe) by its encoder uid;
- `dpkg -i` of the next revision restarts the running service (a new
  MainPID), keeps the socket enabled and listening, keeps the admin's config,
  and the daemon serves the job registered before it and a new one;
- `dpkg --purge` stops and removes everything it installed;
- lintian reports no error or warning (as `make deb` requires).
"""

from __future__ import annotations

import hashlib
import re
import secrets
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import pytest
from nspawn import Machine, booted

if TYPE_CHECKING:
    from conftest import LocalAws, TestBucket

REPO = Path(__file__).resolve().parents[2]
DEBS = "/run/s3feed-debs"
HOST_AWS = "/run/host-aws/aws.sock"
PROXYD = "/usr/lib/systemd/systemd-socket-proxyd"
# What a login shell gives every user on Debian: the command must be found there.
LOGIN_PATH = "PATH=/usr/local/bin:/usr/bin:/bin"
USERS = (
    'u encoder - "an encoder" /\nm encoder s3feed-clients\n'
    'u agent - "the job agent" /\nm agent s3feed-clients\nm agent s3feed-controllers\n'
    'u stranger - "in no s3feed group" /\n'
)


@pytest.fixture(scope="session")
def debs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Revisions 1 and 2 of the package, built once for the session."""
    out = tmp_path_factory.mktemp("debs")
    built = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts/build_deb.py"),
            "--out",
            str(out),
            "--compression",
            "gzip",
            "--revision",
            "1",
            "--revision",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    return [Path(p) for p in built.stdout.split()]


@pytest.fixture(scope="module")
def host_relay(local_aws: LocalAws, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A directory holding aws.sock, which systemd-socket-proxyd relays to ministack."""
    where = tmp_path_factory.mktemp("host-aws")
    url = urlsplit(local_aws.endpoint_url)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(where / "aws.sock"))
    (where / "aws.sock").chmod(0o666)
    listener.listen(64)
    # The socket listens before the relay runs: no wait for it to come up. bash
    # moves it to fd 3 and names it in LISTEN_FDS, as systemd passes a socket.
    fd = listener.fileno()
    relay = subprocess.Popen(
        [
            "bash",
            "-c",
            f'exec 3<&{fd} {fd}<&-; LISTEN_PID=$$ LISTEN_FDS=1 exec "$@"',
            "relay",
            PROXYD,
            url.netloc,
        ],
        pass_fds=(fd,),
    )
    listener.close()
    try:
        yield where
    finally:
        relay.terminate()
        relay.wait(timeout=30)


@pytest.fixture(scope="module")
def machine(
    debs: list[Path], host_relay: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Machine]:
    files = tmp_path_factory.mktemp("deb-files")
    (files / "var/lib/dpkg").mkdir(parents=True)
    options = (
        "--overlay=/usr::/usr",  # writable, changes in a temporary directory
        f"--bind={files / 'var'}:/var",
        "--overlay=/var/lib/dpkg::/var/lib/dpkg",  # the host's packages, writable
        f"--bind={host_relay}:/run/host-aws",
    )
    # /usr's links through /etc/alternatives (ffprobe's libblas) resolve as on the host.
    binds = {debs[0].parent: DEBS, Path("/etc/alternatives"): "/etc/alternatives"}
    with booted(files, binds, options) as m:
        # The host's stat overrides name the host's groups, which a fresh /etc lacks
        # (dpkg stops on them); the overlay takes the write, the host keeps its own.
        (m.root / "var/lib/dpkg/statoverride").write_text("")
        # A build host's policy-rc.d (Docker's says 101: start nothing) would keep
        # the postinst from starting the units, which no encoder host has.
        (m.root / "usr/sbin/policy-rc.d").unlink(missing_ok=True)
        yield m


def user(m: Machine, name: str, *argv: str) -> subprocess.CompletedProcess[str]:
    """`argv` as `name` with a login's PATH and that user's groups."""
    return m.as_user(name, "env", "-i", LOGIN_PATH, *argv, timeout=120)


def user_ok(m: Machine, name: str, *argv: str) -> str:
    result = user(m, name, *argv)
    assert result.returncode == 0, f"{name} {argv}: {result.stdout}{result.stderr}{m.diagnose()}"
    return result.stdout


def set_key(text: str, section: str, key: str, value: str) -> str:
    """`key = value` in `[section]`, on the line of the key or of its commented example."""
    lines = text.splitlines(keepends=True)
    current = None
    for i, line in enumerate(lines):
        if line.startswith("["):
            current = line.strip()[1:-1]
        elif current == section and re.match(rf"#? ?{key} = ", line):
            lines[i] = f"{key} = {value}\n"
            return "".join(lines)
    raise AssertionError(f"no {key} in [{section}] of the installed config")


def socket_state(m: Machine) -> list[str]:
    return m.ok("stat", "-c", "%a %U %G", "/run/s3feed/s3feed.sock").split()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def run_a_job(
    m: Machine, local_aws: LocalAws, bucket: TestBucket, media: Path, *, keep: bool = False
) -> tuple[str, str, str]:
    """The agent creates a job for the encoder, who fetches, streams and probes;
    then deletes it, unless `keep`. Returns the job, the key and its sha256."""
    key = f"in/{secrets.token_hex(3)}/ep1.mp4"
    bucket.put(key, media)
    job = f"deb-{secrets.token_hex(4)}"
    user_ok(
        m,
        "agent",
        "s3feed",
        "job",
        "create",
        job,
        "--tenant",
        local_aws.acme_tenant,
        "--uri",
        f"https://{bucket.name}.s3.{local_aws.region}.amazonaws.com/in/",
        "--role",
        local_aws.acme_role_arn,
        "--encoder-uid",
        "encoder",
    )
    name = key.removeprefix("in/")
    want = sha256(media.read_bytes())
    path = user_ok(m, "encoder", "s3feed", "fetch", job, name).strip()
    assert user_ok(m, "encoder", "sha256sum", path).split()[0] == want
    streamed = user_ok(
        m, "encoder", "bash", "-o", "pipefail", "-c", f"s3feed cat {job} {name} | sha256sum"
    )
    assert streamed.split()[0] == want
    probe = f'ffprobe -v error -show_entries format=format_name -of csv=p=0 "$(s3feed url {job} {name})"'
    assert "mp4" in user_ok(m, "encoder", "bash", "-o", "pipefail", "-c", probe)
    # A uid outside the job: its path opens nothing, the job does not exist for it.
    assert user(m, "stranger", "cat", path).returncode != 0
    if not keep:
        user_ok(m, "agent", "s3feed", "job", "delete", job)
    return job, name, want


def test_install_run_a_job_upgrade_and_purge(
    machine: Machine, debs: list[Path], local_aws: LocalAws, bucket: TestBucket
) -> None:
    m = machine
    first, second = (f"{DEBS}/{deb.name}" for deb in debs)
    version = debs[0].name.split("_")[1]
    m.ok("dpkg", "-i", first, timeout=300)
    (m.root / "etc/sysusers.d").mkdir(exist_ok=True)
    (m.root / "etc/sysusers.d/zz-test-users.conf").write_text(USERS)  # the site's users
    m.ok("systemd-sysusers")

    # What dpkg -i laid down and started.
    for group in ("s3feed-clients", "s3feed-controllers"):
        m.ok("getent", "group", group)
    assert m.ok("systemctl", "is-enabled", "s3feed.socket", "s3feed.service").split() == [
        "enabled",
        "enabled",
    ]
    assert m.show("s3feed.socket", "ActiveState")["ActiveState"] == "active"
    assert socket_state(m) == ["660", "s3feed", "s3feed-clients"]
    assert m.ok("readlink", "-f", "/usr/bin/s3feed").strip() == "/usr/lib/s3feed/bin/s3feed"
    assert (
        m.ok("readlink", "-f", "/usr/lib/s3feed/bin/python").strip().startswith("/usr/bin/python3")
    )
    assert user_ok(m, "stranger", "sh", "-c", "command -v s3feed").strip() == "/usr/bin/s3feed"
    assert version.split("-")[0] in user_ok(m, "stranger", "s3feed", "--version")
    config = (m.root / "etc/s3feed/s3feed.toml").read_text()
    assert re.search(r'^http_listen = "127\.0\.0\.1:7468"$', config, re.M)
    user_ok(m, "stranger", "s3feed", "config", "check", "/etc/s3feed/s3feed.toml")
    # The tmpfiles snippet made the directories as the unit keeps them.
    assert m.ok("stat", "-c", "%a %U %G", "/var/cache/s3feed").split() == [
        "710",
        "s3feed",
        "s3feed-clients",
    ]

    # The admin's part: ministack's port on loopback, the daemon's keys, the users.
    port = urlsplit(local_aws.endpoint_url).port
    m.ok(
        "systemd-run",
        "--unit=aws-relay",
        f"--socket-property=ListenStream=127.0.0.1:{port}",
        PROXYD,
        HOST_AWS,
    )
    endpoint = f'"http://127.0.0.1:{port}"'
    config = set_key(config, "sts", "endpoint_url", endpoint)
    config = set_key(config, "sts", "region", f'"{local_aws.region}"')
    config = set_key(config, "s3", "endpoint_url", endpoint)
    (m.root / "etc/s3feed/s3feed.toml").write_text(config)
    dropin = m.root / "etc/systemd/system/s3feed.service.d"
    dropin.mkdir(parents=True)
    (dropin / "aws.conf").write_text(
        "[Service]\n"
        f"Environment=AWS_ACCESS_KEY_ID={local_aws.daemon_access_key_id}\n"
        f"Environment=AWS_SECRET_ACCESS_KEY={local_aws.daemon_secret_access_key}\n"
        "Environment=AWS_EC2_METADATA_DISABLED=true\n"
    )
    m.ok("systemctl", "daemon-reload")
    m.ok("systemctl", "restart", "s3feed.service")

    assert local_aws.media_mp4_path is not None, "scripts/local_aws.py install makes the media"
    kept, kept_key, kept_sha = run_a_job(m, local_aws, bucket, local_aws.media_mp4_path, keep=True)
    assert user(m, "stranger", "s3feed", "status").returncode == 4  # not in s3feed-clients

    # Upgrade in place: the running daemon is restarted, the socket never left.
    before = m.show("s3feed.service", "MainPID", "ActiveState")
    assert before["ActiveState"] == "active"
    m.ok("dpkg", "-i", second, timeout=300)
    assert m.ok("dpkg-query", "-W", "-f=${Version}", "s3feed") == debs[1].name.split("_")[1]
    after = m.show("s3feed.service", "MainPID", "ActiveState")
    assert after["ActiveState"] == "active" and after["MainPID"] != before["MainPID"], after
    assert m.ok("systemctl", "is-enabled", "s3feed.socket").strip() == "enabled"
    assert m.show("s3feed.socket", "ActiveState")["ActiveState"] == "active"
    assert socket_state(m) == ["660", "s3feed", "s3feed-clients"]
    assert (m.root / "etc/s3feed/s3feed.toml").read_text() == config  # the admin's, kept
    # The job registered before the upgrade lives on (its state in /var/lib/s3feed).
    streamed = user_ok(
        m, "encoder", "bash", "-o", "pipefail", "-c", f"s3feed cat {kept} {kept_key} | sha256sum"
    )
    assert streamed.split()[0] == kept_sha
    user_ok(m, "agent", "s3feed", "job", "delete", kept)
    run_a_job(m, local_aws, bucket, local_aws.media_mp4_path)

    # Purge: nothing of the package is left running or on disk.
    m.ok("dpkg", "--purge", "s3feed", timeout=300)
    for unit in ("s3feed.service", "s3feed.socket"):
        state = m.show(unit, "ActiveState", "LoadState")
        assert state == {"ActiveState": "inactive", "LoadState": "not-found"}, state
    for path in (
        "/usr/lib/s3feed",
        "/usr/bin/s3feed",
        "/etc/s3feed",
        "/run/s3feed/s3feed.sock",
        "/var/cache/s3feed",
        "/var/lib/s3feed",
    ):
        assert not (m.root / path.lstrip("/")).exists(), path
    assert m.run("dpkg-query", "-W", "s3feed").returncode != 0


def test_lintian_reports_no_error_or_warning(debs: list[Path]) -> None:
    lintian = shutil.which("lintian")
    if lintian is None:
        pytest.fail("lintian not found: install the Debian package lintian (make debian-packages)")
    result = subprocess.run(
        [lintian, "--fail-on", "error,warning", str(debs[0])],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
