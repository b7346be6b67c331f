"""The `s3feed` command: the daemon (`serve`) and a CLI over its socket API.

`main` is the console script (pyproject.toml). The CLI starts without asyncio:
the commands import the daemon's modules only when they serve.
"""

from s3feed.daemon.cli.entry import main

__all__ = ["main"]
