"""How an encoder's or job agent's Python code uses the typed clients.

`make lint` type-checks this module with mypy (strict): every annotation
below is what the clients promise. test_client_types.py runs both examples
against the in-process daemon, so they stay true as well as well-typed.
"""

from __future__ import annotations

import os

from s3feed.client import (
    AsyncClient,
    Client,
    Destination,
    Fetch,
    Health,
    Job,
    ObjectInfo,
    ObjectPage,
    S3feedError,
    Upload,
)


def blocking_example(socket: str, uri: str, role_arn: str, out_uri: str) -> list[str]:
    """A job with outputs, its listing, a fetch, a stream and an upload; -> what it saw."""
    seen: list[str] = []
    client = Client(socket)
    job: Job = client.create_job(
        "typed-1",
        "acme-films",
        uri,
        role_arn,
        900,
        destination=Destination(out_uri, server_side_encryption="AES256"),
        encoder_uids=[os.getuid()],
    )
    expires: str | None = job["CredentialsExpireAt"]
    seen.append(f"job {job['JobId']} expires {'soon' if expires else 'never'}")
    if "Destination" in job:
        seen.append(
            f"outputs to s3://{job['Destination']['Bucket']}/{job['Destination']['Prefix']}"
        )
    try:
        page: ObjectPage = client.list_objects_page("typed-1", max_keys=1)
        seen.append(f"first page: {len(page['Objects'])}, more: {'NextContinuationToken' in page}")
        for obj in client.iter_objects("typed-1"):
            info: ObjectInfo = obj
            size: int = info["Size"]
            seen.append(f"{info['Key']} {size}")
        fetch: Fetch = client.fetch("typed-1", "a.ts")
        path: str | None = fetch.get("Path")
        if fetch["State"] == "done" and path is not None:
            with open(path, "rb") as f:
                seen.append(f"fetched {len(f.read())} bytes, verified {fetch.get('Verified', [])}")
        streamed = b"".join(client.read_object("typed-1", "a.ts", "0-3"))
        seen.append(f"streamed {streamed!r}")
        upload: Upload = client.put("typed-1", "out/a.m3u8", b"#EXTM3U\n")
        seen.append(f"uploaded {upload['Key']} {upload['Size']} {sorted(upload['Checksum'])}")
        client.get_job("nope")
    except S3feedError as exc:
        seen.append(f"error {exc.status} {exc.code}")
    finally:
        client.delete_job("typed-1")
    health: Health = client.health()
    seen.append(f"jobs now {health['Jobs']}")
    return seen


async def async_example(socket: str, uri: str, role_arn: str) -> list[str]:
    """The same calls from asyncio code."""
    seen: list[str] = []
    async with AsyncClient(socket) as client:
        job: Job = await client.create_job("typed-2", "acme-films", uri, role_arn)
        seen.append(f"job {job['JobId']} {job['Bucket']}")
        keys: list[str] = [obj["Key"] async for obj in client.iter_objects("typed-2")]
        seen.append(f"keys {keys}")
        fetch: Fetch = await client.fetch("typed-2", "a.ts", wait=True)
        seen.append(f"fetch {fetch['State']} {fetch['BytesDone']}")
        jobs: list[Job] = await client.list_jobs()
        seen.append(f"jobs {[j['JobId'] for j in jobs]}")
        await client.delete_job("typed-2")
    return seen
