"""The daemon's configuration: one TOML file, one frozen dataclass per component.

This is the only module that reads configuration files. Every key is
optional; unknown keys and bad values raise ConfigError naming the key
(`[transfer] part_size: ...`), which stops start-up and is what
`s3feed config check` prints. Sizes accept `16MiB`-style strings or integers
(bytes); durations are seconds.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from s3feed.auth import StsConfig
from s3feed.transfer import CacheConfig, S3Config, TransferConfig

DEFAULT_CONFIG_PATH = Path("/etc/s3feed/s3feed.toml")
DEFAULT_SOCKET = Path("/run/s3feed/s3feed.sock")


class ConfigError(ValueError):
    pass


def loopback_host_port(value: str) -> tuple[str, int]:
    """`http_listen`'s "127.0.0.1:7468" or "[::1]:7468" as (host, port); other values raise."""
    host, sep, port = value.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    if not sep or ip is None or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"http_listen must be HOST:PORT, e.g. 127.0.0.1:7468; got {value!r}")
    if not ip.is_loopback:
        raise ValueError(
            f"http_listen must be a loopback address (127.0.0.0/8 or [::1]): {host} would "
            "let other hosts connect, and the caller's uid is only known for this host's own "
            "sockets"
        )
    return str(ip), int(port)


@dataclass(frozen=True)
class ApiConfig:
    socket: Path = DEFAULT_SOCKET
    socket_mode: int = 0o660
    max_body: int = 1024 * 1024  # request bodies above this get 413 RequestTooLarge
    job_idle_ttl: float = 24 * 3600.0  # jobs untouched this long are reaped
    drain_grace: float = 30.0  # SIGTERM: seconds running transfers get to finish
    # Groups whose members may create and delete jobs; () = every client may.
    controller_groups: tuple[str, ...] = ()
    header_timeout: float = 10.0  # a request head must arrive within this (docs/design.md, Limits)
    # Where the upload journal and the saved jobs live (docs/design.md, Outputs;
    # Restart and upgrade). None (absent): systemd's $STATE_DIRECTORY, else none;
    # "": none (uploads not recovered after a crash, jobs not kept over a restart).
    state_dir: str | None = None
    # The loopback HTTP listener of URLs for encoders (docs/design.md, URLs for
    # encoders): "HOST:PORT" on 127.0.0.0/8 or [::1]; "" (the default) = off.
    http_listen: str = ""
    # One "event": "request" log record per API request (docs/design.md, Logs).
    access_log: bool = True

    def state_path(self, environ: Mapping[str, str]) -> Path | None:
        """The state directory: `state_dir`, or when absent the first of
        systemd's $STATE_DIRECTORY; None when there is none."""
        if self.state_dir is not None:
            return Path(self.state_dir) if self.state_dir else None
        given = environ.get("STATE_DIRECTORY", "").split(":")[0]
        return Path(given) if given else None

    def __post_init__(self) -> None:
        if self.http_listen:
            loopback_host_port(self.http_listen)  # raises with what to write
        if self.state_dir and not Path(self.state_dir).is_absolute():
            raise ValueError(f'state_dir must be an absolute path or ""; got {self.state_dir!r}')
        if not 0 <= self.socket_mode <= 0o777:
            raise ValueError('must be an octal file mode such as 0o660 or "0660"')
        if self.job_idle_ttl <= 0 or self.drain_grace < 0:
            raise ValueError("job_idle_ttl must be > 0 and drain_grace >= 0")
        if self.header_timeout <= 0:
            raise ValueError("header_timeout must be > 0")


@dataclass(frozen=True)
class LimitsConfig:
    """What one peer uid (root included) may hold at once; daemon/api/limits.py
    enforces them. Bounds per uid: connections_per_uid x one request head
    buffer, streams_per_uid x a window's maximum (stream_window, or a part per
    GET a remote link needs; all streams: [transfer] stream_memory), uploads_per_uid x upload_memory (all uploads: [transfer]
    upload_memory_total), jobs_per_uid role sessions."""

    jobs_per_uid: int = 256
    streams_per_uid: int = 64
    connections_per_uid: int = 128
    job_creates_per_minute_per_uid: int = 120
    uploads_per_uid: int = 8

    def __post_init__(self) -> None:
        for f in fields(self):
            if getattr(self, f.name) < 1:
                raise ValueError(f"{f.name} must be at least 1")


@dataclass(frozen=True)
class MetricsConfig:
    listen: str | None = "127.0.0.1:9464"  # host:port of the TCP listener; "" disables it

    def __post_init__(self) -> None:
        if self.listen:
            host, sep, port = self.listen.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
                raise ValueError("must be HOST:PORT, e.g. 127.0.0.1:9464")

    @property
    def host_port(self) -> tuple[str, int] | None:
        if not self.listen:
            return None
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)


