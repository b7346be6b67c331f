"""HTTP/1.1 over the daemon's Unix socket with http.client: what
client/blocking.py sends its calls with, except deliveries.

A module of its own so that `s3feed cat`, whose delivery speaks raw HTTP on
the socket (it passes a descriptor), starts without importing http.client and
what it pulls in (email, ssl): docs/design.md, Performance notes: CLI start-up.
"""

from __future__ import annotations

import http.client
import socket
from typing import Any


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float | None) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self._path)
        except BaseException:
            sock.close()  # no daemon there (yet): leak no socket per attempt
            raise
        self.sock = sock


class UnbufferedResponse(http.client.HTTPResponse):
    """Reads the status line and headers straight off the socket, with no
    read-ahead, so the body is still in the kernel when they are parsed and
    can be spliced to a pipe without passing through Python."""

    def __init__(self, sock: socket.socket, *args: Any, **kwargs: Any) -> None:
        super().__init__(sock, *args, **kwargs)
        self.fp = sock.makefile("rb", buffering=0)  # type: ignore[assignment]
