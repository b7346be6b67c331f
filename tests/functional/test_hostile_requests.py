"""Malformed and hostile requests: each gets its code, and the daemon keeps serving."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
from harness import ACME_ROLE, ACME_URI, Harness, request_as

GOOD_SOURCE = {"Provider": "AmazonS3", "UriPath": ACME_URI, "RoleArnToAssume": ACME_ROLE}


def job(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"JobId": "j", "TenantName": "acme-films", "Source": dict(GOOD_SOURCE)}
    for name, value in changes.items():
        if name.startswith("Source_"):
            field = name.removeprefix("Source_")
            if value is DROP:
                del body["Source"][field]
            else:
                body["Source"][field] = value
        elif value is DROP:
            del body[name]
        else:
            body[name] = value
    return body


DROP = object()

# (label, raw body, expected status, expected code)
CREATE_CASES: list[tuple[str, bytes, int, str]] = [
    ("not json", b"{nope", 400, "InvalidRequest"),
    ("empty body", b"", 400, "InvalidRequest"),
    ("json array", b"[]", 400, "InvalidRequest"),
    ("json string", b'"job"', 400, "InvalidRequest"),
    ("null", b"null", 400, "InvalidRequest"),
    ("missing JobId", json.dumps(job(JobId=DROP)).encode(), 400, "InvalidRequest"),
    ("missing TenantName", json.dumps(job(TenantName=DROP)).encode(), 400, "InvalidRequest"),
    ("missing Source", json.dumps(job(Source=DROP)).encode(), 400, "InvalidRequest"),
    ("JobId number", json.dumps(job(JobId=7)).encode(), 400, "InvalidRequest"),
    ("TenantName null", json.dumps(job(TenantName=None)).encode(), 400, "InvalidRequest"),
    ("Source string", json.dumps(job(Source="s3://x")).encode(), 400, "InvalidRequest"),
    ("unknown top field", json.dumps(job(Extra=1)).encode(), 400, "InvalidRequest"),
    ("unknown source field", json.dumps(job(Source_Foo=1)).encode(), 400, "InvalidRequest"),
    ("missing Provider", json.dumps(job(Source_Provider=DROP)).encode(), 400, "InvalidRequest"),
    ("missing UriPath", json.dumps(job(Source_UriPath=DROP)).encode(), 400, "InvalidRequest"),
    (
        "missing RoleArn",
        json.dumps(job(Source_RoleArnToAssume=DROP)).encode(),
        400,
        "InvalidRequest",
    ),
    ("JobId with slash", json.dumps(job(JobId="a/b")).encode(), 400, "InvalidRequest"),
    ("JobId empty", json.dumps(job(JobId="")).encode(), 400, "InvalidRequest"),
    ("JobId too long", json.dumps(job(JobId="a" * 129)).encode(), 400, "InvalidRequest"),
    ("JobId unicode", json.dumps(job(JobId="jöb")).encode(), 400, "InvalidRequest"),
    (
        "Provider gcs",
        json.dumps(job(Source_Provider="GoogleCloudStorage")).encode(),
        400,
        "InvalidProvider",
    ),
    ("Provider number", json.dumps(job(Source_Provider=1)).encode(), 400, "InvalidProvider"),
    (
        "UriPath s3 scheme",
        json.dumps(job(Source_UriPath="s3://bucket/p/")).encode(),
        400,
        "InvalidUriPath",
    ),
    (
        "UriPath http",
        json.dumps(job(Source_UriPath="http://b.s3.us-east-1.amazonaws.com/p/")).encode(),
        400,
        "InvalidUriPath",
    ),
    (
        "UriPath other host",
        json.dumps(job(Source_UriPath="https://evil.example.com/p/")).encode(),
        400,
        "InvalidUriPath",
    ),
    (
        "UriPath with port",
        json.dumps(job(Source_UriPath="https://b.s3.us-east-1.amazonaws.com:8443/p/")).encode(),
        400,
        "InvalidUriPath",
    ),
    (
        "UriPath with query",
        json.dumps(job(Source_UriPath="https://b.s3.us-east-1.amazonaws.com/p/?x=1")).encode(),
        400,
        "InvalidUriPath",
    ),
    (
        "UriPath userinfo",
        json.dumps(job(Source_UriPath="https://u:p@b.s3.us-east-1.amazonaws.com/p/")).encode(),
        400,
        "InvalidUriPath",
    ),
    ("UriPath number", json.dumps(job(Source_UriPath=5)).encode(), 400, "InvalidUriPath"),
    (
        "RoleArn garbage",
        json.dumps(job(Source_RoleArnToAssume="role")).encode(),
        400,
        "InvalidRoleArn",
    ),
    (
        "RoleArn user",
        json.dumps(job(Source_RoleArnToAssume="arn:aws:iam::123456789012:user/u")).encode(),
        400,
        "InvalidRoleArn",
    ),
    (
        "RoleArn short account",
        json.dumps(job(Source_RoleArnToAssume="arn:aws:iam::12345:role/r")).encode(),
        400,
        "InvalidRoleArn",
    ),
    (
        "RoleArn partition",
        json.dumps(job(Source_RoleArnToAssume="arn:gcp:iam::123456789012:role/r")).encode(),
        400,
        "InvalidRoleArn",
    ),
    (
        "Duration string",
        json.dumps(job(Source_RoleSessionDurationInSeconds="900")).encode(),
        400,
        "InvalidDuration",
    ),
    (
        "Duration float",
        json.dumps(job(Source_RoleSessionDurationInSeconds=900.5)).encode(),
        400,
        "InvalidDuration",
    ),
    (
        "Duration low",
        json.dumps(job(Source_RoleSessionDurationInSeconds=899)).encode(),
        400,
        "InvalidDuration",
    ),
    (
        "Duration high",
        json.dumps(job(Source_RoleSessionDurationInSeconds=43201)).encode(),
        400,
        "InvalidDuration",
    ),
    (
        "Duration bool",
        json.dumps(job(Source_RoleSessionDurationInSeconds=True)).encode(),
        400,
        "InvalidDuration",
    ),
    ("Tenant one char", json.dumps(job(TenantName="a")).encode(), 400, "InvalidTenantName"),
    ("Tenant space", json.dumps(job(TenantName="acme films")).encode(), 400, "InvalidTenantName"),
    ("Tenant non-ascii", json.dumps(job(TenantName="acmé")).encode(), 400, "InvalidTenantName"),
    ("Tenant too long", json.dumps(job(TenantName="a" * 1225)).encode(), 400, "InvalidTenantName"),
    ("body over 1 MiB", b'{"JobId": "' + b"a" * (1024 * 1024) + b'"}', 413, "RequestTooLarge"),
]


@pytest.mark.parametrize(
    ("label", "raw", "status", "code"), CREATE_CASES, ids=[c[0] for c in CREATE_CASES]
)
async def test_bad_job_requests(
    harness: Harness, label: str, raw: bytes, status: int, code: str
) -> None:
    answer = await harness.request(
        "POST", "/v1/jobs", raw=raw, headers={"Content-Type": "application/json"}
    )
    assert (answer.status, answer.code) == (status, code), answer.body
    assert harness.sts.calls == [], "no STS call for a request that fails validation"
    assert (await harness.request("GET", "/healthz")).status == 200


KEY_CASES = [
    ("dotdot", "../elsewhere/secret.mp4"),
    ("dotdot deeper", "a/../../elsewhere/x"),
    ("encoded dotdot", "%2E%2E/elsewhere/x"),
    ("dot segment", "./a.mp4"),
    ("absolute", "/etc/passwd"),
    ("too long", "k" * 1100),
]


@pytest.mark.parametrize(("label", "key"), KEY_CASES, ids=[c[0] for c in KEY_CASES])
async def test_keys_that_escape_the_folder(harness: Harness, label: str, key: str) -> None:
    await harness.create_job()
    fetch = await harness.request("POST", "/v1/jobs/job-1/fetches", {"Key": key})
    assert (fetch.status, fetch.code) == (400, "InvalidKey"), fetch.body
    listed = await harness.request("GET", f"/v1/jobs/job-1/objects?Prefix={key}")
    assert (listed.status, listed.code) == (400, "InvalidKey"), listed.body


async def test_key_with_nul_and_empty_key(harness: Harness) -> None:
    await harness.create_job()
    for key in ("a\x00b", ""):
        answer = await harness.request("POST", "/v1/jobs/job-1/fetches", {"Key": key})
        assert (answer.status, answer.code) == (400, "InvalidKey")


async def test_bad_fetch_bodies_and_unknown_things(harness: Harness) -> None:
    await harness.create_job()
    cases = [
        ("POST", "/v1/jobs/job-1/fetches", {"Key": 5}, 400, "InvalidRequest"),
        ("POST", "/v1/jobs/job-1/fetches", {"Key": "a", "More": 1}, 400, "InvalidRequest"),
        ("POST", "/v1/jobs/job-1/fetches", ["a"], 400, "InvalidRequest"),
        ("POST", "/v1/jobs/nope/fetches", {"Key": "a"}, 404, "NoSuchJob"),
        ("GET", "/v1/jobs/nope", None, 404, "NoSuchJob"),
        ("DELETE", "/v1/jobs/nope", None, 404, "NoSuchJob"),
        ("GET", "/v1/jobs/nope/objects", None, 404, "NoSuchJob"),
        ("GET", "/v1/jobs/nope/objects/a.mp4", None, 404, "NoSuchJob"),
        ("GET", "/v1/jobs/job-1/fetches/c999", None, 404, "NoSuchFetch"),
        ("GET", "/v1/jobs/job-1/objects/missing.mp4", None, 404, "NoSuchKey"),
        ("GET", "/v1/trust-policy", None, 400, "InvalidTenantName"),
    ]
    for method, path, body, status, code in cases:
        answer = await harness.request(method, path, body)
        assert (answer.status, answer.code) == (status, code), (method, path, answer.body)


async def _as_nobody(socket: str, method: str, path: str) -> tuple[int, dict[str, Any]]:
    return await request_as(socket, method, path)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client as another uid")
async def test_another_uid_cannot_see_or_use_a_job(harness: Harness) -> None:
    harness.store().put("sources/a.mp4", b"secret bytes")
    await harness.create_job()
    for method, path in [
        ("GET", "/v1/jobs/job-1"),
        ("GET", "/v1/jobs/job-1/objects"),
        ("GET", "/v1/jobs/job-1/objects/a.mp4"),
        ("DELETE", "/v1/jobs/job-1"),
    ]:
        status, body = await _as_nobody(harness.socket, method, path)
        assert (status, body["Error"]["Code"]) == (404, "NoSuchJob"), (method, path)
    status, body = await _as_nobody(harness.socket, "GET", "/v1/jobs")
    assert (status, body) == (200, {"Jobs": []})
    assert (await harness.request("GET", "/v1/jobs/job-1")).status == 200, "root still sees it"


async def test_a_range_of_thousands_of_digits_is_ignored_not_a_500(harness: Harness) -> None:
    harness.store().put("sources/a.mp4", b"0123456789")
    await harness.create_job()
    for header in ["bytes=" + "1" * 5000 + "-", "bytes=0-" + "9" * 5000, "bytes=-" + "7" * 5000]:
        answer = await harness.request(
            "GET", "/v1/jobs/job-1/objects/a.mp4", headers={"Range": header}
        )
        assert (answer.status, answer.body) == (200, b"0123456789")
