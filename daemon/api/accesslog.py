"""One record and one count per API request, on both listeners (docs/design.md, Logs).

Design note. aiohttp calls its access-log hook (`access_log_class`, its
public API: `AbstractAccessLogger.log(request, response, seconds)`) once for
every answer it writes whole, in the request's task, after the last byte.
`access_log_class` makes that hook for one listener: it counts the answer for
the connection guard (`Answered`), counts it in
`s3feed_api_requests_total{route,code}` and, with `[api] access_log` on,
writes the `"event": "request"` record. `remember_caller`, the first
middleware of both applications, notes on the request who called (the guard
learned it at the accept) and which route template matched, while the
connection is surely there: a client that left before its answer has no
transport by the time the hook runs.

A request aiohttp's parser refuses never reaches the application: aiohttp
answers it 400 itself and logs the parser's exception, with its traceback, at
error level on `aiohttp.server` (670 bytes a request, from any client). The
`_Malformed` filter on that logger drops those records and leaves the
parser's one-line reason in a context variable of the request's task, which
the hook, running later in that same task, puts in the request record
(route `malformed`). A client can send such requests as fast as it can
connect, so at most `MALFORMED_BURST` of them are logged per
`MALFORMED_WINDOW` seconds on each listener; the next one logged says how
many were not (`suppressed`). The metric counts them all. Nothing here
blocks or awaits.
"""

from __future__ import annotations

import contextvars
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web
from aiohttp.http import HttpProcessingError

from s3feed.daemon.api.connections import Answered, caller

log = logging.getLogger("s3feed.access")

MALFORMED = "malformed"  # the route of a request aiohttp's parser refused
UNMATCHED = "unmatched"  # the route of a path or method no route serves
MALFORMED_BURST = 10
MALFORMED_WINDOW = 60.0
MAX_PATH = 1024  # longer paths are cut in the record (a key is at most 1024 bytes)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_ROUTE = web.RequestKey("s3feed.route", str)
_UID = web.RequestKey("s3feed.uid", object)
_REASON: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "s3feed_malformed", default=None
)


@web.middleware
async def remember_caller(request: web.Request, handler: Handler) -> web.StreamResponse:
    resource = request.match_info.route.resource
    request[_ROUTE] = resource.canonical if resource is not None else UNMATCHED
    known = caller(request.transport)
    request[_UID] = known.uid if known is not None else None
    return await handler(request)


class MalformedLimit:
    """At most `burst` records per `window` seconds; counts what it held back."""

    def __init__(
        self,
        burst: int = MALFORMED_BURST,
        window: float = MALFORMED_WINDOW,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._burst = burst
        self._window = window
        self._clock = clock
        self._start = clock()
        self._logged = 0
        self.suppressed = 0

    def admit(self) -> int | None:
        """None: hold this one back; else how many were held back before it."""
        now = self._clock()
        if now - self._start >= self._window:
            self._start, self._logged = now, 0
        if self._logged >= self._burst:
            self.suppressed += 1
            return None
        self._logged += 1
        held, self.suppressed = self.suppressed, 0
        return held


@dataclass
class RequestRecorder:
    """What one listener's hook does with each answer."""

    listener: str  # "socket" or "url"
    enabled: bool  # [api] access_log
    counted: Callable[[str, int], None]  # (route, status): s3feed_api_requests_total
    malformed: MalformedLimit = field(default_factory=MalformedLimit)

    def answered(self, request: web.BaseRequest, status: int, seconds: float) -> None:
        reason = _REASON.get()
        route = request.get(_ROUTE)
        if route is None:  # never reached the application
            route = MALFORMED if reason is not None or status == 400 else UNMATCHED
        self.counted(route, status)
        if not self.enabled:
            return
        uid = request.get(_UID)
        if uid is None and (known := caller(request.transport)) is not None:
            uid = known.uid
        fields: dict[str, object] = {
            "event": "request",
            "listener": self.listener,
            "method": request.method,
            "path": request.path[:MAX_PATH],
            "route": route,
            "status": status,
            "uid": uid,
            "seconds": round(seconds, 6),
        }
        if route == MALFORMED:
            held = self.malformed.admit()
            if held is None:
                return
            fields["error"] = reason or "the request could not be parsed"
            if held:
                fields["suppressed"] = held
        log.info("%s %s %s", request.method, fields["path"], status, extra=fields)


def access_log_class(recorder: RequestRecorder) -> type[Answered]:
    """aiohttp's `access_log_class` for one listener (see the module's note)."""

    class RequestLog(Answered):
        def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
            super().log(request, response, time)
            recorder.answered(request, response.status, time)

    return RequestLog


class _Malformed(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError):
            return True  # anything else is a bug of ours or aiohttp's: keep its traceback
        first = (exc.message or type(exc).__name__).strip().splitlines()
        _REASON.set(f"{exc.code}: {first[0][:200] if first else type(exc).__name__}")
        return False


_FILTER = _Malformed()


def quiet_malformed_requests() -> None:
    """Drop aiohttp's traceback per malformed request (the request record says it)."""
    server = logging.getLogger("aiohttp.server")
    if _FILTER not in server.filters:
        server.addFilter(_FILTER)
