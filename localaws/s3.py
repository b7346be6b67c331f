"""Sync botocore clients that ignore the caller's AWS configuration, and the
S3 calls the fixtures make with them (uploads, emptying a bucket)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .state import REGION, LocalAwsError


def client(
    service: str,
    endpoint_url: str,
    key_id: str,
    secret: str,
    token: str | None = None,
    region: str = REGION,
    config: Any = None,
) -> Any:
    """A sync botocore client that ignores ~/.aws and AWS_* (path-style S3);
    `config` (a botocore Config) is merged over the defaults."""
    import botocore.session
    from botocore.config import Config

    session = botocore.session.Session()
    # Never pick up the caller's ~/.aws or AWS_* environment.
    session.set_config_variable("config_file", os.devnull)
    session.set_config_variable("credentials_file", os.devnull)
    return session.create_client(
        service,
        region_name=region,
        endpoint_url=endpoint_url,
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
        aws_session_token=token,
        config=Config(
            s3={"addressing_style": "path"},
            retries={"max_attempts": 2, "mode": "standard"},
            connect_timeout=5,
            read_timeout=30,
        ).merge(config or Config()),
    )


@contextlib.contextmanager
def closing_client(*args: Any, **kw: Any) -> Iterator[Any]:
    c = client(*args, **kw)
    try:
        yield c
    finally:
        c.close()


def error_code(exc: BaseException) -> str | None:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code"))
    return None


def expect_error(code: str, fn: Callable[[], Any], what: str) -> None:
    from botocore.exceptions import ClientError

    try:
        fn()
    except ClientError as exc:
        if error_code(exc) == code:
            return
        raise LocalAwsError(f"{what}: expected {code}, got {error_code(exc)}: {exc}") from exc
    raise LocalAwsError(f"{what}: expected {code}, but it succeeded")


def quick_config() -> Any:
    from botocore.config import Config

    return Config(retries={"max_attempts": 1}, connect_timeout=1, read_timeout=2)


def put_object(
    s3: Any, bucket: str, key: str, body: bytes | Path, part_size: int | None = None
) -> str:
    """PUT (or multipart upload when part_size is given); returns the ETag."""
    data = body.read_bytes() if isinstance(body, Path) else body
    if part_size is None:
        return str(s3.put_object(Bucket=bucket, Key=key, Body=data)["ETag"])
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    try:
        parts = []
        for number, offset in enumerate(range(0, max(len(data), 1), part_size), start=1):
            chunk = data[offset : offset + part_size]
            etag = s3.upload_part(
                Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=chunk
            )["ETag"]
            parts.append({"PartNumber": number, "ETag": etag})
        done = s3.complete_multipart_upload(
            Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
        )
    except BaseException:
        with contextlib.suppress(Exception):
            s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
        raise
    return str(done["ETag"])


def empty_and_delete_bucket(s3: Any, bucket: str) -> None:
    from botocore.exceptions import ClientError

    try:
        pages = s3.get_paginator("list_object_versions").paginate(Bucket=bucket)
        for page in pages:
            for item in page.get("Versions", []) + page.get("DeleteMarkers", []):
                s3.delete_object(Bucket=bucket, Key=item["Key"], VersionId=item["VersionId"])
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for item in page.get("Contents", []):
                s3.delete_object(Bucket=bucket, Key=item["Key"])
        uploads = s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
        for up in uploads:
            s3.abort_multipart_upload(Bucket=bucket, Key=up["Key"], UploadId=up["UploadId"])
        s3.delete_bucket(Bucket=bucket)
    except ClientError as exc:
        if error_code(exc) != "NoSuchBucket":
            raise
