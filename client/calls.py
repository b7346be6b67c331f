"""What the two socket-API clients share: the requests (`_Calls`), the
error they raise, and the framing of a delivery (a descriptor passed with
SCM_RIGHTS: docs/design.md, Socket API)."""

from __future__ import annotations

import array
import json
import os
import socket
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote, urlencode

from s3feed.client.documents import Destination


def dumps(doc: Any) -> bytes:
    """A request body: compact JSON in UTF-8. The standard library's json, not
    orjson, in the client: the CLI imports it at every call, and orjson's own
    imports cost more CPU than the small documents' parsing would save
    (docs/design.md, Performance notes: CLI start-up)."""
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


DEFAULT_SOCKET = "/run/s3feed/s3feed.sock"
READ_CHUNK = 1024 * 1024
PIPE_SIZE = 1024 * 1024


def socket_path(explicit: str | None = None) -> str:
    return explicit or os.environ.get("S3FEED_SOCKET") or DEFAULT_SOCKET


class S3feedError(Exception):
    """An error answer: the server's code and message; `document` is the whole
    error document (`{"Error": {...}, "Fetch"?: {...}}`). An error S3 sent
    carries S3's ids in `request_id` and `host_id`, for an AWS support case."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        fetch: Any = None,
        document: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.fetch = fetch
        self.document = document or {"Error": {"Code": code, "Message": message}}

    @property
    def request_id(self) -> str | None:
        return self._detail("RequestId")

    @property
    def host_id(self) -> str | None:
        return self._detail("HostId")

    def _detail(self, name: str) -> str | None:
        value = self.document.get("Error", {}).get(name)
        return value if isinstance(value, str) else None


def _error(status: int, body: bytes) -> S3feedError:
    try:
        doc = json.loads(body)
        err = doc["Error"]
        return S3feedError(status, err["Code"], err["Message"], doc.get("Fetch"), doc)
    except (ValueError, KeyError, TypeError):
        return S3feedError(status, "HttpError", body[:200].decode(errors="replace"))


Call = tuple[str, str, Any]  # method, path with query, JSON body or None


class _Calls:
    """Each API call as (method, path, body)."""

    @staticmethod
    def create_job(
        job_id: str,
        tenant: str,
        uri_path: str,
        role_arn: str,
        duration: int | None = None,
        *,
        destination: Destination | Mapping[str, Any] | None = None,
        encoder_uids: Iterable[int] | None = None,
        **fields: Any,
    ) -> Call:
        """`fields` are further top-level fields of the body, as they are (the
        way `Destination` and `EncoderUids` were given before 0.3)."""
        source: dict[str, Any] = {
            "Provider": "AmazonS3",
            "UriPath": uri_path,
            "RoleArnToAssume": role_arn,
        }
        if duration is not None:
            source["RoleSessionDurationInSeconds"] = duration
        body: dict[str, Any] = {"JobId": job_id, "TenantName": tenant, "Source": source}
        if encoder_uids is not None:
            body["EncoderUids"] = sorted(set(encoder_uids))
        if destination is not None:
            body["Destination"] = (
                destination.body() if isinstance(destination, Destination) else dict(destination)
            )
        for name, value in fields.items():
            if name in body:
                raise TypeError(f"{name} given twice")
            body[name] = value
        return "POST", "/v1/jobs", body

    @staticmethod
    def job(job_id: str, method: str = "GET") -> Call:
        return method, f"/v1/jobs/{quote(job_id, safe='')}", None

    @staticmethod
    def list_objects(
        job_id: str, prefix: str = "", max_keys: int | None = None, token: str | None = None
    ) -> Call:
        params: dict[str, str | int] = {"Prefix": prefix} if prefix else {}
        if max_keys is not None:
            params["MaxKeys"] = max_keys
        if token is not None:
            params["ContinuationToken"] = token
        query = f"?{urlencode(params)}" if params else ""
        return "GET", f"/v1/jobs/{quote(job_id, safe='')}/objects{query}", None

    @staticmethod
    def fetch(job_id: str, key: str, wait: bool) -> Call:
        query = "?wait=true" if wait else ""
        return "POST", f"/v1/jobs/{quote(job_id, safe='')}/fetches{query}", {"Key": key}

    @staticmethod
    def get_fetch(job_id: str, fetch_id: str, method: str = "GET") -> Call:
        return method, f"/v1/jobs/{quote(job_id, safe='')}/fetches/{quote(fetch_id, safe='')}", None

    @staticmethod
    def output_path(job_id: str, key: str) -> str:
        return f"/v1/jobs/{quote(job_id, safe='')}/outputs/{quote(key, safe='/')}"

    @staticmethod
    def object_path(job_id: str, key: str) -> str:
        return f"/v1/jobs/{quote(job_id, safe='')}/objects/{quote(key, safe='/')}"


def _deliver_request(job_id: str, key: str, byte_range: str | None) -> bytes:
    """The head of `POST .../objects/{Key}?deliver=fd` (docs/design.md, Socket API: deliveries)."""
    lines = [
        f"POST {_Calls.object_path(job_id, key)}?deliver=fd HTTP/1.1",
        "Host: localhost",
        "Content-Length: 0",
        "Connection: close",
    ]
    if byte_range:
        lines.append(f"Range: bytes={byte_range}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _fd_message(fd: int) -> tuple[list[bytes], list[tuple[int, int, bytes]]]:
    """sendmsg's arguments: one byte carrying `fd` (SCM_RIGHTS)."""
    return [b"\0"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]).tobytes())]


def _split_head(buf: bytes) -> tuple[int, dict[str, str], bytes] | None:
    """(status, headers in lower case, what follows) of a complete response head in `buf`."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = buf[:end].decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise S3feedError(502, "HttpError", f"not an HTTP answer: {lines[0][:80]!r}")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers, buf[end + 4 :]


def _delivered(status: int, headers: dict[str, str], body: bytes) -> Any:
    length = int(headers.get("content-length", len(body)))
    if len(body) < length:
        raise S3feedError(502, "ShortRead", "the daemon's answer ended early")
    if status >= 400:
        raise _error(status, body[:length])
    return json.loads(body[:length])
