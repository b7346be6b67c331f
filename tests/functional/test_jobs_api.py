"""Jobs, objects, fetches and streams through the real socket, fake S3/STS behind."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from harness import ACME_ROLE, ACME_URI, Harness

from s3feed.auth.policy import Outputs, job_policy, outputs_policy, packed
from s3feed.daemon.jobs.records import TransferState
from s3feed.transfer.config import S3Config
from s3feed.transfer.uri import parse_uri_path


def _blob(n: int, seed: int = 1) -> bytes:
    out = bytearray()
    block = hashlib.sha256(seed.to_bytes(8, "big")).digest()
    while len(out) < n:
        block = hashlib.sha256(block).digest()
        out += block
    return bytes(out[:n])


async def test_job_lifecycle_and_document(harness: Harness) -> None:
    created = await harness.create_job("job-1", RoleSessionDurationInSeconds=900)
    assert created.status == 201
    doc = created.json
    assert doc["Bucket"] == "acme-media"
    assert doc["Prefix"] == "sources/"
    assert doc["Region"] == "eu-west-1"
    assert doc["RoleArn"] == ACME_ROLE
    assert doc["RoleSessionName"] == "s3feed-job-1"
    assert doc["SessionDurationSeconds"] == 900
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", doc["CredentialsExpireAt"])
    assert doc["Refreshes"] == 0 and doc["Warnings"] == []
    call = harness.sts.calls[-1]
    assert (call.external_id, call.session_name, call.duration) == (
        "acme-films",
        "s3feed-job-1",
        900,
    )

    listed = await harness.request("GET", "/v1/jobs")
    assert [j["JobId"] for j in listed.json["Jobs"]] == ["job-1"]
    again = await harness.create_job("job-1")
    assert (again.status, again.code) == (409, "JobExists")

    assert (await harness.request("DELETE", "/v1/jobs/job-1")).status == 204
    gone = await harness.request("GET", "/v1/jobs/job-1")
    assert (gone.status, gone.code) == (404, "NoSuchJob")
    assert (await harness.create_job("job-1")).status == 201, "a JobId is reusable after DELETE"


OUT_URI = "https://acme-out.s3.us-east-1.amazonaws.com/renditions/"
OUT_ROLE = "arn:aws:iam::123456789012:role/acme-writer"


@pytest.mark.parametrize(
    ("destination", "expected"),
    [
        (None, lambda src, out: [(ACME_ROLE, job_policy(src))]),
        (
            {"ServerSideEncryption": "aws:kms"},
            lambda src, out: [(ACME_ROLE, job_policy(src, outputs=Outputs(out, kms=True)))],
        ),
        (
            {"RoleArnToAssume": OUT_ROLE},
            lambda src, out: [
                (ACME_ROLE, job_policy(src)),
                (OUT_ROLE, outputs_policy(Outputs(out, kms=False))),
            ],
        ),
    ],
    ids=["no destination", "destination on the source role", "destination role of its own"],
)
async def test_each_session_sends_the_policy_of_what_it_may_touch(
    harness: Harness, destination: dict[str, Any] | None, expected: Any
) -> None:
    body: dict[str, Any] = {
        "JobId": "job-1",
        "TenantName": "acme-films",
        "Source": {"Provider": "AmazonS3", "UriPath": ACME_URI, "RoleArnToAssume": ACME_ROLE},
    }
    if destination is not None:
        body["Destination"] = {"Provider": "AmazonS3", "UriPath": OUT_URI, **destination}
    created = await harness.request("POST", "/v1/jobs", body)
    assert created.status == 201
    src, out = parse_uri_path(ACME_URI, S3Config()), parse_uri_path(OUT_URI, S3Config())
    sent = [(c.role_arn, c.policy) for c in harness.sts.calls]
    assert sent == [(role, packed(policy)) for role, policy in expected(src, out)]
    assert created.json["SessionPolicy"] == expected(src, out)[0][1]


async def test_no_secret_in_any_answer(harness: Harness) -> None:
    await harness.create_job("job-1")
    answers = [
        await harness.request("GET", "/v1/jobs"),
        await harness.request("GET", "/v1/jobs/job-1"),
        await harness.request("GET", "/metrics"),
        await harness.request("GET", "/healthz"),
    ]
    assert harness.sts.secrets
    for answer in answers:
        for secret in harness.sts.secrets:
            assert secret.encode() not in answer.body


async def test_list_objects_relative_to_the_folder(harness: Harness) -> None:
    store = harness.store()
    store.put("sources/a.mp4", b"a")
    store.put("sources/show/ep1.ts", b"bb")
    store.put("elsewhere/secret.mp4", b"c")
    await harness.create_job()
    listed = await harness.request("GET", "/v1/jobs/job-1/objects")
    assert sorted(o["Key"] for o in listed.json["Objects"]) == ["a.mp4", "show/ep1.ts"]
    sizes = {o["Key"]: o["Size"] for o in listed.json["Objects"]}
    assert sizes == {"a.mp4": 1, "show/ep1.ts": 2}
    only = await harness.request("GET", "/v1/jobs/job-1/objects?Prefix=show/")
    assert [o["Key"] for o in only.json["Objects"]] == ["show/ep1.ts"]


async def test_fetch_with_wait_delivers_the_exact_bytes(harness: Harness) -> None:
    data = _blob(5 * 1024 * 1024 + 123)
    harness.store().put("sources/movie.mp4", data)
    await harness.create_job()
    answer = await harness.request("POST", "/v1/jobs/job-1/fetches?wait=true", {"Key": "movie.mp4"})
    assert answer.status == 200, answer.body
    fetch = answer.json
    assert fetch["State"] == "done"
    assert fetch["BytesDone"] == fetch["SizeBytes"] == len(data)
    assert (
        hashlib.sha256(Path(fetch["Path"]).read_bytes()).digest() == hashlib.sha256(data).digest()
    )
    again = await harness.request("GET", f"/v1/jobs/job-1/fetches/{fetch['FetchId']}")
    assert again.json["Path"] == fetch["Path"]


async def test_fetch_without_wait_answers_202_then_finishes(harness: Harness) -> None:
    data = _blob(3 * 1024 * 1024, seed=2)
    harness.store().put("sources/a.ts", data)
    await harness.create_job()
    answer = await harness.request("POST", "/v1/jobs/job-1/fetches", {"Key": "a.ts"})
    assert answer.status == 202
    assert answer.json["State"] in ("queued", "running")
    job = harness.daemon.registry.get(0, "job-1")
    record = job.transfers[answer.json["FetchId"]]
    await record.finished.wait()
    assert record.state is TransferState.DONE
    done = await harness.request("GET", f"/v1/jobs/job-1/fetches/{answer.json['FetchId']}")
    assert done.json["State"] == "done"
    assert Path(done.json["Path"]).read_bytes() == data


async def test_fetch_errors_known_before_bytes_move(harness: Harness) -> None:
    harness.store().put("sources/locked.mp4", b"x")
    harness.store().deny("sources/locked.mp4")
    await harness.create_job()
    for wait in ("", "?wait=true"):
        missing = await harness.request(
            "POST", f"/v1/jobs/job-1/fetches{wait}", {"Key": "nope.mp4"}
        )
        assert (missing.status, missing.code) == (404, "NoSuchKey")
        denied = await harness.request(
            "POST", f"/v1/jobs/job-1/fetches{wait}", {"Key": "locked.mp4"}
        )
        assert (denied.status, denied.code) == (403, "AccessDenied")


async def test_stream_whole_ranges_and_unsatisfiable(harness: Harness) -> None:
    data = _blob(3 * 1024 * 1024 + 7, seed=3)
    harness.store().put("sources/clip.ts", data)
    await harness.create_job()
    path = "/v1/jobs/job-1/objects/clip.ts"
    whole = await harness.request("GET", path)
    assert whole.status == 200 and whole.body == data
    assert whole.headers["ETag"] == harness.store().objects["sources/clip.ts"].etag
    part = await harness.request("GET", path, headers={"Range": "bytes=1000-2500000"})
    assert part.status == 206 and part.body == data[1000:2500001]
    assert part.headers["Content-Range"] == f"bytes 1000-2500000/{len(data)}"
    tail = await harness.request("GET", path, headers={"Range": "bytes=-10"})
    assert tail.status == 206 and tail.body == data[-10:]
    open_ended = await harness.request("GET", path, headers={"Range": "bytes=3145720-"})
    assert open_ended.body == data[3145720:]
    multi = await harness.request("GET", path, headers={"Range": "bytes=0-1,5-6"})
    assert multi.status == 200 and multi.body == data, "multi-range is ignored"
    beyond = await harness.request("GET", path, headers={"Range": f"bytes={len(data)}-"})
    assert (beyond.status, beyond.code) == (416, "InvalidRange")
    assert beyond.headers["Content-Range"] == f"bytes */{len(data)}"


async def test_stream_of_a_cached_object_comes_from_the_cache(harness: Harness) -> None:
    data = _blob(2 * 1024 * 1024 + 5, seed=4)
    harness.store().put("sources/c.mp4", data)
    await harness.create_job()
    fetched = await harness.request("POST", "/v1/jobs/job-1/fetches?wait=true", {"Key": "c.mp4"})
    assert fetched.status == 200
    sent_before = harness.store().bytes_sent
    streamed = await harness.request("GET", "/v1/jobs/job-1/objects/c.mp4")
    assert streamed.body == data
    assert streamed.headers["X-S3feed-Source"] == "cache"
    assert harness.store().bytes_sent == sent_before, "no byte re-read from S3"
    ranged = await harness.request(
        "GET", "/v1/jobs/job-1/objects/c.mp4", headers={"Range": "bytes=100-199"}
    )
    assert ranged.body == data[100:200]


async def test_a_stream_is_done_before_its_last_byte_is_handed_to_the_reader(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader holding every byte that asks about its job sees the stream done."""
    data = _blob(3 * 1024 * 1024 + 11, seed=5)
    harness.store().put("sources/d.ts", data)
    harness.store().put("sources/empty", b"")
    await harness.create_job()
    job = harness.daemon.registry.all_jobs()[0]
    seen: list[tuple[int, str]] = []  # (bytes handed over so far, stream state then)

    def state() -> str:
        return job.transfers[max(job.transfers)].state.value if job.transfers else "none"

    write, prepare = web.StreamResponse.write, web.StreamResponse.prepare

    async def watched_write(self: web.StreamResponse, chunk: bytes) -> None:
        seen.append((len(chunk), state()))
        await write(self, chunk)

    async def watched_prepare(self: web.StreamResponse, request: web.BaseRequest) -> Any:
        seen.append((0, state()))
        return await prepare(self, request)

    monkeypatch.setattr(web.StreamResponse, "write", watched_write)
    monkeypatch.setattr(web.StreamResponse, "prepare", watched_prepare)
    for key, source in [("d.ts", "s3"), ("empty", "s3"), ("d.ts", "cache")]:
        if source == "cache":
            await harness.request("POST", "/v1/jobs/job-1/fetches?wait=true", {"Key": key})
        seen.clear()
        streamed = await harness.request("GET", f"/v1/jobs/job-1/objects/{key}")
        assert streamed.headers["X-S3feed-Source"] == source
        assert streamed.body == harness.store().objects[f"sources/{key}"].data
        handed = 0
        for n, then in seen:  # done exactly from the call that hands over the last byte
            handed += n
            assert (then == "done") == (handed == len(streamed.body)), (key, source, seen)
        doc = (await harness.request("GET", "/v1/jobs/job-1")).json["Transfers"][-1]
        assert (doc["State"], doc["BytesDone"]) == ("done", len(streamed.body))


