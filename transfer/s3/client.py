"""`S3Client`: the daemon's one S3 client, for every job and every S3 call.

One per daemon (docs/design.md, Transfers): HEAD, ListObjectsV2, ranged GET
and the upload calls all go through one `HttpPool` (one connection pool,
one TLS context, one proxy setting); a job costs no client, pool or service
model of its own. Each request is signed once, just before it is sent, with
the credentials the caller passes (the job's, from its CredentialSource), by
botocore's `S3SigV4Auth`. aiobotocore stays for STS and the daemon's own
credential chain only (auth/).

`request` answers a whole (small) response: status, headers, body. `open`
yields the response head and leaves its body to the caller (ranged GETs
stream it into their sink). Neither translates errors nor refreshes
credentials: that is the job's store's work (transfer/s3/objects.py), which
knows the key, the credential source and the observer.

TLS: `[s3] ca_bundle`, else `AWS_CA_BUNDLE`, else the system's CAs; a CA file
that cannot be read stops start-up (ValueError naming the setting). Proxies:
HTTPS_PROXY/HTTP_PROXY/NO_PROXY from the environment (transfer/s3/proxy.py).
"""

from __future__ import annotations

import contextlib
import os
import ssl
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest

from s3feed.auth import Credentials, frozen
from s3feed.transfer.config import S3Config
from s3feed.transfer.s3.pool import ERROR_BODY_LIMIT, HttpPool, Response
from s3feed.transfer.s3.proxy import Proxies
from s3feed.transfer.uri import S3Location

CONTROL_TIMEOUT = 30.0  # seconds without a byte before a HEAD or LIST fails
BODY_LIMIT = 16 * 1024 * 1024  # a listing page of 1000 long keys is ~1 MiB


@dataclass(frozen=True)
class S3Response:
    status: int
    headers: Mapping[str, str]  # names lower-case
    body: bytes


def tls_context(
    setting: str, configured: str | None, environ: Mapping[str, str]
) -> tuple[ssl.SSLContext, str]:
    """The verifying context for `setting` (e.g. "[s3] ca_bundle") and a
    phrase saying where its CAs came from, for error messages."""
    if configured:
        cafile, where = configured, f"the CAs of {setting} = {configured}"
    elif environ.get("AWS_CA_BUNDLE"):
        cafile = environ["AWS_CA_BUNDLE"]
        where = f"the CAs of AWS_CA_BUNDLE={cafile} ({setting} unset)"
    else:
        return ssl.create_default_context(), (
            f"the system's CAs ({setting} and AWS_CA_BUNDLE unset)"
        )
    try:
        return ssl.create_default_context(cafile=cafile), where
    except (OSError, ssl.SSLError) as e:
        name = setting if configured else "AWS_CA_BUNDLE"
        raise ValueError(f"{name}: cannot load CA certificates from {cafile}: {e}") from None


def query_string(query: Mapping[str, str]) -> str:
    """`query` as S3 signs it: RFC 3986 encoding, names in the caller's order."""
    return "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in query.items())


class _UnsignedPayload(S3SigV4Auth):  # type: ignore[misc]
    """SigV4 over the head only: an upload's body carries a checksum S3 checks
    (x-amz-checksum-crc32c) instead of being hashed twice."""

    def payload(self, request: AWSRequest) -> str:
        return "UNSIGNED-PAYLOAD"


Body = bytes | memoryview


WARM_CONNECTIONS = 2  # idle connections kept ready per host when a job registers


class S3Client:
    """What every job's store and uploader share; close it once, after the last."""

    def __init__(
        self,
        s3: S3Config,
        *,
        http: HttpPool | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.s3 = s3
        if http is None:
            env = os.environ if environ is None else environ
            context, trust = tls_context("[s3] ca_bundle", s3.ca_bundle, env)
            http = HttpPool(ssl_context=context, trust=trust, proxies=Proxies.from_environ(env))
        self.http = http

    def sign(
        self,
        location: S3Location,
        creds: Credentials,
        method: str,
        key: str,
        query: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        body: Body = b"",
        *,
        unsigned_payload: bool = False,
    ) -> tuple[str, dict[str, str]]:
        """The URL and the signed headers of one request (SigV4, `creds`)."""
        url = location.url_for(key)
        if query:
            url += "?" + query_string(query)
        all_headers = {"Host": urlsplit(url).netloc, **(headers or {})}
        signer = _UnsignedPayload if unsigned_payload else S3SigV4Auth
        data = b"" if unsigned_payload else bytes(body)
        request = AWSRequest(method=method, url=url, headers=all_headers, data=data)
        signer(frozen(creds), "s3", location.region).add_auth(request)
        return url, dict(request.headers.items())

    @contextlib.asynccontextmanager
    async def open(
        self,
        location: S3Location,
        creds: Credentials,
        method: str,
        key: str,
        query: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        body: Body = b"",
        *,
        stall_timeout: float = CONTROL_TIMEOUT,
        unsigned_payload: bool = False,
    ) -> AsyncIterator[Response]:
        """Sign and send one request; yield its response head (read the body,
        or not, inside the block)."""
        url, signed = self.sign(
            location, creds, method, key, query, headers, body, unsigned_payload=unsigned_payload
        )
        async with self.http.request(
            method, url, signed, body, stall_timeout=stall_timeout
        ) as resp:
            yield resp

    async def request(
        self,
        location: S3Location,
        creds: Credentials,
        method: str,
        key: str,
        query: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        body: bytes = b"",
        *,
        stall_timeout: float = CONTROL_TIMEOUT,
    ) -> S3Response:
        """Sign and send one request and read its whole answer (an error's
        body up to 64 KiB, a success's up to 16 MiB)."""
        async with self.open(
            location, creds, method, key, query, headers, body, stall_timeout=stall_timeout
        ) as resp:
            data = await resp.read(BODY_LIMIT if resp.status < 300 else ERROR_BODY_LIMIT)
            return S3Response(resp.status, resp.headers, data)

    async def warm(self, location: S3Location) -> None:
        """Have connections to the bucket's host ready (per host, shared by
        every job): two, as a stream's HEAD and its first GET go out together
        (docs/design.md, Streams: first bytes)."""
        await self.http.warm(location.url_for(""), WARM_CONNECTIONS)

    async def close(self) -> None:
        await self.http.close()
