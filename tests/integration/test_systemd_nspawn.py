"""The units under a real systemd, booted in systemd-nspawn.

The container is this machine's own /usr (`--volatile=yes`: a fresh tmpfs
root, /usr read-only), with a private network (loopback only), so nothing
it does reaches beyond it. Bound into it: the virtualenv as /opt/s3feed
(built from /usr/bin/python3, the only interpreter visible inside), our
units and sysusers snippet as shipped, a config, and a test drop-in that
sets dummy AWS keys and a 3 s watchdog. The test drives the container from
outside with `nsenter` into its namespaces (`nspawn.py`), and shows:

- `systemctl enable --now s3feed.socket` listens with 0660
  s3feed:s3feed-clients; a member of s3feed-clients gets /healthz, which
  starts s3feed.service; a user outside the group is refused;
- the hardened service answers, logs natively to the journal, and serves
  /metrics with the process collector (ProtectProc=, MemoryDenyWriteExecute=);
- `systemctl reload` keeps the same process and logs the reload;
  `systemctl stop` ends with Result=success, exit 0, the socket still there;
- a daemon whose loop stops (SIGSTOP) is killed by the watchdog and
  restarted, and the socket brings the new one the next request;
- with `[cache] group` and `[api] controller_groups` set as the README
  says, the cache directory is what the daemon sets (710
  s3feed:s3feed-clients) before and after a restart (systemd re-owns it
  when it differs), and an encoder that is not a controller may not
  create a job (403 Forbidden) while an agent in s3feed-controllers may.

Needs root and a kernel that lets nspawn run; where it cannot, the test
skips and says why.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from nspawn import SYSTEM_PYTHON, Machine, booted

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """s3feed installed (not editable) into a virtualenv of /usr/bin/python3."""
    path = tmp_path_factory.mktemp("nspawn") / "venv"
    subprocess.run([SYSTEM_PYTHON, "-m", "venv", str(path)], check=True, timeout=300)
    subprocess.run(
        [path / "bin/pip", "install", "--quiet", "--disable-pip-version-check", str(REPO)],
        check=True,
        timeout=900,
    )
    # Console scripts name the interpreter by absolute path; inside, the venv is /opt/s3feed.
    script = path / "bin/s3feed"
    lines = script.read_text().splitlines(keepends=True)
    script.write_text("#!/opt/s3feed/bin/python\n" + "".join(lines[1:]))
    return path


@pytest.fixture(scope="module")
def machine(venv: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Machine]:
    files = tmp_path_factory.mktemp("nspawn-files")
    (files / "s3feed.toml").write_text(
        '[api]\ndrain_grace = 2\ncontroller_groups = ["s3feed-controllers"]\n'
        '[metrics]\nlisten = "127.0.0.1:9464"\n[cache]\ngroup = "s3feed-clients"\n'
        '[sts]\nendpoint_url = "http://127.0.0.1:9"\n'  # nothing listens: identity stays unknown
    )
    (files / "test.conf").write_text(
        "[Service]\n"
        "Environment=AWS_ACCESS_KEY_ID=AKIDEXAMPLEDUMMY0000 AWS_SECRET_ACCESS_KEY=dummy-not-used\n"
        "Environment=AWS_EC2_METADATA_DISABLED=true\n"
        "WatchdogSec=3s\n"
    )
    (files / "encoders.conf").write_text(
        'u encoder - "an encoder" /\nm encoder s3feed-clients\nu outsider - "not an encoder" /\n'
        'u agent - "the job agent" /\nm agent s3feed-clients\nm agent s3feed-controllers\n'
    )
    system = "/etc/systemd/system"
    binds = {
        venv: "/opt/s3feed",
        REPO / "systemd/s3feed.service": f"{system}/s3feed.service",
        REPO / "systemd/s3feed.socket": f"{system}/s3feed.socket",
        files / "test.conf": f"{system}/s3feed.service.d/test.conf",
        REPO / "systemd/sysusers.d/s3feed.conf": "/etc/sysusers.d/s3feed.conf",
        files / "encoders.conf": "/etc/sysusers.d/zz-test-encoders.conf",
        files / "s3feed.toml": "/etc/s3feed/s3feed.toml",
    }
    with booted(files, binds) as m:
        yield m


def test_socket_starts_service_reload_and_stop(machine: Machine) -> None:
    m = machine
    m.ok("systemctl", "enable", "--now", "s3feed.socket")
    assert m.ok("stat", "-c", "%a %U %G", "/run/s3feed/s3feed.sock").split() == [
        "660",
        "s3feed",
        "s3feed-clients",
    ]
    assert m.show("s3feed.service", "ActiveState")["ActiveState"] == "inactive"

    assert m.get("/healthz", "outsider")[0] == "EACCES"
    status, body = m.get("/healthz", "encoder")
    assert status == "200", body
    # No STS here: the daemon serves, degraded, and says why.
    assert '"Status":"degraded"' in body.replace(" ", "") and "StsUnavailable" in body
    state = m.show("s3feed.service", "ActiveState", "MainPID", "User", "StatusText")
    assert state["ActiveState"] == "active", state
    assert "jobs" in state["StatusText"], state
    pid = state["MainPID"]
    assert m.ok("ps", "-o", "user=", "-p", pid).strip() == "s3feed"
    # Starting the service left the socket's owner and mode alone.
    assert m.ok("stat", "-c", "%a %U %G", "/run/s3feed/s3feed.sock").split() == [
        "660",
        "s3feed",
        "s3feed-clients",
    ]
    assert m.ok("stat", "-c", "%U", "/run/s3feed/daemon").strip() == "s3feed"

    metrics = m.ok(
        SYSTEM_PYTHON,
        "-c",
        "import urllib.request as u; "
        "print(u.urlopen('http://127.0.0.1:9464/metrics', timeout=30).read().decode())",
    )
    assert "s3feed_jobs_active" in metrics and "process_cpu_seconds_total" in metrics

    # Native journal fields, not JSON lines on stderr.
    fields = m.ok("journalctl", "--no-pager", "-u", "s3feed.service", "-o", "json")
    assert '"LOGGER":"s3feed.server"' in fields.replace(" ", ""), fields[-2000:]

    m.ok("systemctl", "reload", "s3feed.service")
    state = m.show("s3feed.service", "ActiveState", "MainPID")
    assert state == {"ActiveState": "active", "MainPID": pid}
    m.wait(
        "the reload in the journal",
        lambda: "SIGHUP: config reloaded" in m.journal("s3feed.service"),
    )

    m.ok("systemctl", "stop", "s3feed.service")
    # A stop past TimeoutStopSec would be a SIGKILL: Result "timeout", not "success".
    state = m.show("s3feed.service", "ActiveState", "Result", "ExecMainStatus")
    assert state == {"ActiveState": "inactive", "Result": "success", "ExecMainStatus": "0"}
    assert m.show("s3feed.socket", "ActiveState")["ActiveState"] == "active"
    m.ok("test", "-S", "/run/s3feed/s3feed.sock")


def test_blocked_daemon_is_killed_by_the_watchdog(machine: Machine) -> None:
    m = machine
    m.ok("systemctl", "start", "s3feed.socket")
    assert m.get("/healthz", "encoder")[0] == "200"
    state = m.show("s3feed.service", "MainPID", "NRestarts", "WatchdogUSec")
    assert state["WatchdogUSec"] == "3s"
    pid, restarts = state["MainPID"], int(state["NRestarts"])

    m.ok("kill", "-STOP", pid)  # the whole process stops, its event loop with it
    m.wait(
        "the watchdog to restart the service",
        lambda: int(m.show("s3feed.service", "NRestarts")["NRestarts"]) > restarts,
        timeout=30,
    )
    assert "Watchdog timeout" in m.journal("s3feed.service")
    m.wait(
        "the restarted service",
        lambda: m.show("s3feed.service", "ActiveState")["ActiveState"] == "active",
    )
    assert m.get("/healthz", "encoder")[0] == "200"
    assert m.show("s3feed.service", "MainPID")["MainPID"] != pid
    m.ok("systemctl", "stop", "s3feed.service", "s3feed.socket")


def test_cache_directory_survives_restarts_and_only_controllers_create_jobs(
    machine: Machine,
) -> None:
    m = machine
    m.ok("systemctl", "start", "s3feed.socket")
    assert m.get("/healthz", "encoder")[0] == "200"
    expected = ["710", "s3feed", "s3feed-clients"]
    assert m.ok("stat", "-c", "%a %U %G", "/var/cache/s3feed").split() == expected
    m.ok("systemctl", "restart", "s3feed.service")
    assert m.get("/healthz", "encoder")[0] == "200"
    assert m.ok("stat", "-c", "%a %U %G", "/var/cache/s3feed").split() == expected
    assert m.ok("stat", "-c", "%a", "/var/lib/s3feed").strip() == "700"

    job = (
        '{"JobId": "j1", "TenantName": "acme-films", "Source": {"Provider": "AmazonS3", '
        '"UriPath": "https://acme.s3.eu-west-1.amazonaws.com/in/", '
        '"RoleArnToAssume": "arn:aws:iam::123456789012:role/r"}}'
    )
    status, body = m.get("/v1/jobs", "encoder", "POST", job)
    assert status == "403" and "controller_groups" in body, body
    # The agent passes the role check; STS (nothing listens) is what fails it here.
    status, body = m.get("/v1/jobs", "agent", "POST", job)
    assert status == "503" and "StsUnavailable" in body, body
    m.ok("systemctl", "stop", "s3feed.service", "s3feed.socket")
