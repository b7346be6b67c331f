"""auth/errors.py: the contract of CodedError, the base of every error tree, and AuthError's."""

from __future__ import annotations

import pytest

from s3feed.auth.errors import (
    AssumeRoleDenied,
    AuthError,
    CodedError,
    InvalidDuration,
    MaxSessionDurationExceeded,
    StsUnavailable,
)


def test_a_coded_error_is_an_internal_error_with_its_message_and_no_ids() -> None:
    exc = CodedError("something broke")
    assert (exc.code, exc.message, str(exc)) == (
        "InternalError",
        "something broke",
        "something broke",
    )
    assert (exc.request_id, exc.host_id) == (None, None)
    assert isinstance(exc, Exception)


def test_the_message_is_str_of_the_error_when_it_changes() -> None:
    # transfer/s3/translate.py appends S3's request id to the message once
    # the error exists: the log, str() and the API must all see the new one.
    exc = CodedError("S3 refused")
    exc.message += " (S3 request id R1)"
    assert str(exc) == exc.message == "S3 refused (S3 request id R1)"
    assert exc.args == ("S3 refused (S3 request id R1)",)
    with pytest.raises(CodedError, match=r"request id R1\)$"):
        raise exc


def test_request_ids_are_per_instance() -> None:
    one, other = CodedError("a"), CodedError("b")
    one.request_id, one.host_id = "R1", "H1"
    assert (other.request_id, other.host_id) == (None, None)
    assert (CodedError.request_id, CodedError.host_id) == (None, None)


def test_a_subclass_names_its_code_and_an_instance_may_choose_one() -> None:
    class Refused(CodedError):
        code = "AccessDenied"

    assert Refused("no").code == "AccessDenied"
    chosen = CodedError("relayed")
    chosen.code = "Cancelled"
    assert (chosen.code, CodedError.code) == ("Cancelled", "InternalError")


@pytest.mark.parametrize(
    ("exc", "code", "sts_code"),
    [
        (AuthError("x"), "InternalError", "InternalError"),
        (AssumeRoleDenied("no", sts_code="AccessDenied"), "AssumeRoleDenied", "AccessDenied"),
        (MaxSessionDurationExceeded("too long"), "InvalidDuration", "InvalidDuration"),
        (StsUnavailable("down", sts_code="NetworkError"), "StsUnavailable", "NetworkError"),
    ],
)
def test_auth_errors_keep_the_api_code_and_what_sts_said(
    exc: AuthError, code: str, sts_code: str
) -> None:
    assert isinstance(exc, CodedError)
    assert (exc.code, exc.sts_code) == (code, sts_code)


def test_max_session_duration_is_an_invalid_duration_and_sts_unavailable_says_if_retryable() -> (
    None
):
    assert isinstance(MaxSessionDurationExceeded("m"), InvalidDuration)
    assert StsUnavailable("down").retryable
    assert not StsUnavailable("own keys refused", retryable=False).retryable
