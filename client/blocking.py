"""`Client`: the socket API from blocking code (the CLI's client).

    with Client() as c:                          async with AsyncClient() as c:
        c.create_job("job-1", "acme", uri, arn)      await c.create_job(...)
        path = c.fetch("job-1", "a.mp4")["Path"]     async for chunk in c.read_object(...)
        for obj in c.iter_objects("job-1", "show/"): async for obj in c.iter_objects(...)

Both speak HTTP/1.1 over the Unix socket ($S3FEED_SOCKET, default
/run/s3feed/s3feed.sock). The requests themselves are described once
(`_Calls` in client/calls.py); each client only sends them (AsyncClient
is in client/aio.py). An error answer raises
S3feedError with the server's code and message.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlencode

from s3feed.client.body import Body, Progress, is_pipe, regular_size, send_body
from s3feed.client.calls import (
    PIPE_SIZE,
    READ_CHUNK,
    Call,
    S3feedError,
    _Calls,
    _deliver_request,
    _delivered,
    _error,
    _fd_message,
    _split_head,
    dumps,
    socket_path,
)
from s3feed.client.documents import (
    Delivery,
    Destination,
    Fetch,
    Health,
    Job,
    ObjectInfo,
    ObjectPage,
    Policy,
    Upload,
)

if TYPE_CHECKING:
    import http.client

    from s3feed.client.objectfile import ObjectReader
    from s3feed.client.unixhttp import UnixHTTPConnection


class Client:
    """Blocking client (one connection per call; the CLI's needs are small)."""

    def __init__(self, socket: str | None = None, timeout: float | None = None) -> None:
        self.socket = socket_path(socket)
        self.timeout = timeout

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def _send(
        self, call: Call, headers: dict[str, str] | None = None, *, unbuffered: bool = False
    ) -> tuple[UnixHTTPConnection, http.client.HTTPResponse]:
        from s3feed.client.unixhttp import UnbufferedResponse, UnixHTTPConnection

        method, path, body = call
        conn = UnixHTTPConnection(self.socket, self.timeout)
        if unbuffered:
            conn.response_class = UnbufferedResponse
        data = dumps(body) if body is not None else None
        hdrs = {"Content-Type": "application/json"} if data is not None else {}
        try:
            conn.request(method, path, body=data, headers={**hdrs, **(headers or {})})
            return conn, conn.getresponse()
        except BaseException:
            conn.close()
            raise

    def put(
        self,
        job_id: str,
        key: str,
        data: Body,
        *,
        content_type: str | None = None,
        progress: Progress = lambda sent: None,
    ) -> Upload:
        """Upload `data` (bytes, an open file or descriptor, a pipe) as the
        job's output `key`; -> {"Key", "Bucket", "ETag", "Size", "Checksum"}."""
        from s3feed.client.unixhttp import UnixHTTPConnection

        conn = UnixHTTPConnection(self.socket, self.timeout)
        try:
            conn.putrequest("PUT", _Calls.output_path(job_id, key), skip_accept_encoding=True)
            if isinstance(data, bytes | bytearray | memoryview):
                size: int | None = len(data)
            else:
                size = regular_size(data if isinstance(data, int) else data.fileno())
            if size is None:
                conn.putheader("Transfer-Encoding", "chunked")
            else:
                conn.putheader("Content-Length", str(size))
            if content_type:
                conn.putheader("Content-Type", content_type)
            conn.endheaders()
            assert conn.sock is not None
            # A refusal can come before the body is all sent: its answer says why.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                send_body(conn.sock, data, size, progress)
            resp = conn.getresponse()
            body = resp.read()
            if resp.status >= 400:
                raise _error(resp.status, body)
            return cast(Upload, json.loads(body))
        finally:
            conn.close()

    def _json(self, call: Call) -> Any:
        conn, resp = self._send(call)
        try:
            body = resp.read()
        finally:
            conn.close()
        if resp.status >= 400:
            raise _error(resp.status, body)
        return json.loads(body) if body else None

    def create_job(
        self,
        job_id: str,
        tenant: str,
        uri_path: str,
        role_arn: str,
        duration: int | None = None,
        *,
        destination: Destination | Mapping[str, Any] | None = None,
        encoder_uids: Iterable[int] | None = None,
        **fields: Any,
    ) -> Job:
        """Register a job (its role is assumed now); `destination` is where
        `put` uploads, `encoder_uids` the uids that may use the job besides
        this one. `fields` are further top-level fields of the body, as they are."""
        call = _Calls.create_job(
            job_id,
            tenant,
            uri_path,
            role_arn,
            duration,
            destination=destination,
            encoder_uids=encoder_uids,
            **fields,
        )
        return cast(Job, self._json(call))

    def list_jobs(self) -> list[Job]:
        return cast(list[Job], self._json(("GET", "/v1/jobs", None))["Jobs"])

    def get_job(self, job_id: str) -> Job:
        return cast(Job, self._json(_Calls.job(job_id)))

    def delete_job(self, job_id: str) -> None:
        self._json(_Calls.job(job_id, "DELETE"))

    def list_objects_page(
        self, job_id: str, prefix: str = "", max_keys: int | None = None, token: str | None = None
    ) -> ObjectPage:
        """One page: {"Objects": [...], "NextContinuationToken"?: "..."}."""
        return cast(ObjectPage, self._json(_Calls.list_objects(job_id, prefix, max_keys, token)))

    def iter_objects(
        self, job_id: str, prefix: str = "", max_keys: int | None = None
    ) -> Iterator[ObjectInfo]:
        """Every object under `prefix`, one page in memory at a time."""
        token = None
        while True:
            page = self.list_objects_page(job_id, prefix, max_keys, token)
            yield from page["Objects"]
            token = page.get("NextContinuationToken")
            if token is None:
                return

    def list_objects(self, job_id: str, prefix: str = "") -> list[ObjectInfo]:
        """Every object under `prefix`, all pages, as one list."""
        return list(self.iter_objects(job_id, prefix))

    def fetch(self, job_id: str, key: str, wait: bool = True) -> Fetch:
        """Download `key` into the cache; with `wait`, once done (`Path` set)."""
        return cast(Fetch, self._json(_Calls.fetch(job_id, key, wait)))

    def get_fetch(self, job_id: str, fetch_id: str) -> Fetch:
        return cast(Fetch, self._json(_Calls.get_fetch(job_id, fetch_id)))

    def cancel_fetch(self, job_id: str, fetch_id: str) -> None:
        """End this fetch (`cancelled`); its download stops unless another
        fetch waits for the same object."""
        self._json(_Calls.get_fetch(job_id, fetch_id, "DELETE"))

    def trust_policy(self, tenant: str) -> Policy:
        query = urlencode({"TenantName": tenant})
        return cast(Policy, self._json(("GET", f"/v1/trust-policy?{query}", None)))

    def health(self) -> Health:
        return cast(Health, self._json(("GET", "/healthz", None)))

    @contextlib.contextmanager
    def _object(
        self, job_id: str, key: str, byte_range: str | None, unbuffered: bool = False
    ) -> Iterator[tuple[http.client.HTTPResponse, int]]:
        """The object's response and its Content-Length; short bodies become
        S3feedError ShortRead."""
        import http.client

        headers = {"Range": f"bytes={byte_range}"} if byte_range else {}
        call: Call = ("GET", _Calls.object_path(job_id, key), None)
        conn, resp = self._send(call, headers, unbuffered=unbuffered)
        try:
            if resp.status >= 400:
                raise _error(resp.status, resp.read())
            yield resp, int(resp.headers.get("Content-Length", "-1"))
        except http.client.IncompleteRead as exc:
            raise S3feedError(502, "ShortRead", f"stream ended early: {exc}") from None
        finally:
            conn.close()

    def read_object(self, job_id: str, key: str, byte_range: str | None = None) -> Iterator[bytes]:
        """The object's bytes in order; raises S3feedError if the stream ends short."""
        with self._object(job_id, key, byte_range) as (resp, expected):
            got = 0
            while chunk := resp.read1(READ_CHUNK):
                got += len(chunk)
                yield chunk
            self._check_length(got, expected)

    def copy_object(self, job_id: str, key: str, fd: int, byte_range: str | None = None) -> int:
        """Write the object's bytes in order to file descriptor `fd`; returns the count.

        To a pipe (`s3feed cat | ffmpeg -i pipe:0`) the body is spliced from the
        socket, never copied into Python, and the pipe is grown to 1 MiB so the
        reader wakes less often; to anything else it goes through one reused
        buffer."""
        splice = is_pipe(fd) and self.timeout is None
        with self._object(job_id, key, byte_range, unbuffered=splice) as (resp, expected):
            if splice and expected >= 0:
                with contextlib.suppress(OSError):  # capped by /proc/sys/fs/pipe-max-size
                    fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
                source, got = resp.fileno(), 0
                while got < expected and (n := os.splice(source, fd, expected - got)):
                    got += n
                self._check_length(got, expected)
                return got
            view = memoryview(bytearray(READ_CHUNK))
            got = 0
            while n := resp.readinto(view):
                got += n
                out = view[:n]
                while out:
                    out = out[os.write(fd, out) :]
            self._check_length(got, expected)
            return got

    def deliver(self, job_id: str, key: str, fd: int, byte_range: str | None = None) -> Delivery:
        """The daemon writes the object into `fd` itself (a pipe, file or socket
        open for writing, passed with SCM_RIGHTS); the bytes never pass through
        this process. Returns `{"Key", "ETag", "Size", "Length", "Source",
        "Bytes", "ContentRange"?}` once the last byte is written; a failure
        raises S3feedError (`Delivered`: the bytes written before it), and
        `OutputClosed` when the reader closed `fd` early. Do not write to `fd`
        (or anything sharing its open file description) until it returns: the
        daemon sets O_NONBLOCK on it meanwhile."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(self.timeout)
            sock.connect(self.socket)
            sock.sendall(_deliver_request(job_id, key, byte_range))
            buf, sent = b"", False
            while True:
                head = _split_head(buf)
                if head is None:
                    data = sock.recv(65536)
                    if not data:
                        raise S3feedError(
                            502,
                            "ShortRead",
                            "the daemon closed the connection before answering (restarting?)",
                        )
                    buf += data
                    continue
                status, headers, buf = head
                if status == 100 and not sent:
                    sock.sendmsg(*_fd_message(fd))
                    sent = True
                    continue
                while len(buf) < int(headers.get("content-length", 0)):
                    data = sock.recv(65536)
                    if not data:
                        break
                    buf += data
                return cast(Delivery, _delivered(status, headers, buf))

    def open(self, job_id: str, key: str) -> ObjectReader:
        """The object as a seekable binary file (an io.BufferedReader with
        `size` and `etag`), read with ranged GETs on one connection
        (client/objectfile.py); close it, or use it in a `with`."""
        from s3feed.client.objectfile import open_object
        from s3feed.client.unixhttp import UnixHTTPConnection

        return open_object(lambda: UnixHTTPConnection(self.socket, self.timeout), job_id, key)

    @staticmethod
    def _check_length(got: int, expected: int) -> None:
        if expected >= 0 and got != expected:
            raise S3feedError(502, "ShortRead", f"stream ended after {got} of {expected} bytes")
