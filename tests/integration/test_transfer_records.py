"""Every transfer and request on the record, from a real `s3feed serve` on the
local AWS (docs/design.md, Logs): the JSON lines it writes to stderr hold one
`"event": "transfer"` record per transfer - a fetch, a socket stream, a
delivery (`s3feed cat`), a URL read, a fetch that failed when the object
changed under it, a fetch SIGTERM ended (ShuttingDown) - and one `"event": "request"`
record per request. The daemon's STS goes through the recording proxy, so
every secret it was issued is known: none is in the log (`proxied_daemon`
greps for them when the daemon has stopped).
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from daemonproc import S3FEED
from faultproxy import Fault, key_get, wait_until
from reliability import MiB, Rig, blob, proxied_daemon, uri

from s3feed.client import Client, S3feedError

if TYPE_CHECKING:
    from conftest import LocalAws, TestBucket


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """AF_UNIX paths are limited to 108 bytes."""
    path = Path(tempfile.mkdtemp(prefix="s3feed-rec-", dir="/tmp"))
    yield path
    subprocess.run(["rm", "-rf", str(path)], check=False)


def records(rig: Rig, event: str) -> list[dict[str, Any]]:
    out = []
    for line in rig.log_text().splitlines():
        if line.startswith("{"):
            doc = json.loads(line)
            if doc.get("event") == event:
                out.append(doc)
    return out


def test_each_transfer_and_request_is_one_json_record_without_secrets(
    local_aws: LocalAws, bucket: TestBucket, short_dir: Path
) -> None:
    data = blob(3 * MiB + 11, seed=2401)
    bucket.put("in/a.bin", data)
    bucket.put("in/changing.bin", data)
    bucket.put("in/held.bin", data)
    with proxied_daemon(
        local_aws,
        short_dir / "d",
        api={"socket": short_dir / "s.sock", "http_listen": "127.0.0.1:0", "drain_grace": 0},
    ) as rig:
        client = Client(rig.socket, timeout=60)
        client.create_job(
            "rec", local_aws.acme_tenant, uri(bucket.name, "in/"), local_aws.acme_role_arn
        )

        assert client.fetch("rec", "a.bin", wait=True)["State"] == "done"
        assert b"".join(client.read_object("rec", "changing.bin")) == data
        out = short_dir / "delivered"
        with out.open("wb") as f:
            subprocess.run(
                [S3FEED, "--socket", rig.socket, "cat", "rec", "changing.bin"],
                stdout=f,
                check=True,
                timeout=60,
            )
        assert out.read_bytes() == data
        listen = client.health()["HttpListen"]
        with urllib.request.urlopen(
            f"http://{listen}/v1/jobs/rec/objects/a.bin", timeout=60
        ) as resp:
            assert resp.read() == data

        # The object changes after the fetch's first GET: S3 refuses the next (412).
        rig.s3.add(
            Fault(
                "overwrite",
                match=key_get("changing.bin"),
                after=1,
                action=lambda: bucket.put("in/changing.bin", data[::-1]),
            )
        )
        with pytest.raises(S3feedError) as changed:
            client.fetch("rec", "changing.bin", wait=True)
        assert changed.value.code == "SourceChanged"

        # A fetch that SIGTERM finds running (drain_grace 0) ends with ShuttingDown.
        rig.s3.add(Fault("latency", match=key_get("held.bin"), after=1, times=None, seconds=30))
        held = client.fetch("rec", "held.bin", wait=False)
        wait_until(
            lambda: client.get_fetch("rec", held["FetchId"])["BytesDone"] > 0,
            30,
            "held fetch moving",
        )
        rig.stop()

        transfers = records(rig, "transfer")
        got = sorted((r["kind"], r["key"], r["outcome"], r["source"]) for r in transfers)
        assert got == sorted(
            [
                ("fetch", "a.bin", "done", "s3"),
                ("stream", "changing.bin", "done", "s3"),
                ("delivery", "changing.bin", "done", "s3"),
                ("url", "a.bin", "done", "cache"),
                ("fetch", "changing.bin", "failed", "s3"),
                ("fetch", "held.bin", "failed", "s3"),
            ]
        ), transfers
        for r in transfers:
            assert r["level"] == "info" and r["job_id"] == "rec", r
            assert isinstance(r["seconds"], float) and r["seconds"] >= 0
            if r["outcome"] == "done":
                assert r["bytes"] == len(data), r
        failed = {r["key"]: r for r in transfers if r["outcome"] == "failed"}
        assert failed["changing.bin"]["code"] == "SourceChanged"
        assert failed["changing.bin"]["error"]
        assert failed["held.bin"]["code"] == "ShuttingDown"

        requests = records(rig, "request")
        uid = os.getuid()
        assert ("POST", "/v1/jobs", 201, uid, "socket") in {
            (r["method"], r["path"], r["status"], r["uid"], r["listener"]) for r in requests
        }
        assert ("GET", "/v1/jobs/{JobId}/objects/{Key}", 200, "url") in {
            (r["method"], r["route"], r["status"], r["listener"]) for r in requests
        }
        assert all(r["level"] == "info" and r["seconds"] >= 0 for r in requests)
    # proxied_daemon has grepped the log for every secret STS issued: none.


def listing(req: Any) -> bool:
    return bool(req.method == "GET" and "list-type=2" in req.query)


def test_a_bucket_in_another_region_fails_at_registration(
    local_aws: LocalAws, bucket: TestBucket, short_dir: Path
) -> None:
    """S3 answers the registration's one LIST 301 PermanentRedirect (the UriPath
    names the wrong region): 400 InvalidUriPath naming the bucket's region, at
    registration, not at the first fetch. A right answer is remembered per
    bucket: the next job on it costs no request (docs/design.md, Socket API)."""
    bucket.put("in/a.bin", b"a")
    with proxied_daemon(local_aws, short_dir / "d", api={"socket": short_dir / "s.sock"}) as rig:
        client = Client(rig.socket, timeout=60)
        redirect = Fault("redirect", listing, times=1)
        rig.s3.add(redirect)
        where = uri(bucket.name, "in/")
        with pytest.raises(S3feedError) as wrong:
            client.create_job("wrong", local_aws.acme_tenant, where, local_aws.acme_role_arn)
        assert (wrong.value.status, wrong.value.code) == (400, "InvalidUriPath")
        assert "S3 says the bucket is in us-west-2" in wrong.value.message
        assert redirect.fired == 1
        assert client.list_jobs() == []

        lists = Fault("latency", listing, times=None, seconds=0)  # counts the listings
        rig.s3.add(lists)
        for job in ("right-1", "right-2"):
            client.create_job(job, local_aws.acme_tenant, where, local_aws.acme_role_arn)
        assert lists.fired == 1, "the second job on the bucket is not checked again"
        assert client.fetch("right-2", "a.bin", wait=True)["State"] == "done"
