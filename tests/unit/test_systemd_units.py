"""systemd/: the units pass `systemd-analyze verify` with no warnings, score at
most 2.0 on `systemd-analyze security --offline=yes`, and the sysusers snippet
parses. The tools come from the Debian package `systemd` (the Makefile's
debian-packages); a machine without them fails here rather than skipping.

verify runs with --root= on a scratch tree that holds the host's unit
directory, our units, and an executable where ExecStart= expects the
virtualenv (/opt/s3feed/bin/s3feed), so the check does not depend on s3feed
being installed on the machine that runs the tests.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

SYSTEMD_DIR = Path(__file__).resolve().parents[2] / "systemd"
UNITS = ("s3feed.socket", "s3feed.service")
MAX_EXPOSURE = 2.0


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: install the Debian package systemd (make debian-packages)")
    return path


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A --root= tree: host units, our units, ExecStart=/ExecReload= binaries."""
    units = tmp_path / "etc/systemd/system"
    units.mkdir(parents=True)
    for unit in UNITS:
        shutil.copy(SYSTEMD_DIR / unit, units / unit)
    host_units = Path("/usr/lib/systemd/system")
    shutil.copytree(host_units, tmp_path / "usr/lib/systemd/system", symlinks=True)
    venv_bin = tmp_path / "opt/s3feed/bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "s3feed").write_text("#!/bin/sh\n")
    (venv_bin / "s3feed").chmod(0o755)
    (tmp_path / "bin").mkdir()
    shutil.copy("/bin/kill", tmp_path / "bin/kill")
    return tmp_path


def _verify(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_tool("systemd-analyze"), "verify", f"--root={root}", *UNITS],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_units_verify_without_warnings(root: Path) -> None:
    result = _verify(root)
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), (
        result.stdout + result.stderr
    )


def test_verify_would_report_a_mistake(root: Path) -> None:
    """The check above is live: a misspelt key and a missing binary are reported."""
    service = root / "etc/systemd/system/s3feed.service"
    service.write_text(service.read_text().replace("LockPersonality=", "LockPersonalty="))
    (root / "opt/s3feed/bin/s3feed").unlink()
    result = _verify(root)
    output = result.stdout + result.stderr
    assert "Unknown key 'LockPersonalty'" in output
    assert "/opt/s3feed/bin/s3feed is not executable" in output


def _exposure(root: Path) -> tuple[float, str]:
    result = subprocess.run(
        [
            _tool("systemd-analyze"),
            "security",
            "--offline=yes",
            f"--root={root}",
            "--no-pager",
            "s3feed.service",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = result.stdout + result.stderr
    match = re.search(r"Overall exposure level for s3feed\.service: (\d+\.\d+)", output)
    assert match, output
    return float(match.group(1)), output


def test_service_exposure_is_at_most_2(root: Path) -> None:
    exposure, output = _exposure(root)
    assert exposure <= MAX_EXPOSURE, output


def test_exposure_parse_is_live(root: Path) -> None:
    """Dropping the hardening block raises the score well above the limit."""
    service = root / "etc/systemd/system/s3feed.service"
    text = service.read_text()
    service.write_text(text[: text.index("NoNewPrivileges=")] + text[text.index("[Install]") :])
    exposure, _ = _exposure(root)
    assert exposure > 5.0


def test_service_hardening_the_issue_asks_for() -> None:
    text = (SYSTEMD_DIR / "s3feed.service").read_text()
    settings = dict(
        line.split("=", 1) for line in text.splitlines() if "=" in line and line[0].isupper()
    )
    assert settings["Type"] == "notify" and settings["NotifyAccess"] == "main"
    assert settings["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert settings["CapabilityBoundingSet"] == ""
    assert settings["RestrictAddressFamilies"] == "AF_UNIX AF_INET AF_INET6 AF_NETLINK"
    assert settings["MemoryDenyWriteExecute"] == "yes"
    assert settings["ProtectSystem"] == "strict"
    # The drain grace in the example config must fit inside TimeoutStopSec=.
    example = (SYSTEMD_DIR / "s3feed.toml.example").read_text()
    grace = float(re.search(r"^drain_grace = (\d+)", example, re.M).group(1))  # type: ignore[union-attr]
    assert float(settings["TimeoutStopSec"].removesuffix("s")) >= grace + 15
    socket_text = (SYSTEMD_DIR / "s3feed.socket").read_text()
    assert "SocketMode=0660" in socket_text and "SocketGroup=s3feed-clients" in socket_text


def test_sysusers_snippet_parses(tmp_path: Path) -> None:
    result = subprocess.run(
        [_tool("systemd-sysusers"), "--dry-run", f"--root={tmp_path}", "-"],
        input=(SYSTEMD_DIR / "sysusers.d/s3feed.conf").read_text(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Creating user 's3feed'" in output, output
    assert "Creating group 's3feed-clients'" in output, output


def test_tmpfiles_snippet_makes_the_directories_as_the_unit_keeps_them() -> None:
    """systemd re-owns a CacheDirectory= tree whose owner differs from User=/Group=:
    the snippet must give the same owner and mode, or every start would re-own the cache."""
    service = (SYSTEMD_DIR / "s3feed.service").read_text()
    settings = dict(re.findall(r"^(\w+)=(.*)$", service, re.M))
    made = {
        fields[1]: fields[2:5]
        for line in (SYSTEMD_DIR / "tmpfiles.d/s3feed.conf").read_text().splitlines()
        if line.strip() and not line.startswith("#")
        for fields in [line.split()]
        if fields[0] == "d"
    }
    owner = [settings["User"], settings["Group"]]
    assert made == {
        f"/var/cache/{settings['CacheDirectory']}": [settings["CacheDirectoryMode"], *owner],
        f"/var/lib/{settings['StateDirectory']}": [settings["StateDirectoryMode"], *owner],
    }
