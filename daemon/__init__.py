"""The daemon: config, job registry, socket API, metrics, CLI and systemd glue."""

from typing import Any


def __getattr__(name: str) -> Any:
    # pyproject.toml holds the version; the installed metadata reports it, so
    # `s3feed --version` and s3feed_build_info (daemon/service.py) read the same
    # place. Looked up on demand: importlib.metadata slows the CLI's start
    # (docs/design.md, Performance notes: CLI start-up).
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("s3feed")
        except PackageNotFoundError:
            return "0+unknown"
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
