"""daemon/jobs/destination.py (parsing, what its grants depend on) and daemon/api/outputs.py
(the journal, the recovery session)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from s3feed.auth.clock import SystemClock
from s3feed.auth.observer import NullCredentialObserver
from s3feed.auth.policy import Outputs, abort_policy
from s3feed.auth.validate import parse_role_arn
from s3feed.daemon.api.outputs import UploadJournal, abort_leftovers
from s3feed.daemon.errors import ApiError
from s3feed.daemon.jobs.destination import parse_destination
from s3feed.daemon.jobs.request import parse_job_request
from s3feed.transfer.config import S3Config
from s3feed.transfer.errors import InvalidUriPath
from s3feed.transfer.uri import parse_uri_path
from tests.fakes.sts import FakeSts
from tests.fakes.upload import FakeUploadStore

ROLE = "arn:aws:iam::123456789012:role/src"
OTHER = "arn:aws:iam::123456789012:role/out"
URI = "https://out-bucket.s3.eu-west-1.amazonaws.com/renditions/"


def _dest(**fields: Any) -> Any:
    body = {"Provider": "AmazonS3", "UriPath": URI, **fields}
    source_role = parse_role_arn(ROLE)
    return parse_destination(body, S3Config(), source_role=source_role, source_duration=1800)


def test_defaults_come_from_the_source() -> None:
    d = _dest()
    assert (d.role_arn.arn, d.duration) == (ROLE, 1800)
    assert (d.location.bucket, d.location.prefix) == ("out-bucket", "renditions/")
    assert d.encryption.headers() == {}
    d = _dest(RoleArnToAssume=OTHER, RoleSessionDurationInSeconds=3600)
    assert (d.role_arn.arn, d.duration) == (OTHER, 3600)
    assert d.document()["RoleArnToAssume"] == OTHER


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"Bucket": "x"}, "InvalidRequest"),
        ({"Provider": "GCS"}, "InvalidProvider"),
        ({"RoleArnToAssume": "not-an-arn"}, "InvalidRoleArn"),
        ({"RoleSessionDurationInSeconds": 60}, "InvalidDuration"),
        ({"ServerSideEncryption": "aws:kms:dsse"}, "InvalidRequest"),
        ({"SSEKMSKeyId": "k"}, "InvalidRequest"),  # without aws:kms
        ({"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": "a\nb"}, "InvalidRequest"),
        ({"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": 5}, "InvalidRequest"),
    ],
)
def test_invalid_destinations_use_the_source_codes(fields: dict[str, Any], code: str) -> None:
    with pytest.raises(Exception) as info:
        _dest(**fields)
    assert getattr(info.value, "code", None) == code


def test_uri_path_rules_are_the_source_rules() -> None:
    with pytest.raises(InvalidUriPath):
        _dest(UriPath="http://out-bucket.s3.eu-west-1.amazonaws.com/x/")
    with pytest.raises(ApiError, match=r"missing field 'Destination\.UriPath'"):
        parse_destination(
            {"Provider": "AmazonS3"},
            S3Config(),
            source_role=parse_role_arn(ROLE),
            source_duration=900,
        )


def test_sse_headers() -> None:
    d = _dest(ServerSideEncryption="aws:kms", SSEKMSKeyId="alias/outputs")
    assert d.encryption.headers() == {
        "x-amz-server-side-encryption": "aws:kms",
        "x-amz-server-side-encryption-aws-kms-key-id": "alias/outputs",
    }
    assert d.document()["SSEKMSKeyId"] == "alias/outputs"
    assert _dest(ServerSideEncryption="AES256").encryption.headers() == {
        "x-amz-server-side-encryption": "AES256"
    }


def test_the_grants_are_for_the_destination_folder_and_kms_only_with_sse_kms() -> None:
    d = _dest()
    assert d.outputs == Outputs(d.location, kms=False)
    assert _dest(ServerSideEncryption="AES256").outputs.kms is False
    assert _dest(ServerSideEncryption="aws:kms").outputs.kms is True
    assert _dest(ServerSideEncryption="aws:kms", SSEKMSKeyId="alias/x").outputs.kms is True


def test_the_job_request_carries_its_destination() -> None:
    body = {
        "JobId": "j1",
        "TenantName": "acme",
        "Source": {
            "Provider": "AmazonS3",
            "UriPath": URI.replace("renditions", "in"),
            "RoleArnToAssume": ROLE,
        },
        "Destination": {"Provider": "AmazonS3", "UriPath": URI},
    }
    request = parse_job_request(body, S3Config())
    assert request.destination is not None and request.destination.role_arn == request.role_arn
    assert request.destination.role_arn.arn == ROLE
    with pytest.raises(ApiError, match="must be an object"):
        parse_job_request({**body, "Destination": "s3://x"}, S3Config())


def test_the_journal_survives_a_restart_and_is_written_atomically(tmp_path: Path) -> None:
    path = tmp_path / "uploads.json"
    journal = UploadJournal(path)
    j = journal.for_job(job_id="j1", tenant="acme", role_arn=ROLE, uri=URI)
    j.started("out-bucket", "renditions/a", "u1")
    j.started("out-bucket", "renditions/b", "u2")
    j.ended("out-bucket", "renditions/a", "u1")
    assert [e["UploadId"] for e in UploadJournal(path).entries] == ["u2"]
    assert path.stat().st_mode & 0o777 == 0o600
    assert not (tmp_path / "uploads.json.tmp").exists()
    path.write_text("{not json")
    assert UploadJournal(path).entries == []  # unreadable: a new journal, not a crash


def test_leftovers_are_aborted_with_a_session_of_the_recorded_role(tmp_path: Path) -> None:
    journal = UploadJournal(tmp_path / "uploads.json")
    store = FakeUploadStore("out-bucket")

    async def main() -> int:
        upload_id = await store.create_multipart("renditions/a", {})
        journal.for_job(job_id="j1", tenant="acme", role_arn=ROLE, uri=URI).started(
            "out-bucket", "renditions/a", upload_id
        )
        sts = FakeSts(SystemClock())
        n = await abort_leftovers(
            journal,
            sts=sts,
            s3=S3Config(),
            observer=NullCredentialObserver(),
            make_uploader=lambda location, session: store,
        )
        (call,) = sts.calls
        assert (call.role_arn, call.external_id) == (ROLE, "acme")
        assert json.loads(call.policy) == abort_policy(parse_uri_path(URI, S3Config()))
        return n

    assert asyncio.run(main()) == 1
    assert store.uploads == {} and journal.entries == []


@pytest.mark.parametrize(
    "fields",
    [{"RoleArn": "arn:aws:iam::1:role/x"}, {"Tenant": "a"}, {"UriPath": "s3://out-bucket/"}],
)
def test_a_journal_entry_that_does_not_parse_never_reaches_sts_and_stays(
    tmp_path: Path, fields: dict[str, str]
) -> None:
    # The journal is read from disk: its values are parsed like a request's.
    journal = UploadJournal(tmp_path / "uploads.json")
    entry = {"JobId": "j1", "Tenant": "acme", "RoleArn": ROLE, "UriPath": URI}
    journal.add({**entry, **fields, "Bucket": "out-bucket", "Key": "renditions/a", "UploadId": "u"})
    sts = FakeSts(SystemClock())
    n = asyncio.run(
        abort_leftovers(
            journal,
            sts=sts,
            s3=S3Config(),
            observer=NullCredentialObserver(),
            make_uploader=lambda location, session: FakeUploadStore("out-bucket"),
        )
    )
    assert (n, sts.calls, [e["UploadId"] for e in journal.entries]) == (0, [], ["u"])


def test_destination_is_checked_in_the_documented_order() -> None:
    source = {
        "Provider": "AmazonS3",
        "UriPath": URI.replace("renditions", "in"),
        "RoleArnToAssume": ROLE,
    }
    body = {
        "JobId": "bad id",
        "TenantName": "x",
        "Source": source,
        "Destination": {"Provider": "AmazonS3"},
    }
    # Envelope (a missing Destination field) before the JobId...
    with pytest.raises(ApiError, match=r"Destination\.UriPath"):
        parse_job_request(body, S3Config())
    # ... and the Destination's UriPath before the TenantName.
    body = {**body, "JobId": "ok", "Destination": {"Provider": "AmazonS3", "UriPath": "s3://b/"}}
    with pytest.raises(InvalidUriPath):
        parse_job_request(body, S3Config())


@pytest.mark.parametrize(
    ("source", "destination", "apart"),
    [
        (
            "https://bbb.s3.eu-west-1.amazonaws.com/in/",
            "https://bbb.s3.eu-west-1.amazonaws.com/",
            False,
        ),
        (
            "https://bbb.s3.eu-west-1.amazonaws.com/in/",
            "https://bbb.s3.eu-west-1.amazonaws.com/in/",
            False,
        ),
        (
            "https://bbb.s3.eu-west-1.amazonaws.com/in/",
            "https://bbb.s3.eu-west-1.amazonaws.com/in/out/",
            False,
        ),
        (
            "https://bbb.s3.eu-west-1.amazonaws.com/",
            "https://bbb.s3.eu-west-1.amazonaws.com/out/",
            False,
        ),
        # the same bucket through another region's endpoint is the same bucket
        (
            "https://bbb.s3.eu-west-1.amazonaws.com/in/",
            "https://bbb.s3.us-east-1.amazonaws.com/",
            False,
        ),
        (
            "https://bbb.s3.eu-west-1.amazonaws.com/in/",
            "https://bbb.s3.eu-west-1.amazonaws.com/out/",
            True,
        ),
        (
            "https://bbb.s3.eu-west-1.amazonaws.com/in/",
            "https://bbb.s3.eu-west-1.amazonaws.com/in2/",
            True,
        ),
        (
            "https://bbb.s3.eu-west-1.amazonaws.com/in/",
            "https://ccc.s3.eu-west-1.amazonaws.com/",
            True,
        ),
        (
            "https://bbb.s3.eu-west-1.amazonaws.com/",
            "https://ccc.s3.eu-west-1.amazonaws.com/",
            True,
        ),
    ],
)
def test_a_destination_overlapping_the_source_is_refused_naming_both(
    source: str, destination: str, apart: bool
) -> None:
    body = {
        "JobId": "j1",
        "TenantName": "acme",
        "Source": {"Provider": "AmazonS3", "UriPath": source, "RoleArnToAssume": ROLE},
        "Destination": {"Provider": "AmazonS3", "UriPath": destination},
    }
    if apart:
        assert parse_job_request(body, S3Config()).destination is not None
        return
    with pytest.raises(ApiError) as err:
        parse_job_request(body, S3Config())
    assert err.value.code == "InvalidRequest"
    assert source in err.value.message and destination in err.value.message