async def test_a_cache_file_gone_since_the_lookup_is_streamed_from_s3(harness: Harness) -> None:
    data = _blob(3 * 1024 * 1024, seed=8)
    harness.store().put("sources/gone.ts", data)
    await harness.create_job()
    fetched = await harness.request("POST", "/v1/jobs/job-1/fetches?wait=true", {"Key": "gone.ts"})
    os.unlink(fetched.json["Path"])  # as if evicted between the index lookup and the open
    streamed = await harness.request("GET", "/v1/jobs/job-1/objects/gone.ts")
    assert (streamed.status, streamed.headers["X-S3feed-Source"]) == (200, "s3")
    assert streamed.body == data


async def test_empty_object(harness: Harness) -> None:
    harness.store().put("sources/empty", b"")
    await harness.create_job()
    streamed = await harness.request("GET", "/v1/jobs/job-1/objects/empty")
    assert streamed.status == 200 and streamed.body == b""
    fetched = await harness.request("POST", "/v1/jobs/job-1/fetches?wait=true", {"Key": "empty"})
    assert fetched.status == 200
    assert os.path.getsize(fetched.json["Path"]) == 0


async def test_assume_role_denied_names_role_principal_and_external_id(harness: Harness) -> None:
    harness.sts.trusted_external_ids[ACME_ROLE] = "acme-films"
    denied = await harness.create_job("job-x", tenant="globex")
    assert (denied.status, denied.code) == (403, "AssumeRoleDenied")
    message = denied.json["Error"]["Message"]
    assert ACME_ROLE in message
    assert "globex" in message
    assert harness.sts.identity.arn in message
    assert "trust-policy" in message
    assert (await harness.request("GET", "/v1/jobs/job-x")).status == 404


