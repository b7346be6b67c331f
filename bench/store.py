"""The S3 side of the benchmark: SeaweedFS, the test objects and their references.

Design note. The benchmark starts its own SeaweedFS (`weed mini`, defaults:
no -s3.readerCacheSizeMB, which makes whole-object GETs of large objects
slow; docs/design.md, Test environment) through the localaws package, in a state
directory of its own (bench/.work/local-aws), so it never shares a server with
a test session and always stops what it started. The installed server and
sample media of the main state directory are reused by symlink. A caller that
already has a SeaweedFS (the smoke test's session fixture) passes a `Store`
instead.

Test objects are pseudo-random bytes from a fixed seed, written once to a
local reference file (bench/.work/ref/) that every result is compared with,
and uploaded with multipart parts of `part_size` (streamed from the file,
4 parts at a time). They carry the checksums real uploads give them
(`CHECKSUMS`, bench/run.py --checksum), since s3feed verifies what HEAD
answers and a row without one skips that work: `crc32-composite` (the
default) as boto3's `upload_file` makes them, a CRC32 per part and their
COMPOSITE "-N" checksum; `crc64nvme-full` as S3 gives every new object, a
FULL_OBJECT CRC64NVME (sent with CompleteMultipartUpload, combined from the
parts' CRCs; SeaweedFS checks it); `none` for neither. SeaweedFS 4.48 keeps
and answers all of them on `HEAD` with `x-amz-checksum-mode: ENABLED`
(`x-amz-checksum-crc32: ...-N` and `x-amz-checksum-type: COMPOSITE`, or
`x-amz-checksum-crc64nvme` and `FULL_OBJECT`); unlike S3 it adds no
CRC64NVME of its own to an object uploaded without a checksum algorithm,
even when its parts carried CRC32s (botocore's default). Peers and s3feed read with the same kind of credentials:
a session of the reader role, assumed with the daemon's identity; uploads
use a session of the writer role (which may also write) the same way.
"""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import os
import random
import socket
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import localaws

MiB = 1 << 20
CHECKSUMS = ("crc32-composite", "crc64nvme-full", "none")
DEFAULT_CHECKSUM = "crc32-composite"  # what boto3's upload_file gives a multipart object


@dataclass(frozen=True)
class Store:
    endpoint_url: str
    region: str
    admin_key_id: str
    admin_secret: str
    daemon_key_id: str
    daemon_secret: str
    role_arn: str
    bucket: str
    server_pgid: int | None  # SeaweedFS's process group, for its CPU
    https_endpoint_url: str | None = None  # the same server's HTTPS port (--https)
    ca_bundle: Path | None = None  # the throwaway CA that signed its certificate
    # Reads and writes the bucket (localaws provisions it on every SeaweedFS).
    writer_role_arn: str = localaws.role_arn(localaws.SEAWEED_WRITER_ROLE)

    @property
    def port(self) -> int:
        return int(self.endpoint_url.rsplit(":", 1)[1])

    def client(self, service: str, creds: dict[str, str] | None = None) -> Any:
        if creds is None:
            return localaws.client(
                service, self.endpoint_url, self.admin_key_id, self.admin_secret, None, self.region
            )
        return localaws.client(
            service,
            self.endpoint_url,
            creds["AccessKeyId"],
            creds["SecretAccessKey"],
            creds.get("SessionToken"),
            self.region,
        )

    def reader_session(self, role_arn: str | None = None) -> dict[str, str]:
        """Credentials of the reader role (or `role_arn`), assumed with the daemon's keys (1 h)."""
        daemon = {"AccessKeyId": self.daemon_key_id, "SecretAccessKey": self.daemon_secret}
        sts = self.client("sts", daemon)
        with contextlib.closing(sts):
            out = sts.assume_role(
                RoleArn=role_arn or self.role_arn,
                RoleSessionName="s3feed-bench",
                DurationSeconds=3600,
            )
        return dict(out["Credentials"])

    def delete(self, key: str) -> None:
        """Remove `key` and any multipart upload left under it (admin keys)."""
        s3 = self.client("s3")
        with contextlib.closing(s3):
            s3.delete_object(Bucket=self.bucket, Key=key)
            pending = s3.list_multipart_uploads(Bucket=self.bucket, Prefix=key)
            for up in pending.get("Uploads", []):
                s3.abort_multipart_upload(
                    Bucket=self.bucket, Key=up["Key"], UploadId=up["UploadId"]
                )
        self.reclaim()

    def reclaim(self) -> None:
        """Have SeaweedFS give deleted objects' space back now. It keeps their
        bytes in its volumes until they are vacuumed, so the upload rows
        (2 GiB x 6 contenders x 6 runs x 2 protocols) filled the disk (56 GiB
        of volumes, 3 GiB left) and then failed with "No writable volumes"."""
        if self.server_pgid is None:
            return
        args = Path(f"/proc/{self.server_pgid}/cmdline").read_bytes().split(b"\0")
        flag = b"-master.port="
        port = next((int(a[len(flag) :]) for a in args if a.startswith(flag)), None)
        if port is not None:
            url = f"http://127.0.0.1:{port}/vol/vacuum?garbageThreshold=0.0001"
            with urllib.request.urlopen(url, timeout=600) as resp:
                resp.read()

    def presign(self, key: str, expires: int = 3600, endpoint_url: str | None = None) -> str:
        url = endpoint_url or self.endpoint_url  # signing needs no connection
        s3 = localaws.client("s3", url, self.admin_key_id, self.admin_secret, None, self.region)
        with contextlib.closing(s3):
            return str(
                s3.generate_presigned_url(
                    "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=expires
                )
            )


