"""Python peers as one-shot processes, run with bench/.venv's interpreter:

    python bench/clients.py boto3|awscrt ENDPOINT BUCKET KEY OUT [PART_SIZE]

Credentials come from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and
AWS_SESSION_TOKEN. The whole process is measured, as for the binary peers
(imports included: that is what a user who picks the tool pays).

- boto3: `download_file` with the classic transfer manager (the CRT one
  ignores endpoint_url), 16 threads, 16 MiB chunks.
- awscrt: `awscrt.s3.S3Client` GET_OBJECT into a file, 16 MiB parts; TLS
  when the endpoint is https (trusting AWS_CA_BUNDLE); the endpoint is the
  Host header (host:port).
"""

from __future__ import annotations

import os
import sys
from urllib.parse import urlsplit


def boto3_download(endpoint: str, bucket: str, key: str, out: str, part_size: int) -> None:
    import boto3
    from boto3.s3.transfer import TransferConfig
    from botocore.config import Config

    s3 = boto3.session.Session().client(
        "s3",
        region_name="us-east-1",
        endpoint_url=endpoint,
        config=Config(s3={"addressing_style": "path"}, max_pool_connections=16),
    )
    config = TransferConfig(
        max_concurrency=16,
        multipart_chunksize=part_size,
        preferred_transfer_client="classic",
    )
    s3.download_file(bucket, key, out, Config=config)


def awscrt_download(endpoint: str, bucket: str, key: str, out: str, part_size: int) -> None:
    from awscrt.auth import AwsCredentialsProvider
    from awscrt.http import HttpHeaders, HttpRequest
    from awscrt.io import (
        ClientBootstrap,
        ClientTlsContext,
        DefaultHostResolver,
        EventLoopGroup,
        TlsContextOptions,
    )
    from awscrt.s3 import S3Client, S3RequestTlsMode, S3RequestType

    elg = EventLoopGroup()
    bootstrap = ClientBootstrap(elg, DefaultHostResolver(elg))
    creds = AwsCredentialsProvider.new_static(
        os.environ["AWS_ACCESS_KEY_ID"],
        os.environ["AWS_SECRET_ACCESS_KEY"],
        os.environ.get("AWS_SESSION_TOKEN"),
    )
    tls: dict[str, object] = {"tls_mode": S3RequestTlsMode.DISABLED}
    if urlsplit(endpoint).scheme == "https":
        options = TlsContextOptions()
        if os.environ.get("AWS_CA_BUNDLE"):
            options.override_default_trust_store_from_path(None, os.environ["AWS_CA_BUNDLE"])
        tls = {
            "tls_mode": S3RequestTlsMode.ENABLED,
            "tls_connection_options": ClientTlsContext(options).new_connection_options(),
        }
    client = S3Client(
        bootstrap=bootstrap,
        region="us-east-1",
        credential_provider=creds,
        part_size=part_size,
        throughput_target_gbps=10.0,
        **tls,  # type: ignore[arg-type]
    )
    host = urlsplit(endpoint).netloc
    request = HttpRequest("GET", f"/{bucket}/{key}", HttpHeaders([("Host", host)]))
    status: list[int] = []
    s3req = client.make_request(
        type=S3RequestType.GET_OBJECT,
        request=request,
        recv_filepath=out,
        on_headers=lambda status_code, headers, **kw: status.append(status_code),
    )
    s3req.finished_future.result(timeout=600)
    if not status or status[0] not in (200, 206):
        raise SystemExit(f"awscrt: HTTP {status}")


def main() -> int:
    tool, endpoint, bucket, key, out = sys.argv[1:6]
    part_size = int(sys.argv[6]) if len(sys.argv) > 6 else 16 << 20
    {"boto3": boto3_download, "awscrt": awscrt_download}[tool](
        endpoint, bucket, key, out, part_size
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
