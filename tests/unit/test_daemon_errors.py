"""daemon/errors.py: every error tree through the one status table.

The contract of the base (auth/errors.py's CodedError) as the API sees it:
every error of ours carries a code the table knows, its message reaches the
caller, S3's request ids reach the document, and anything else is a bug
whose details stay in the log.
"""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
import yaml

from s3feed.auth import errors as auth_errors
from s3feed.auth.errors import (
    AssumeRoleDenied,
    AuthError,
    CodedError,
    CredentialsExpired,
    InvalidInput,
    StsUnavailable,
)
from s3feed.auth.stserrors import policy_refused
from s3feed.daemon import errors as daemon_errors
from s3feed.daemon.errors import (
    STATUS_BY_CODE,
    ApiError,
    FetchFailed,
    OutputClosed,
    describe,
    error_body,
    s3_ids,
)
from s3feed.transfer import errors as transfer_errors
from s3feed.transfer.errors import (
    AccessDenied,
    AclUnsupported,
    Cancelled,
    IncompleteBody,
    InsufficientStorage,
    InvalidContinuationToken,
    InvalidRange,
    ObjectStoreError,
    TransferError,
    TransientError,
)

OPENAPI = Path(__file__).parents[2] / "daemon" / "openapi.yaml"
HIDDEN = "internal error; the daemon's log has the details"


def _tree() -> list[type[CodedError]]:
    found, todo = [], [CodedError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return found


PRODUCT_ERRORS = [
    cls
    for cls in _tree()
    if cls.__module__ in (auth_errors.__name__, transfer_errors.__name__, daemon_errors.__name__)
]


def test_every_error_of_ours_derives_from_one_base() -> None:
    # The trees each module draws in its docstring, and nothing else.
    for module in (auth_errors, transfer_errors, daemon_errors):
        defined = {
            name
            for name, value in vars(module).items()
            if isinstance(value, type)
            and issubclass(value, BaseException)
            and value.__module__ == module.__name__
        }
        assert defined <= {cls.__name__ for cls in PRODUCT_ERRORS}, module.__name__
        assert all(name in (module.__doc__ or "") for name in defined), module.__name__
    assert {AuthError, TransferError, ApiError} <= set(CodedError.__subclasses__())


@pytest.mark.parametrize("cls", PRODUCT_ERRORS, ids=lambda cls: cls.__name__)
def test_every_class_code_is_in_the_one_table(cls: type[CodedError]) -> None:
    assert cls.code in STATUS_BY_CODE


def test_the_table_holds_exactly_the_codes_openapi_documents() -> None:
    spec = yaml.safe_load(OPENAPI.read_text())
    documented = spec["components"]["schemas"]["ErrorDetail"]["properties"]["Code"]["enum"]
    assert sorted(STATUS_BY_CODE) == sorted(documented)


@pytest.mark.parametrize(
    ("exc", "status", "code", "headers"),
    [
        (InvalidInput("bad field"), 400, "InvalidRequest", {}),
        (
            AssumeRoleDenied("the trust policy", sts_code="AccessDenied"),
            403,
            "AssumeRoleDenied",
            {},
        ),
        (StsUnavailable("STS is down"), 503, "StsUnavailable", {}),
        (CredentialsExpired("lapsed"), 503, "CredentialsExpired", {}),
        (InvalidContinuationToken("not ours"), 400, "InvalidRequest", {}),
        (IncompleteBody("100 of 200 bytes"), 400, "IncompleteBody", {}),
        (AccessDenied("S3 refused"), 403, "AccessDenied", {}),
        (InvalidRange("past the end", 42), 416, "InvalidRange", {"Content-Range": "bytes */42"}),
        (TransientError("S3 is throttling", "throttled"), 503, "S3Unavailable", {}),
        (InsufficientStorage("no room"), 507, "InsufficientStorage", {}),
        (Cancelled("the job went away"), 409, "Cancelled", {}),
        # S3 answered something we do not know: its words, still a 500.
        (ObjectStoreError("S3 answered 400 Odd"), 500, "InternalError", {}),
        (AclUnsupported("no POSIX ACLs", errno.EOPNOTSUPP), 500, "InternalError", {}),
        (
            ApiError("LimitExceeded", "slow down", {"Retry-After": "3"}),
            429,
            "LimitExceeded",
            {"Retry-After": "3"},
        ),
        (OutputClosed("the reader closed it after 7 bytes"), 409, "OutputClosed", {}),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else None,
)
def test_an_error_of_ours_answers_its_code_status_and_message(
    exc: CodedError, status: int, code: str, headers: dict[str, str]
) -> None:
    assert describe(exc) == (status, code, exc.message, headers)
    assert STATUS_BY_CODE[code] == status


def test_a_code_the_table_does_not_know_is_an_internal_error_with_its_message() -> None:
    exc = TransferError("odd")
    exc.code = "SomethingNew"
    assert describe(exc) == (500, "InternalError", "odd", {})


@pytest.mark.parametrize("exc", [RuntimeError("secret detail"), OSError(5, "EIO"), KeyError("k")])
def test_anything_else_is_a_bug_whose_details_stay_in_the_log(exc: Exception) -> None:
    assert describe(exc) == (500, "InternalError", HIDDEN, {})
    assert s3_ids(exc) == {}


def test_the_api_refuses_a_code_it_has_no_status_for() -> None:
    with pytest.raises(ValueError, match="unknown error code Nope"):
        ApiError("Nope", "x")


def test_s3_request_ids_reach_the_error_document() -> None:
    exc = AccessDenied("S3 refused (S3 request id R1, host id H1)")
    assert s3_ids(exc) == {}
    exc.request_id, exc.host_id = "R1", "H1"
    assert s3_ids(exc) == {"RequestId": "R1", "HostId": "H1"}
    exc.host_id = None
    assert error_body(exc.code, exc.message, s3_ids(exc)) == {
        "Error": {"Code": "AccessDenied", "Message": exc.message, "RequestId": "R1"}
    }


def test_a_failed_fetch_carries_its_document_and_its_ids() -> None:
    doc = {"FetchId": "f1", "Error": {"Code": "AccessDenied", "Message": "m", "RequestId": "R"}}
    exc = FetchFailed("AccessDenied", "m", doc)
    assert describe(exc) == (403, "AccessDenied", "m", {})
    assert (exc.fetch_document, s3_ids(exc)) == (doc, {"RequestId": "R"})
    assert FetchFailed("NotACode", "m", {}).code == "InternalError"


def test_acl_unsupported_is_still_an_os_error() -> None:
    exc = AclUnsupported("no POSIX ACLs on this file system", errno.ENOTSUP)
    assert isinstance(exc, OSError) and isinstance(exc, TransferError)
    assert (exc.errno, str(exc)) == (errno.ENOTSUP, "no POSIX ACLs on this file system")
    assert AclUnsupported("[cache] group needs ACLs").errno is None


def test_a_refused_session_policy_is_a_400_with_its_own_code() -> None:
    exc = policy_refused("PackedPolicyTooLarge", "Packed policy consumes 120% ...", 1900)
    status, code, message, headers = describe(exc)
    assert (status, code, headers) == (400, "SessionPolicyTooLarge", {})
    assert message == exc.message and "shorter folder" in message
    assert STATUS_BY_CODE["SessionPolicyTooLarge"] == 400
