"""daemon/config.py: the TOML file, its errors, and the shipped example."""

from __future__ import annotations

from pathlib import Path

import pytest

from s3feed.daemon.config import (
    ApiConfig,
    ConfigError,
    config_keys,
    load_config,
    parse_rate,
    parse_size,
)
from s3feed.transfer.config import GiB, MiB

EXAMPLE = Path(__file__).parents[2] / "systemd" / "s3feed.toml.example"


def test_the_example_config_is_valid_and_mentions_every_key() -> None:
    config = load_config(EXAMPLE)
    assert config.transfer.part_size == 16 * MiB
    assert config.cache.max_size == 100 * GiB
    assert config.api.socket_mode == 0o660
    text = EXAMPLE.read_text()
    for section, keys in config_keys().items():
        assert f"[{section}]" in text
        for key in keys:
            assert f"\n{key} =" in text or f"\n# {key} =" in text, f"[{section}] {key}"


@pytest.mark.parametrize(
    ("text", "size"),
    [("16MiB", 16 * MiB), ("1.5GiB", int(1.5 * GiB)), ("500MB", 500 * 10**6), ("42", 42), (7, 7)],
)
def test_sizes(text: object, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("bad", ["16 parsecs", "MiB", "-1MiB", True, 1.5, -3])
def test_bad_sizes(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_size(bad)


@pytest.mark.parametrize(
    ("body", "names"),
    [
        ("[transfer]\npart_sise = '8MiB'\n", "[transfer] part_sise: unknown key"),
        ("[cachee]\n", "unknown section [cachee]"),
        ("[transfer]\npart_size = 'lots'\n", "[transfer] part_size"),
        ("[transfer]\nconcurrency = 'eight'\n", "[transfer] concurrency"),
        ("[transfer]\nconcurrency = -1\n", "[transfer]"),
        ("[transfer]\ntarget_throughput = '10GB'\n", "[transfer] target_throughput"),
        ("[transfer]\ntarget_throughput = 0\n", "[transfer] target_throughput"),
        ("[transfer]\nmax_range = '8MiB'\n", "max_range must be at least transfer.part_size"),
        ("[api]\nsocket_mode = '0999'\n", "[api] socket_mode"),
        ("[metrics]\nlisten = 'localhost'\n", "[metrics]"),
        ("[s3]\nendpoint_url = 'ftp://x'\n", "[s3]"),
        ("[s3]\naddressing = 'sideways'\n", "[s3]"),
        ("[api]\naccess_log = 'yes'\n", "[api] access_log"),
        ("api = 3\n", "[api] must be a table"),
        ("[api\n", "not valid TOML"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, body: str, names: str) -> None:
    path = tmp_path / "s3feed.toml"
    path.write_text(body)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert names in str(err.value)
    assert str(path) in str(err.value)


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "absent.toml")


def test_limits_and_header_timeout(tmp_path: Path) -> None:
    path = tmp_path / "s3feed.toml"
    path.write_text("[api]\nheader_timeout = 2.5\n[limits]\nstreams_per_uid = 3\n")
    config = load_config(path)
    assert config.api.header_timeout == 2.5
    assert config.limits.streams_per_uid == 3
    assert config.limits.jobs_per_uid == 256  # the others keep their defaults
    assert config.limits.connections_per_uid == 128
    assert config.limits.job_creates_per_minute_per_uid == 120
    assert config.limits.uploads_per_uid == 8
    assert config.transfer.upload_memory_total == 512 * 1024 * 1024


def test_upload_limits(tmp_path: Path) -> None:
    path = tmp_path / "s3feed.toml"
    path.write_text("[transfer]\nupload_memory_total = '1GiB'\n[limits]\nuploads_per_uid = 2\n")
    config = load_config(path)
    assert (config.transfer.upload_memory_total, config.limits.uploads_per_uid) == (2**30, 2)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[limits]\njobs_per_uid = 0\n", "jobs_per_uid must be at least 1"),
        ("[limits]\nstreams_per_uid = '8'\n", "[limits] streams_per_uid: '8' must be an integer"),
        ("[limits]\nsockets = 3\n", "[limits] sockets: unknown key"),
        ("[api]\nheader_timeout = 0\n", "header_timeout must be > 0"),
        ("[limits]\nuploads_per_uid = 0\n", "uploads_per_uid must be at least 1"),
        (
            "[transfer]\nupload_memory_total = '4MiB'\n",
            "transfer.upload_memory_total must be at least one upload part",
        ),
        (
            "[transfer]\npart_size = '64MiB'\nupload_memory_total = '32MiB'\n",
            "transfer.upload_memory_total must be at least one upload part",
        ),
    ],
)
def test_bad_limits(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "s3feed.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("text", "rate"),
    [
        ("10Gbit", 10 * 10**9),
        ("10 Gbit/s", 10 * 10**9),
        ("2.5Gbps", int(2.5 * 10**9)),
        ("500Mbit", 500 * 10**6),
        ("800kbit", 800_000),
        (1_000_000, 1_000_000),
    ],
)
def test_rates(text: object, rate: int) -> None:
    assert parse_rate(text) == rate


@pytest.mark.parametrize("bad", ["10GB", "10GiB", "Gbit", "fast", True, 1.5, 0, -3])
def test_bad_rates(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_rate(bad)


def test_the_gets_in_flight_are_learned_unless_concurrency_is_set(tmp_path: Path) -> None:
    path = tmp_path / "s3feed.toml"
    path.write_text("")
    transfer = load_config(path).transfer
    assert (transfer.concurrency, transfer.target_throughput) == (0, 10 * 10**9)
    # A file of an earlier version, with the old key, still loads: a fixed count.
    path.write_text("[transfer]\nconcurrency = 8\ntarget_throughput = '1Gbit'\n")
    transfer = load_config(path).transfer
    assert (transfer.concurrency, transfer.target_throughput) == (8, 10**9)


def test_the_stream_window_follows_the_part_size_unless_set(tmp_path: Path) -> None:
    path = tmp_path / "s3feed.toml"
    path.write_text("[transfer]\npart_size = '64MiB'\n")
    assert load_config(path).transfer.stream_window == 3 * 64 * MiB  # not refused as < part
    path.write_text("")
    assert load_config(path).transfer.stream_window == 48 * MiB
    path.write_text("[transfer]\npart_size = '8MiB'\nstream_window = '100MiB'\n")
    assert load_config(path).transfer.stream_window == 100 * MiB


def test_the_largest_cache_range_follows_the_part_size_unless_set(tmp_path: Path) -> None:
    path = tmp_path / "s3feed.toml"
    path.write_text("")
    assert load_config(path).transfer.max_range == 64 * MiB
    path.write_text("[transfer]\npart_size = '64MiB'\n")
    assert load_config(path).transfer.max_range == 4 * 64 * MiB  # not refused as < part
    path.write_text("[transfer]\nmax_range = '16MiB'\n")
    assert load_config(path).transfer.max_range == 16 * MiB


def test_access_log_is_on_unless_turned_off(tmp_path: Path) -> None:
    path = tmp_path / "s3feed.toml"
    path.write_text("[api]\n")
    assert load_config(path).api.access_log is True
    path.write_text("[api]\naccess_log = false\n")
    assert load_config(path).api.access_log is False


def test_state_dir_absent_is_systemds_empty_is_none_relative_is_refused() -> None:
    """docs/design.md, Configuration: `[api] state_dir`."""
    env = {"STATE_DIRECTORY": "/var/lib/s3feed:/var/lib/other"}
    assert ApiConfig().state_path(env) == Path("/var/lib/s3feed")
    assert ApiConfig().state_path({}) is None
    assert ApiConfig(state_dir="").state_path(env) is None
    assert ApiConfig(state_dir="/srv/s3feed").state_path(env) == Path("/srv/s3feed")
    with pytest.raises(ValueError, match="absolute"):
        ApiConfig(state_dir="state")
