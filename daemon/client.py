"""The socket-API client's old import path: `s3feed.client` is its home now.

Kept so that `from s3feed.daemon.client import Client` in encoder code written
against 0.2 keeps working (README, Python client).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from s3feed.client import Client, S3feedError, socket_path

if TYPE_CHECKING:
    from s3feed.client import AsyncClient

__all__ = ["AsyncClient", "Client", "S3feedError", "socket_path"]


def __getattr__(name: str) -> Any:
    if name == "AsyncClient":  # lazily, as s3feed.client does: asyncio costs the CLI
        from s3feed.client import AsyncClient

        return AsyncClient
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
