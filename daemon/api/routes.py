"""The socket API, v1: routes, request envelopes and JSON documents.

Every handler runs in aiohttp's task for its request. Errors of any layer
become `{"Error": {"Code", "Message"}}` in one place (`_errors`), with the
status from daemon/errors.py's table. Callers are identified by SO_PEERCRED
on the Unix socket; on any other transport the caller has no uid and may use
only /healthz and /metrics.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.aiohttp import make_aiohttp_handler

from s3feed.auth import validate_tenant_name
from s3feed.daemon.api.accesslog import remember_caller
from s3feed.daemon.api.connections import caller
from s3feed.daemon.api.limits import UidLimits
from s3feed.daemon.api.objects import deliver_object, head_object, stream_object
from s3feed.daemon.api.outputs import UploadJournal, expect_handler, put_output
from s3feed.daemon.api.peer import UNKNOWN_CALLER, Controllers, Peer, peer_of
from s3feed.daemon.errors import ApiError, FetchFailed, describe, error_body, s3_ids
from s3feed.daemon.identity import DaemonIdentity
from s3feed.daemon.jobs import JobRegistry, TransferState, parse_job_request
from s3feed.transfer import (
    MAX_KEYS,
    NullUploadObserver,
    ObjectServer,
    S3Config,
    UploadObserver,
)
from s3feed.transfer.upload import UploadConfig, UploadMemory

log = logging.getLogger("s3feed.api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# What an object read on this listener is in the log: "stream" on the socket,
# "url" on the loopback listener (docs/design.md, Logs).
READS = web.AppKey("reads", str)


def json_response(
    data: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(data), status=status, content_type="application/json", headers=headers
    )


def peer(request: web.Request) -> Peer:
    """The process on the other end, as its connection's guard learned it at the
    accept: SO_PEERCRED on the Unix socket, the kernel's owner of the client's
    socket on the loopback listener."""
    known = caller(request.transport)
    if known is not None:
        return known
    sock = request.transport.get_extra_info("socket") if request.transport else None
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        raise ApiError("Forbidden", UNKNOWN_CALLER)
    if sock is None or sock.family != socket.AF_UNIX:
        raise ApiError("NotFound", "the jobs API is served on the Unix socket only")
    return peer_of(sock)  # a connection no guard accepted (tests' bare runners)


def peer_uid(request: web.Request) -> int:
    return peer(request).uid


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status == 404:
            return json_response(error_body("NotFound", f"no route {request.path}"), 404)
        if exc.status == 405:
            return json_response(
                error_body(
                    "MethodNotAllowed", f"{request.method} is not allowed on {request.path}"
                ),
                405,
            )
        raise
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        status, code, message, headers = describe(exc)
        if code == "InternalError" and not isinstance(exc, FetchFailed):
            log.exception("request failed", extra={"path": request.path})
        extra = {"Fetch": exc.fetch_document} if isinstance(exc, FetchFailed) else {}
        return json_response(error_body(code, message, s3_ids(exc), **extra), status, headers)


@web.middleware
async def _only_routes(request: web.Request, handler: Handler) -> web.StreamResponse:
    """On the loopback listener a method the path does not serve is no route either."""
    try:
        return await handler(request)
    except web.HTTPMethodNotAllowed:
        raise web.HTTPNotFound() from None


class Api:
    def __init__(
        self,
        *,
        registry: JobRegistry,
        s3_config: S3Config,
        server: ObjectServer,
        controllers: Controllers,
        identity: DaemonIdentity,
        metrics_registry: CollectorRegistry,
        max_body: int,
        summary: Callable[[], dict[str, Any]],
        limits: UidLimits,
        body_timeout: float = 10.0,
        outputs: OutputsConfig | None = None,
    ) -> None:
        self.outputs = outputs or OutputsConfig()
        self.limits = limits
        self.body_timeout = body_timeout  # [api] header_timeout, for the JSON bodies too
        self.registry = registry
        self.s3_config = s3_config  # what a job's UriPaths resolve against
        self.server = server
        self.controllers = controllers
        self.identity = identity
        self.metrics_registry = metrics_registry
        self.max_body = max_body
        self.summary = summary

    def app(self) -> web.Application:
        app = web.Application(middlewares=[remember_caller, _errors], client_max_size=self.max_body)
        app[READS] = "stream"
        r = app.router
        r.add_post("/v1/jobs", self.create_job)
        r.add_get("/v1/jobs", self.list_jobs)
        r.add_get("/v1/jobs/{JobId}", self.get_job)
        r.add_delete("/v1/jobs/{JobId}", self.delete_job)
        r.add_get("/v1/jobs/{JobId}/objects", self.list_objects)
        r.add_get("/v1/jobs/{JobId}/objects/{Key:.+}", self.get_object, allow_head=False)
        r.add_head("/v1/jobs/{JobId}/objects/{Key:.+}", self.head_object)
        r.add_post("/v1/jobs/{JobId}/objects/{Key:.+}", self.deliver_object)
        r.add_post("/v1/jobs/{JobId}/fetches", self.create_fetch)
        r.add_get("/v1/jobs/{JobId}/fetches/{FetchId}", self.get_fetch)
        r.add_delete("/v1/jobs/{JobId}/fetches/{FetchId}", self.cancel_fetch)
        r.add_put(
            "/v1/jobs/{JobId}/outputs/{Key:.+}", self.put_output, expect_handler=expect_handler
        )
        r.add_get("/v1/trust-policy", self.get_trust_policy)
        r.add_get("/healthz", self.healthz)
        r.add_get("/metrics", make_aiohttp_handler(self.metrics_registry))
        return app

    def url_app(self) -> web.Application:
        """The loopback listener's routes (docs/design.md, URLs for encoders): an
        object's bytes and an output's upload, nothing else; every other path or
        method is 404 NotFound."""
        app = web.Application(
            middlewares=[remember_caller, _errors, _only_routes], client_max_size=self.max_body
        )
        app[READS] = "url"
        r = app.router
        r.add_get("/v1/jobs/{JobId}/objects/{Key:.+}", self.get_object, allow_head=False)
        r.add_head("/v1/jobs/{JobId}/objects/{Key:.+}", self.head_object)
        r.add_put(
            "/v1/jobs/{JobId}/outputs/{Key:.+}", self.put_output, expect_handler=expect_handler
        )
        return app

    async def _body(self, request: web.Request) -> Any:
        if request.content_length is not None and request.content_length > self.max_body:
            raise ApiError(
                "RequestTooLarge", f"request bodies are limited to {self.max_body} bytes"
            )
        data = bytearray()
        try:
            # A body that stalls would hold its connection (docs/design.md, Limits).
            async with asyncio.timeout(self.body_timeout):
                while chunk := await request.content.read(64 * 1024):
                    data += chunk
                    if len(data) > self.max_body:
                        raise ApiError(
                            "RequestTooLarge",
                            f"request bodies are limited to {self.max_body} bytes",
                        )
        except TimeoutError:
            raise ApiError(
                "RequestTimeout",
                f"the request body did not arrive within {self.body_timeout:g} s"
                " ([api] header_timeout)",
            ) from None
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise ApiError("InvalidRequest", f"the request body is not valid JSON: {exc}") from None

    async def create_job(self, request: web.Request) -> web.Response:
        caller = peer(request)
        self.controllers.check(caller, "create jobs")
        body = await self._body(request)
        live = sum(1 for j in self.registry.all_jobs() if j.uid == caller.uid)
        with self.limits.job_creation(caller.uid, live):
            # Parsed once, here; the layers below take the typed values as they are.
            job = await self.registry.create(
                parse_job_request(body, self.s3_config), uid=caller.uid
            )
        return json_response(job.document(), 201)

    async def list_jobs(self, request: web.Request) -> web.Response:
        uid = peer_uid(request)
        return json_response({"Jobs": [j.document() for j in self.registry.visible(uid)]})

    async def get_job(self, request: web.Request) -> web.Response:
        job = self.registry.get(peer_uid(request), request.match_info["JobId"])
        return json_response(job.document())

    async def delete_job(self, request: web.Request) -> web.Response:
        caller = peer(request)
        self.controllers.check(caller, "delete jobs")
        await self.registry.delete(caller.uid, request.match_info["JobId"])
        return web.Response(status=204)

    async def list_objects(self, request: web.Request) -> web.Response:
        job = self.registry.get(peer_uid(request), request.match_info["JobId"])
        relative = request.query.get("Prefix", "")
        prefix = job.location.prefix_for(relative)
        max_keys = _max_keys(request.query.get("MaxKeys"))
        token = request.query.get("ContinuationToken")
        if token is not None and not 0 < len(token) <= MAX_TOKEN:
            raise ApiError("InvalidRequest", f"ContinuationToken must be 1-{MAX_TOKEN} characters")
        # One page per request: memory per page, not per folder (docs/design.md, Socket API: listing pages).
        page = await job.store.list_page(prefix, max_keys=max_keys, token=token)
        objects = [
            {
                "Key": job.location.relative(meta.key),
                "Size": meta.size,
                "ETag": meta.etag,
                "LastModified": meta.last_modified.strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
            for meta in page.objects
        ]
        doc: dict[str, Any] = {"Objects": objects}
        if page.next_token is not None:
            doc["NextContinuationToken"] = page.next_token
        return json_response(doc)

    async def get_object(self, request: web.Request) -> web.StreamResponse:
        uid = peer_uid(request)
        job = self.registry.get(uid, request.match_info["JobId"])
        with self.limits.stream(uid) as release:
            return await stream_object(
                request,
                job,
                request.match_info["Key"],
                self.server,
                kind=request.app[READS],
                on_done=release,
            )

    async def head_object(self, request: web.Request) -> web.StreamResponse:
        """HEAD: a GET's status and headers, after the same access check; no bytes move."""
        job = self.registry.get(peer_uid(request), request.match_info["JobId"])
        return await head_object(request, job, request.match_info["Key"], self.server)

    async def deliver_object(self, request: web.Request) -> web.Response:
        uid = peer_uid(request)
        job = self.registry.get(uid, request.match_info["JobId"])
        with self.limits.stream(uid):
            return await deliver_object(
                request, job, request.match_info["Key"], self.server, self.body_timeout
            )

    async def create_fetch(self, request: web.Request) -> web.Response:
        job = self.registry.get(peer_uid(request), request.match_info["JobId"])
        body = await self._body(request)
        if not isinstance(body, dict):
            raise ApiError("InvalidRequest", "the request body must be a JSON object")
        for name in body:
            if name != "Key":
                raise ApiError("InvalidRequest", f"unknown field {name!r}; allowed: Key")
        key = body.get("Key")
        if not isinstance(key, str):
            raise ApiError("InvalidRequest", "field 'Key' must be a string")
        # Errors known before any byte moves are answered at once
        # (docs/design.md, Socket API): the access check is one of them. The
        # fetch competes for GET slots from before its HEAD (Transfers: In flight).
        transfer = self.server.engine.limiter.join(object())
        try:
            try:
                auth = await self.server.authorise(job.store, job.location.key_for(key))
            except Exception:
                job.check_live()  # the job's end closed its session under the HEAD: Cancelled
                raise
            record = job.start_fetch(key, auth, transfer)  # Cancelled once the job's close began
        except BaseException:
            transfer.leave()
            raise
        if request.query.get("wait", "").lower() not in ("true", "1"):
            # Errors known before any byte moves (no room in the cache...) are
            # answered now; later ones are the fetch document's.
            await _first(record.finished.wait(), record.progress.moving.wait())
            if record.state is TransferState.FAILED and not record.progress.moving.is_set():
                code, message = record.error or ("InternalError", "the fetch failed")
                raise FetchFailed(code, message, record.document(time.monotonic()))
            return json_response(record.document(time.monotonic()), 202)
        await record.finished.wait()
        doc = record.document(time.monotonic())
        if record.state is TransferState.DONE:
            return json_response(doc, 200)
        code, message = record.error or ("InternalError", "the fetch failed")
        raise FetchFailed(code, message, doc)

    async def get_fetch(self, request: web.Request) -> web.Response:
        job = self.registry.get(peer_uid(request), request.match_info["JobId"])
        fetch_id = request.match_info["FetchId"]
        record = job.transfers.get(fetch_id)
        if record is None or record.mode != "cache":
            raise ApiError("NoSuchFetch", f"job {job.job_id!r} has no fetch {fetch_id!r}")
        return json_response(record.document(time.monotonic()))

    async def cancel_fetch(self, request: web.Request) -> web.Response:
        job = self.registry.get(peer_uid(request), request.match_info["JobId"])
        await job.cancel_fetch(request.match_info["FetchId"])
        return web.Response(status=204)

    async def put_output(self, request: web.Request) -> web.Response:
        uid = peer_uid(request)
        job = self.registry.get(uid, request.match_info["JobId"])
        o = self.outputs
        # Counted before the body is read (docs/design.md, Limits): no 100 Continue yet.
        with self.limits.upload(uid):
            doc = await put_output(
                request,
                job,
                request.match_info["Key"],
                config=o.upload,
                observer=o.observer,
                journal=o.journal,
                memory=o.memory,
            )
        return json_response(doc, 201)

    async def get_trust_policy(self, request: web.Request) -> web.Response:
        peer_uid(request)
        tenant = validate_tenant_name(request.query.get("TenantName"))
        identity = await self.identity.get()
        return json_response(identity.trust_policy(tenant))

    async def healthz(self, request: web.Request) -> web.Response:
        known = self.identity.known
        if known is None:
            await self.identity.try_learn()
            known = self.identity.known
        # Degraded, not down (still 200): the daemon serves what it can, and a
        # restart would not mend its credentials (docs/design.md, Socket API).
        problems = []
        if known is None:
            problems.append(
                {
                    "Code": "StsUnavailable",
                    "Message": self.identity.problem
                    or "the daemon has not learned its own AWS identity yet",
                }
            )
        elif self.identity.refused is not None:
            problems.append(
                {
                    "Code": "StsUnavailable",
                    "Message": f"STS refused the daemon's own AWS credentials in the last "
                    f"AssumeRole ({self.identity.refused}); check the service's credentials "
                    "(instance profile, environment)",
                }
            )
        return json_response(
            {
                "Status": "degraded" if problems else "ok",
                "Problems": problems,
                "Principal": known.arn if known else None,
                **self.summary(),
            }
        )


MAX_TOKEN = 1024  # S3's tokens are a few hundred characters


def _max_keys(value: str | None) -> int:
    if value is None:
        return MAX_KEYS
    if not (
        value.isascii() and value.isdigit() and len(value) <= 4 and 1 <= int(value) <= MAX_KEYS
    ):
        raise ApiError("InvalidRequest", f"MaxKeys must be an integer from 1 to {MAX_KEYS}")
    return int(value)


async def _first(*waits: Coroutine[Any, Any, Any]) -> None:
    """Return when the first of `waits` returns; cancel the others."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()


@dataclass(frozen=True)
class OutputsConfig:
    """What PUT .../outputs/{Key} needs besides the job (daemon/api/outputs.py)."""

    upload: UploadConfig = field(default_factory=UploadConfig)
    observer: UploadObserver = field(default_factory=NullUploadObserver)
    journal: UploadJournal = field(default_factory=lambda: UploadJournal(None))
    # All uploads' part buffers (docs/design.md, Outputs); None: each upload its own.
    memory: UploadMemory | None = None
