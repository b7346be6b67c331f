"""Who may create, use and delete a job (docs/design.md, Roles and isolation).

Clients of other uids are real processes (setpriv, as root) with the
supplementary groups each test gives them: the daemon learns uid and groups
from the kernel (SO_PEERCRED, SO_PEERGROUPS), never from the request.
"""

from __future__ import annotations

import grp
import os
import subprocess
from typing import Any

import pytest
from harness import ACME_ROLE, ACME_URI, Harness, request_as

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run clients as other uids")

CONTROLLERS = "s3feed-test-ctl"
AGENT_UID = 61001  # the job agent: a member of CONTROLLERS
ENCODER_UID = 61002  # named in the job's EncoderUids
STRANGER_UID = 61003  # in the same groups as the encoder, named nowhere
GID = 61000


def _controllers_gid() -> int:
    subprocess.run(["groupadd", "-f", CONTROLLERS], check=True)
    return grp.getgrnam(CONTROLLERS).gr_gid


def _job_body(job_id: str = "job-1", **extra: Any) -> dict[str, Any]:
    source = {"Provider": "AmazonS3", "UriPath": ACME_URI, "RoleArnToAssume": ACME_ROLE}
    return {"JobId": job_id, "TenantName": "acme-films", "Source": source, **extra}


@pytest.fixture
def api_settings(request: pytest.FixtureRequest) -> dict[str, Any]:
    if request.node.get_closest_marker("controllers") is None:
        return {}
    _controllers_gid()
    return {"controller_groups": (CONTROLLERS,)}


@pytest.mark.controllers
async def test_only_controllers_create_and_delete_jobs(harness: Harness) -> None:
    ctl = _controllers_gid()
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
