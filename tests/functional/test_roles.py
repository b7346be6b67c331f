"""Who may create, use and delete a job (docs/design.md, Roles and isolation).

Clients of other uids are real processes (setpriv, as root) with the
supplementary groups each test gives them: the daemon learns uid and groups
from the kernel (SO_PEERCRED, SO_PEERGROUPS), never from the request.
"""

from __future__ import annotations

import asyncio
import grp
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import ACME_ROLE, ACME_URI, Harness, request_as

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run clients as other uids")

CONTROLLERS = "s3feed-test-ctl"
ENCODERS = "s3feed-test-enc"  # the cache group: encoder and stranger are both in it
AGENT_UID = 61001  # the job agent: a member of CONTROLLERS
ENCODER_UID = 61002  # named in the job's EncoderUids
STRANGER_UID = 61003  # in the same groups as the encoder, named nowhere
GID = 61000


def _job_body(job_id: str = "job-1", **extra: Any) -> dict[str, Any]:
    source = {"Provider": "AmazonS3", "UriPath": ACME_URI, "RoleArnToAssume": ACME_ROLE}
    return {"JobId": job_id, "TenantName": "acme-films", "Source": source, **extra}


def _group(name: str) -> int:
    subprocess.run(["groupadd", "-f", name], check=True)
    return grp.getgrnam(name).gr_gid


