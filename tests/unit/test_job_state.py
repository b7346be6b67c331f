"""daemon/jobs/state.py: the job definitions kept in the state directory."""

from __future__ import annotations

import json
import logging
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from s3feed.daemon.jobs.request import parse_job_request
from s3feed.daemon.jobs.state import JobState, request_body
from s3feed.transfer import S3Config

S3 = S3Config()
WHEN = datetime(2026, 12, 6, 13, 0, tzinfo=UTC)
BODY: dict[str, Any] = {
    "JobId": "job-8841",
    "TenantName": "acme-films",
    "Source": {
        "Provider": "AmazonS3",
        "UriPath": "https://acme-sources.s3.eu-west-1.amazonaws.com/masters/",
        "RoleArnToAssume": "arn:aws:iam::272758771130:role/example-role-name",
        "RoleSessionDurationInSeconds": 7200,
    },
    "EncoderUids": [2001, 2000],
    "Destination": {
        "Provider": "AmazonS3",
        "UriPath": "https://acme-out.s3.eu-west-1.amazonaws.com/job-8841/",
        "RoleArnToAssume": "arn:aws:iam::272758771130:role/writer",
        "ServerSideEncryption": "aws:kms",
        "SSEKMSKeyId": "alias/renditions",
    },
}


@pytest.mark.parametrize(
    "body",
    [
        BODY,
        {k: v for k, v in BODY.items() if k not in ("Destination", "EncoderUids")},
        {
            **BODY,
            "Destination": {
                "Provider": "AmazonS3",
                "UriPath": "https://acme-out.s3.amazonaws.com/",
            },
        },
        {**BODY, "JobId": ".."},
    ],
)
def test_the_saved_body_parses_to_the_same_request(body: dict[str, Any]) -> None:
    request = parse_job_request(body, S3)
    assert parse_job_request(request_body(request), S3) == request


async def test_saved_jobs_load_back_and_a_removed_one_is_gone(tmp_path: Path) -> None:
    state = JobState(tmp_path / "jobs")
    first = parse_job_request(BODY, S3)
    second = parse_job_request({**BODY, "JobId": "job-2"}, S3)
    await state.save(first, uid=1000, created_at=WHEN)
    await state.save(second, uid=0, created_at=WHEN)
    directory = tmp_path / "jobs"
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert sorted(p.name for p in directory.iterdir()) == ["job-2.json", "job-8841.json"]
    for path in directory.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = {saved.request.job_id: saved for saved in await state.load(S3)}
    assert loaded["job-8841"].request == first and loaded["job-8841"].uid == 1000
    assert loaded["job-8841"].created_at == WHEN
    assert loaded["job-2"].uid == 0
    await state.remove("job-8841")
    await state.remove("job-8841")  # twice: nothing to do
    assert [s.request.job_id for s in await state.load(S3)] == ["job-2"]
    state.close()


async def test_a_file_holds_the_definition_and_nothing_else(tmp_path: Path) -> None:
    state = JobState(tmp_path)
    await state.save(parse_job_request(BODY, S3), uid=1000, created_at=WHEN)
    document = json.loads((tmp_path / "job-8841.json").read_text())
    assert set(document) == {
        "Version",
        "JobId",
        "TenantName",
        "Source",
        "EncoderUids",
        "Destination",
        "CreatorUid",
        "CreatedAt",
    }
    assert set(document["Source"]) == set(BODY["Source"])
    state.close()


async def test_bad_files_are_skipped_on_one_line_each(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = JobState(tmp_path)
    await state.save(parse_job_request(BODY, S3), uid=1000, created_at=WHEN)
    good = json.loads((tmp_path / "job-8841.json").read_text())
    bad = {
        "truncated.json": b'{"Version": 1, "JobId": "trunc',
        "not-object.json": b"[1, 2]",
        "old.json": json.dumps({**good, "Version": 0, "JobId": "old"}).encode(),
        "bad-role.json": json.dumps(
            {**good, "JobId": "bad-role", "Source": {**good["Source"], "RoleArnToAssume": "x"}}
        ).encode(),
        "no-uid.json": json.dumps({k: v for k, v in good.items() if k != "CreatorUid"}).encode(),
        "neg-uid.json": json.dumps({**good, "JobId": "neg-uid", "CreatorUid": -1}).encode(),
        "naive.json": json.dumps(
            {**good, "JobId": "naive", "CreatedAt": "2026-12-06T13:00:00"}
        ).encode(),
        "renamed.json": json.dumps(good).encode(),  # holds job-8841
        "binary.json": b"\xff\xfe\x00",
    }
    for name, data in bad.items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / "half.json.tmp").write_bytes(b"{")  # a write a crash interrupted
    (tmp_path / "README").write_text("not a job")
    caplog.set_level(logging.INFO, logger="s3feed.jobs")
    loaded = await state.load(S3)
    assert [s.request.job_id for s in loaded] == ["job-8841"]
    skipped = [r for r in caplog.records if r.getMessage() == "job state file skipped"]
    assert sorted(Path(r.path).name for r in skipped) == sorted(bad)  # type: ignore[attr-defined]
    assert all(r.exc_info is None and "\n" not in r.error for r in skipped)  # type: ignore[attr-defined]
    assert not (tmp_path / "half.json.tmp").exists()
    assert (tmp_path / "truncated.json").exists(), "kept for the operator"
    state.close()


async def test_without_a_directory_nothing_is_kept(tmp_path: Path) -> None:
    state = JobState(None)
    await state.save(parse_job_request(BODY, S3), uid=1000, created_at=WHEN)
    await state.remove("job-8841")
    assert await state.load(S3) == []
    state.close()


async def test_a_write_that_fails_is_logged_and_the_caller_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    state = JobState(blocker / "jobs")  # under a file: mkdir fails
    await state.save(parse_job_request(BODY, S3), uid=1000, created_at=WHEN)
    assert "may not survive a restart" in caplog.text
    state.close()
