"""daemon/api/connections.py: the head timer does not close a request whose handler runs."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

from s3feed.daemon.api.connections import ConnectionGuard
from s3feed.daemon.api.limits import UidLimits
from s3feed.daemon.config import LimitsConfig


class Handler:
    def __init__(self) -> None:
        self._request_count = 0
        self._request_in_progress = False
        self._messages: deque[Any] = deque()

    def connection_made(self, transport: Any) -> None:
        pass

    def data_received(self, data: bytes) -> None:
        pass


class Transport:
    closed = False

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str) -> None:
        return None


def _guard_after_a_head_and_early_body() -> tuple[ConnectionGuard, Handler, Transport]:
    handler, transport = Handler(), Transport()
    guard = ConnectionGuard(handler, UidLimits(LimitsConfig()), header_timeout=10)  # type: ignore[arg-type]
    guard.connection_made(transport)  # type: ignore[arg-type]
    handler._request_count = 1  # aiohttp parsed the head...
    handler._messages.append("request")
    guard.data_received(b"PUT ... head")
    handler._messages.popleft()  # ... took it, and its handler task has not run yet:
    guard.data_received(b"body bytes")  # this arms the timer as if a head began
    assert guard._timer is not None
    return guard, handler, transport


def test_a_running_request_is_not_a_late_head() -> None:
    async def main() -> bool:
        guard, handler, transport = _guard_after_a_head_and_early_body()
        handler._request_in_progress = True  # the upload's handler runs for minutes
        guard._head_late()
        return transport.closed

    assert asyncio.run(main()) is False


def test_a_late_head_still_closes() -> None:
    async def main() -> bool:
        guard, _, transport = _guard_after_a_head_and_early_body()
        guard._head_late()  # nothing runs and no head came
        return transport.closed

    assert asyncio.run(main()) is True
