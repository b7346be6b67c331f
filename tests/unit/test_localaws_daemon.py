"""localaws/daemon.py, the `s3feed serve` harness of tests, bench and demo:
the config it writes, the environment it gives the daemon, and that a daemon
that cannot start is reported with its log rather than waited on.

Starting a daemon that serves needs the local AWS: tests/integration
(test_daemon_e2e.py and every user of daemonproc.py) covers that path."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from localaws import daemon

IDENTITY = daemon.Identity("http://127.0.0.1:9", "eu-west-3", "AKIDTEST", "secret-test")


def test_config_is_base_sections_with_overrides_laid_over(tmp_path: Path) -> None:
    sections = daemon.merge(
        daemon.base_sections(IDENTITY, tmp_path, 4242),
        {"transfer": {"part_size": "1MiB", "retries": 3}, "cache": {"max_size": "2GiB"}},
    )
    config = tmp_path / "s3feed.toml"
    daemon.write_config(config, sections)
    parsed = tomllib.loads(config.read_text())
    assert parsed == {
        "api": {"socket": str(tmp_path / "s3feed.sock")},
        "metrics": {"listen": "127.0.0.1:4242"},
        "sts": {"region": "eu-west-3", "endpoint_url": "http://127.0.0.1:9"},
        "s3": {"endpoint_url": "http://127.0.0.1:9"},
        "cache": {"dir": str(tmp_path / "cache"), "max_size": "2GiB"},
        "transfer": {"part_size": "1MiB", "retries": 3},
    }


def test_toml_values_keep_their_types(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    daemon.write_config(config, {"x": {"b": True, "f": 1.5, "l": ["a", "b"], "p": Path("/x")}})
    assert tomllib.loads(config.read_text()) == {
        "x": {"b": True, "f": 1.5, "l": ["a", "b"], "p": "/x"}
    }


def test_merge_leaves_the_base_alone() -> None:
    base = {"cache": {"dir": "/c"}}
    merged = daemon.merge(base, {"cache": {"max_size": "1GiB"}})
    assert base == {"cache": {"dir": "/c"}}
    assert merged == {"cache": {"dir": "/c", "max_size": "1GiB"}}


def test_environment_has_the_daemon_keys_and_nothing_else_of_aws(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_SESSION_TOKEN", "caller-token")
    monkeypatch.setenv("AWS_PROFILE", "caller-profile")
    monkeypatch.setenv("S3FEED_SOCKET", "/caller.sock")
    monkeypatch.setenv("KEEP_ME", "1")
    env = daemon.daemon_env(IDENTITY)
    aws = {k: v for k, v in env.items() if k.startswith("AWS_")}
    assert aws == {
        "AWS_ACCESS_KEY_ID": "AKIDTEST",
        "AWS_SECRET_ACCESS_KEY": "secret-test",
        "AWS_DEFAULT_REGION": "eu-west-3",
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
    }
    assert "S3FEED_SOCKET" not in env
    assert env["KEEP_ME"] == "1"


def test_a_daemon_that_exits_at_start_is_reported_with_its_log(tmp_path: Path) -> None:
    sections = daemon.merge(
        daemon.base_sections(IDENTITY, tmp_path, 4242), {"transfer": {"no_such_key": 1}}
    )
    log = tmp_path / "s3feed.log"
    with pytest.raises(daemon.DaemonError, match="exited with") as info:
        daemon.start(tmp_path / "s3feed.toml", sections, daemon.daemon_env(IDENTITY), log)
    assert "no_such_key" in str(info.value)  # the log tail names the bad key
    assert not (tmp_path / "s3feed.sock").exists()


def test_stop_returns_the_exit_code_of_a_sigterm_handler() -> None:
    code = "import signal, sys, time; signal.signal(signal.SIGTERM, lambda *a: sys.exit(0)); print('up', flush=True); time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"up\n"  # the handler is installed
    proc.stdout.close()
    assert daemon.stop(proc, grace=10) == 0


def test_stop_kills_what_ignores_sigterm() -> None:
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"up\n"
    proc.stdout.close()
    assert daemon.stop(proc, grace=0.2) == -9