def throwaway_ca(work: Path) -> tuple[Path, Path, Path]:
    """A CA made for this run and a certificate it signed for 127.0.0.1 and
    localhost (openssl): (ca.pem, cert.pem, key.pem) in WORK/tls."""
    d = work.resolve() / "tls"
    d.mkdir(parents=True, exist_ok=True)
    ca, ca_key = d / "ca.pem", d / "ca-key.pem"
    cert, key, csr, ext = d / "cert.pem", d / "key.pem", d / "cert.csr", d / "ext.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n")

    def ossl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)

    ossl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=s3feed bench throwaway CA",
        "-keyout",
        str(ca_key),
        "-out",
        str(ca),
    )
    ossl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        str(key),
        "-out",
        str(csr),
    )
    ossl(
        "x509",
        "-req",
        "-in",
        str(csr),
        "-CA",
        str(ca),
        "-CAkey",
        str(ca_key),
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        str(ext),
        "-out",
        str(cert),
    )
    return ca, cert, key


@contextlib.contextmanager
def own_seaweed(work: Path, https: bool = False) -> Iterator[Store]:
    """Start SeaweedFS in WORK/local-aws; stop it on the way out. With `https`,
    it also listens with TLS (-s3.port.https) under a throwaway CA."""
    root = work / "local-aws"
    root.mkdir(parents=True, exist_ok=True)
    main = localaws.Paths()
    for name in ("seaweed-venv", "media"):
        link = root / name
        if (main.root / name).exists() and not link.exists():
            link.symlink_to(main.root / name)
    paths = localaws.Paths(root)
    extra: list[str] = []
    https_url, ca = None, None
    if https:
        localaws.stop(paths, ("seaweed",))  # a running one would have no TLS port
        ca, cert, key = throwaway_ca(work)
        with socket.socket() as sk:
            sk.bind(("127.0.0.1", 0))
            port = int(sk.getsockname()[1])
        extra = [f"-s3.port.https={port}", f"-s3.cert.file={cert}", f"-s3.key.file={key}"]
        https_url = f"https://127.0.0.1:{port}"
    entry = localaws.start_seaweed(paths, owner="bench", extra_args=extra)
    try:
        yield Store(
            endpoint_url=entry["endpoint_url"],
            region=localaws.REGION,
            admin_key_id=entry["admin_access_key_id"],
            admin_secret=entry["admin_secret_access_key"],
            daemon_key_id=entry["daemon_access_key_id"],
            daemon_secret=entry["daemon_secret_access_key"],
            role_arn=entry["role_arn"],
            bucket=entry["bucket"],
            server_pgid=entry["pid"],
            https_endpoint_url=https_url,
            ca_bundle=ca,
        )
    finally:
        localaws.stop(paths, ("seaweed",))