@pytest.fixture
def cache_settings(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    if request.node.get_closest_marker("shared_cache") is None:
        yield {}
        return
    # Reachable by other uids (tmp_path is not): a world-traversable parent.
    parent = Path(tempfile.mkdtemp(prefix="s3feed-cache-", dir="/tmp"))
    os.chmod(parent, 0o755)
    _group(ENCODERS)
    yield {"dir": parent / "cache", "group": ENCODERS}
    shutil.rmtree(parent)


@pytest.fixture
def api_settings(request: pytest.FixtureRequest) -> dict[str, Any]:
    if request.node.get_closest_marker("controllers") is None:
        return {}
    _group(CONTROLLERS)
    return {"controller_groups": (CONTROLLERS,)}


@pytest.mark.controllers
async def test_only_controllers_create_and_delete_jobs(harness: Harness) -> None:
    ctl = _group(CONTROLLERS)
    status, body = await request_as(
        harness.socket, "POST", "/v1/jobs", _job_body(), uid=AGENT_UID, gid=GID
    )
    assert (status, body["Error"]["Code"]) == (403, "Forbidden")
    message = body["Error"]["Message"]
    assert "controller_groups" in message and CONTROLLERS in message, message
    assert (await harness.request("GET", "/v1/jobs")).json == {"Jobs": []}, "nothing was made"

    # A supplementary group counts, as the kernel reports it for the peer.
    status, body = await request_as(
        harness.socket, "POST", "/v1/jobs", _job_body(), uid=AGENT_UID, gid=GID, groups=(ctl,)
    )
    assert status == 201, body
    status, body = await request_as(
        harness.socket, "DELETE", "/v1/jobs/job-1", uid=AGENT_UID, gid=GID
    )
    assert (status, body["Error"]["Code"]) == (403, "Forbidden"), "left the group: no delete"
    status, _ = await request_as(
        harness.socket, "DELETE", "/v1/jobs/job-1", uid=AGENT_UID, gid=GID, groups=(ctl,)
    )
    assert status == 204
    # Root may always.
    assert (await harness.create_job()).status == 201
    assert (await harness.request("DELETE", "/v1/jobs/job-1")).status == 204


async def test_encoder_uids_use_a_job_others_do_not_see_it(harness: Harness) -> None:
    harness.store().put("sources/a.mp4", b"media bytes " * 1000)
    created = await harness.request(
        "POST", "/v1/jobs", _job_body(EncoderUids=[ENCODER_UID, ENCODER_UID + 100, ENCODER_UID])
    )
    assert created.status == 201, created.body
    assert created.json["EncoderUids"] == [ENCODER_UID, ENCODER_UID + 100], "sorted, once each"

    async def as_encoder(method: str, path: str, body: Any = None) -> tuple[int, Any]:
        return await request_as(harness.socket, method, path, body, uid=ENCODER_UID, gid=GID)

    async def as_stranger(method: str, path: str, body: Any = None) -> tuple[int, Any]:
        return await request_as(harness.socket, method, path, body, uid=STRANGER_UID, gid=GID)

    status, doc = await as_encoder("GET", "/v1/jobs/job-1")
    assert (status, doc["JobId"]) == (200, "job-1")
    status, listed = await as_encoder("GET", "/v1/jobs")
    assert [j["JobId"] for j in listed["Jobs"]] == ["job-1"]
    status, objects = await as_encoder("GET", "/v1/jobs/job-1/objects")
    assert [o["Key"] for o in objects["Objects"]] == ["a.mp4"]
    status, length = await as_encoder("GET", "/v1/jobs/job-1/objects/a.mp4")
    assert (status, length) == (200, 12000)
    status, fetch = await as_encoder("POST", "/v1/jobs/job-1/fetches?wait=true", {"Key": "a.mp4"})
    assert (status, fetch["State"]) == (200, "done"), fetch
    status, body = await as_encoder("DELETE", "/v1/jobs/job-1")
    assert (status, body["Error"]["Code"]) == (403, "Forbidden"), "encoders may not delete"
    assert "only its creator" in body["Error"]["Message"]

    for method, path, body in [
        ("GET", "/v1/jobs/job-1", None),
        ("GET", "/v1/jobs/job-1/objects", None),
        ("GET", "/v1/jobs/job-1/objects/a.mp4", None),
        ("POST", "/v1/jobs/job-1/fetches", {"Key": "a.mp4"}),
        ("GET", "/v1/jobs/job-1/fetches/c1", None),
        ("DELETE", "/v1/jobs/job-1", None),
    ]:
        status, answer = await as_stranger(method, path, body)
        assert (status, answer["Error"]["Code"]) == (404, "NoSuchJob"), (method, path)
    assert await as_stranger("GET", "/v1/jobs") == (200, {"Jobs": []})
    assert (await harness.request("GET", "/v1/jobs/job-1")).status == 200, "still there"


@pytest.mark.parametrize(
    "value",
    [
        "61002",
        [61002, "61003"],
        [True],
        [-1],
        [4294967295],
        [1.5],
        list(range(65)),
    ],
)
async def test_bad_encoder_uids_are_refused(harness: Harness, value: Any) -> None:
    answer = await harness.request("POST", "/v1/jobs", _job_body(EncoderUids=value))
    assert (answer.status, answer.code) == (400, "InvalidRequest")
    assert "EncoderUids" in answer.json["Error"]["Message"]
    assert (await harness.request("GET", "/v1/jobs")).json == {"Jobs": []}


async def test_sixty_four_encoder_uids_are_allowed(harness: Harness) -> None:
    uids = list(range(70000, 70064))
    answer = await harness.request("POST", "/v1/jobs", _job_body(EncoderUids=uids))
    assert answer.status == 201, answer.body
    assert answer.json["EncoderUids"] == uids


async def _open_as(uid: int, gid: int, path: str) -> tuple[int, bytes, bytes]:
    """`cat PATH` as uid:gid (that group only): (exit status, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        "setpriv",
        f"--reuid={uid}",
        f"--regid={gid}",
        "--clear-groups",
        "cat",
        path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(30):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out, err


@pytest.mark.shared_cache
async def test_a_fetched_path_opens_for_the_jobs_uids_only_while_the_job_lives(
    harness: Harness,
) -> None:
    media = os.urandom(300_000)
    harness.store().put("sources/a.mp4", media)
    enc_gid = grp.getgrnam(ENCODERS).gr_gid
    body = _job_body(EncoderUids=[ENCODER_UID])
    assert (await harness.request("POST", "/v1/jobs", body)).status == 201
    status, fetch = await request_as(
        harness.socket,
        "POST",
        "/v1/jobs/job-1/fetches?wait=true",
        {"Key": "a.mp4"},
        uid=ENCODER_UID,
        gid=enc_gid,
    )
    assert status == 200, fetch
    path = fetch["Path"]
    assert await _open_as(ENCODER_UID, enc_gid, path) == (0, media, b"")
    code, _, err = await _open_as(STRANGER_UID, enc_gid, path)
    assert code != 0 and b"Permission denied" in err, "same group, knows the path: EACCES"

    # A second job of another uid holding the same file does not keep the encoder in.
    body2 = _job_body("job-2", EncoderUids=[STRANGER_UID])
    assert (await harness.request("POST", "/v1/jobs", body2)).status == 201
    again = await harness.request("POST", "/v1/jobs/job-2/fetches?wait=true", {"Key": "a.mp4"})
    assert again.json["Path"] == path, "one cache entry"
    assert (await _open_as(STRANGER_UID, enc_gid, path))[0] == 0

    assert (await harness.request("DELETE", "/v1/jobs/job-1")).status == 204
    code, _, err = await _open_as(ENCODER_UID, enc_gid, path)
    assert code != 0 and b"Permission denied" in err, "its job ended: no more access"
    assert await _open_as(STRANGER_UID, enc_gid, path) == (0, media, b"")
    assert (await harness.request("DELETE", "/v1/jobs/job-2")).status == 204
    assert (await _open_as(STRANGER_UID, enc_gid, path))[0] != 0