@dataclass(frozen=True)
class Config:
    api: ApiConfig = field(default_factory=ApiConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    sts: StsConfig = field(default_factory=StsConfig)
    s3: S3Config = field(default_factory=S3Config)
    transfer: TransferConfig = field(default_factory=TransferConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)?\s*$")
_UNITS = {
    None: 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KiB": 2**10,
    "MiB": 2**20,
    "GiB": 2**30,
    "TiB": 2**40,
}


def parse_size(value: object) -> int:
    """`16MiB`, `1.5GiB`, `500MB` or an integer number of bytes."""
    if isinstance(value, bool):
        raise ValueError("must be a size such as 16MiB or a number of bytes")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("must not be negative")
        return value
    if isinstance(value, str) and (m := _SIZE.match(value)):
        return int(float(m.group(1)) * _UNITS[m.group(2)])
    raise ValueError(f"{value!r} is not a size; write e.g. 16MiB, 2GiB or 1048576")


# Bits, with decimal prefixes as link rates have them: 10Gbit, 10Gbit/s, 10Gbps.
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKMGT]?)(?:bit|b)(?:/s|ps)?\s*$")
_RATE_UNITS = {"": 1, "k": 10**3, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


def parse_rate(value: object) -> int:
    """`10Gbit`, `500Mbit/s`, `2.5Gbps` or an integer number of bits per second."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value <= 0:
            raise ValueError("must be > 0")
        return value
    if isinstance(value, str) and (m := _RATE.match(value)):
        return int(float(m.group(1)) * _RATE_UNITS[m.group(2)])
    raise ValueError(f"{value!r} is not a rate; write e.g. 10Gbit, 500Mbit or 1000000 (bits/s)")


def _seconds(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{value!r} is not a number of seconds")
    return float(value)


def _mode(value: object) -> int:
    if isinstance(value, str) and re.fullmatch(r"0?o?[0-7]{3,4}", value):
        return int(value.replace("o", ""), 8)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise ValueError(f'{value!r} is not a file mode; write it as a string, e.g. "0660"')


def _str(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{value!r} must be a string")
    return value


def _str_list(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f'{value!r} must be a list of names, e.g. ["s3feed-controllers"]')
    return tuple(value)


def _int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{value!r} must be an integer")
    return value


def _bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{value!r} must be true or false")
    return value


def _path(value: object) -> Path:
    return Path(_str(value))


Converter = Callable[[object], Any]
_SECTIONS: dict[str, tuple[type[Any], dict[str, Converter]]] = {
    "api": (
        ApiConfig,
        {
            "socket": _path,
            "socket_mode": _mode,
            "max_body": parse_size,
            "job_idle_ttl": _seconds,
            "drain_grace": _seconds,
            "controller_groups": _str_list,
            "header_timeout": _seconds,
            "state_dir": _str,
            "http_listen": _str,
            "access_log": _bool,
        },
    ),
    "metrics": (MetricsConfig, {"listen": _str}),
    "sts": (StsConfig, {"region": _str, "endpoint_url": _str, "ca_bundle": _str}),
    "s3": (S3Config, {"endpoint_url": _str, "addressing": _str, "ca_bundle": _str}),
    "transfer": (
        TransferConfig,
        {
            "part_size": parse_size,
            "target_throughput": parse_rate,
            "concurrency": _int,
            "global_concurrency": _int,
            "stream_window": parse_size,
            "max_range": parse_size,
            "retries": _int,
            "stall_timeout": _seconds,
            "stream_memory": parse_size,
            "upload_memory": parse_size,
            "upload_memory_total": parse_size,
        },
    ),
    "cache": (
        CacheConfig,
        {
            "dir": _path,
            "max_size": parse_size,
            "min_free": parse_size,
            "group": _str,
        },
    ),
    "limits": (
        LimitsConfig,
        {
            "jobs_per_uid": _int,
            "streams_per_uid": _int,
            "connections_per_uid": _int,
            "job_creates_per_minute_per_uid": _int,
            "uploads_per_uid": _int,
        },
    ),
}


def _section(name: str, raw: object) -> Any:
    cls, converters = _SECTIONS[name]
    if not isinstance(raw, Mapping):
        raise ConfigError(f"[{name}] must be a table")
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in converters:
            known = ", ".join(sorted(converters))
            raise ConfigError(f"[{name}] {key}: unknown key (known keys: {known})")
        try:
            kwargs[key] = converters[key](value)
        except ValueError as exc:
            raise ConfigError(f"[{name}] {key}: {exc}") from None
    try:
        return cls(**kwargs)
    except ValueError as exc:
        raise ConfigError(f"[{name}]: {exc}") from None


def config_from_mapping(data: Mapping[str, object]) -> Config:
    unknown = set(data) - set(_SECTIONS)
    if unknown:
        raise ConfigError(
            f"unknown section [{sorted(unknown)[0]}] (known: {', '.join(sorted(_SECTIONS))})"
        )
    sections = {name: _section(name, data[name]) for name in _SECTIONS if name in data}
    return Config(**sections)


def load_config(path: Path | None) -> Config:
    """Read `path`; None means the default path if it exists, else all defaults."""
    if path is None:
        if not DEFAULT_CONFIG_PATH.exists():
            return Config()
        path = DEFAULT_CONFIG_PATH
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    try:
        return config_from_mapping(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def config_keys() -> dict[str, list[str]]:
    """Section -> keys, for docs and tests that the example config covers everything."""
    return {name: sorted(conv) for name, (_, conv) in _SECTIONS.items()}


assert all(set(conv) <= {f.name for f in fields(cls)} for cls, conv in _SECTIONS.values()), (
    "a config key has no dataclass field"
)