def reference(work: Path, name: str, size: int, seed: int) -> Path:
    """A local file of `size` pseudo-random bytes (made once, then reused)."""
    ref_dir = work / "ref"
    ref_dir.mkdir(parents=True, exist_ok=True)
    path = ref_dir / f"{name}-{size}-{seed}.bin"
    if path.exists() and path.stat().st_size == size:
        return path
    rng = random.Random(seed)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as fh:
        left = size
        while left:
            n = min(left, 64 * MiB)
            fh.write(rng.randbytes(n))
            left -= n
    tmp.replace(path)
    return path


def upload(
    store: Store, key: str, path: Path, part_size: int, checksum: str = DEFAULT_CHECKSUM
) -> str:
    """Multipart upload of `path` (parts read from the file, 4 in flight), with
    the checksum `checksum` names (module note); the ETag."""
    from awscrt import checksums as crt
    from botocore.config import Config

    alg = {"crc32-composite": "CRC32", "crc64nvme-full": "CRC64NVME", "none": None}[checksum]
    # botocore adds a CRC32 to every part unless told it need not; "none" means none
    config = Config(request_checksum_calculation="when_required") if alg is None else None
    s3 = localaws.client(
        "s3", store.endpoint_url, store.admin_key_id, store.admin_secret, None, store.region, config
    )
    sums = {"ChecksumAlgorithm": alg} if alg else {}
    size = path.stat().st_size
    with contextlib.closing(s3):
        if size <= part_size:
            body = path.read_bytes()
            return str(s3.put_object(Bucket=store.bucket, Key=key, Body=body, **sums)["ETag"])
        full = {"ChecksumType": "FULL_OBJECT"} if alg == "CRC64NVME" else {}
        upload_id = s3.create_multipart_upload(Bucket=store.bucket, Key=key, **sums, **full)[
            "UploadId"
        ]
        try:

            def part(number: int) -> dict[str, Any]:
                offset = (number - 1) * part_size
                with open(path, "rb") as fh:
                    body = os.pread(fh.fileno(), part_size, offset)
                answer = s3.upload_part(
                    Bucket=store.bucket,
                    Key=key,
                    UploadId=upload_id,
                    PartNumber=number,
                    Body=body,
                    **sums,
                )
                out = {"PartNumber": number, "ETag": answer["ETag"]}
                if alg:
                    out[f"Checksum{alg}"] = answer[f"Checksum{alg}"]
                return out

            count = -(-size // part_size)
            with concurrent.futures.ThreadPoolExecutor(4) as pool:
                parts = list(pool.map(part, range(1, count + 1)))
            if alg == "CRC64NVME":
                crc = 0
                for p in parts:
                    part_crc = int.from_bytes(base64.b64decode(p["ChecksumCRC64NVME"]), "big")
                    length = min(part_size, size - (p["PartNumber"] - 1) * part_size)
                    crc = crt.combine_crc64nvme(crc, part_crc, length)
                full["ChecksumCRC64NVME"] = base64.b64encode(crc.to_bytes(8, "big")).decode()
            done = s3.complete_multipart_upload(
                Bucket=store.bucket,
                Key=key,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
                **full,
            )
        except BaseException:
            with contextlib.suppress(Exception):
                s3.abort_multipart_upload(Bucket=store.bucket, Key=key, UploadId=upload_id)
            raise
        return str(done["ETag"])


def head(store: Store, key: str) -> dict[str, Any]:
    s3 = store.client("s3")
    with contextlib.closing(s3):
        return dict(s3.head_object(Bucket=store.bucket, Key=key, ChecksumMode="ENABLED"))