async def test_trust_policy_and_health(harness: Harness) -> None:
    policy = await harness.request("GET", "/v1/trust-policy?TenantName=acme-films")
    assert policy.status == 200
    statement = policy.json["Statement"][0]
    assert statement["Principal"] == {"AWS": "arn:aws:iam::123456789012:root"}
    assert statement["Action"] == "sts:AssumeRole"
    assert statement["Condition"] == {"StringEquals": {"sts:ExternalId": "acme-films"}}
    bad = await harness.request("GET", "/v1/trust-policy?TenantName=x")
    assert (bad.status, bad.code) == (400, "InvalidTenantName")
    health = await harness.request("GET", "/healthz")
    assert health.json["Principal"] == harness.sts.identity.arn


async def test_keys_with_spaces_plus_percent_and_unicode(harness: Harness) -> None:
    from urllib.parse import quote

    keys = ["show/ep 1 + ü.ts", "100% real.mp4", "a+b/c=d&e.ts", "日本/映像.mxf"]
    for i, key in enumerate(keys):
        harness.store().put(f"sources/{key}", _blob(1000 + i, seed=i))
    await harness.create_job()
    listed = await harness.request("GET", "/v1/jobs/job-1/objects")
    assert sorted(o["Key"] for o in listed.json["Objects"]) == sorted(keys)
    for i, key in enumerate(keys):
        streamed = await harness.request("GET", f"/v1/jobs/job-1/objects/{quote(key)}")
        assert streamed.status == 200 and streamed.body == _blob(1000 + i, seed=i), key
        fetched = await harness.request("POST", "/v1/jobs/job-1/fetches?wait=true", {"Key": key})
        assert Path(fetched.json["Path"]).read_bytes() == _blob(1000 + i, seed=i), key


