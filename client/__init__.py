"""A small Python client for the socket API, blocking and asyncio; the CLI uses it.

    with Client() as c:                          async with AsyncClient() as c:
        c.create_job("job-1", "acme", uri, arn)      await c.create_job(...)
        path = c.fetch("job-1", "a.mp4")["Path"]     async for chunk in c.read_object(...)
        for obj in c.iter_objects("job-1", "show/"): async for obj in c.iter_objects(...)

Both speak HTTP/1.1 over the Unix socket ($S3FEED_SOCKET, default
/run/s3feed/s3feed.sock). The requests are described once (`_Calls` in
calls.py); each client only sends them: `Client` in blocking.py, `AsyncClient`
in aio.py; `open` gives an object as a seekable file (objectfile.py). An
error answer raises S3feedError with the server's code and message. The
answers are typed (documents.py: TypedDicts, still plain dicts), and
`create_job` takes a `Destination` and `encoder_uids`. This package imports
nothing of the daemon, so an encoder can use it on its own;
`s3feed.daemon.client` re-exports it for code written before.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from s3feed.client.blocking import Client
from s3feed.client.calls import S3feedError, socket_path
from s3feed.client.documents import (
    Delivery,
    Destination,
    ErrorDetail,
    Fetch,
    Health,
    Job,
    JobDestination,
    ObjectInfo,
    ObjectPage,
    Policy,
    Problem,
    Transfer,
    Upload,
)

if TYPE_CHECKING:
    from s3feed.client.aio import AsyncClient
    from s3feed.client.objectfile import AsyncObjectFile, ObjectReader

__all__ = [
    "AsyncClient",
    "AsyncObjectFile",
    "Client",
    "Delivery",
    "Destination",
    "ErrorDetail",
    "Fetch",
    "Health",
    "Job",
    "JobDestination",
    "ObjectInfo",
    "ObjectPage",
    "ObjectReader",
    "Policy",
    "Problem",
    "S3feedError",
    "Transfer",
    "Upload",
    "socket_path",
]


def __getattr__(name: str) -> Any:
    # AsyncClient needs asyncio, slow to import (docs/design.md, Performance
    # notes: CLI start-up): the CLI, which never uses it, starts without it;
    # `from s3feed.client import AsyncClient` works.
    if name == "AsyncClient":
        from s3feed.client.aio import AsyncClient

        return AsyncClient
    # The object files need http.client (email, ssl): `s3feed cat` does not.
    if name in ("AsyncObjectFile", "ObjectReader"):
        from s3feed.client import objectfile

        return getattr(objectfile, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