async def test_jobs_active_follows_create_and_delete_at_once(harness: Harness) -> None:
    def jobs_active(text: bytes) -> float:
        line = next(x for x in text.decode().splitlines() if x.startswith("s3feed_jobs_active "))
        return float(line.split()[1])

    await harness.create_job("a")
    await harness.create_job("b")
    assert jobs_active((await harness.request("GET", "/metrics")).body) == 2
    await harness.request("DELETE", "/v1/jobs/a")
    assert jobs_active((await harness.request("GET", "/metrics")).body) == 1


async def test_each_transfer_is_counted_once_with_its_mode_and_outcome(harness: Harness) -> None:
    def count(text: bytes, mode: str, outcome: str) -> float:
        prefix = f's3feed_transfers_total{{mode="{mode}",outcome="{outcome}"}} '
        return float(next(x for x in text.decode().splitlines() if x.startswith(prefix)).split()[1])

    harness.store().put("sources/a.ts", _blob(2 * 1024 * 1024, seed=9))
    await harness.create_job()
    await harness.request("GET", "/v1/jobs/job-1/objects/a.ts")  # from S3
    await harness.request("POST", "/v1/jobs/job-1/fetches?wait=true", {"Key": "a.ts"})
    await harness.request("GET", "/v1/jobs/job-1/objects/a.ts")  # from the cache
    text = (await harness.request("GET", "/metrics")).body
    assert count(text, "stream", "success") == 2
    assert count(text, "cache", "success") == 1
    served = {
        line.split('"')[1]: float(line.split()[1])
        for line in text.decode().splitlines()
        if line.startswith("s3feed_served_bytes_total{")
    }
    assert served == {"stream": 2 * 2 * 1024 * 1024, "cache": 2 * 1024 * 1024}


async def test_no_room_in_the_cache_is_answered_at_once_without_wait(harness: Harness) -> None:
    budget = harness.daemon.config.cache.max_size
    harness.store().put("sources/huge.mxf", b"\0" * (budget + 1))
    await harness.create_job()
    for wait in ("", "?wait=true"):
        answer = await harness.request("POST", f"/v1/jobs/job-1/fetches{wait}", {"Key": "huge.mxf"})
        assert (answer.status, answer.code) == (507, "InsufficientStorage"), answer.body
    assert harness.store().bytes_sent == 0, "no byte moved"
