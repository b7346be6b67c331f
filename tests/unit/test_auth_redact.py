"""No secret survives into a log record, whatever shape botocore logs it in."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from s3feed.auth.redact import install_secret_redaction, redact, uninstall_secret_redaction

SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
TOKEN = "FwoGZXIvYXdzEJr//////////wEaDM+token/with=chars"

SHAPES = [
    f"<SecretAccessKey>{SECRET}</SecretAccessKey><SessionToken>{TOKEN}</SessionToken>",
    f"Response body:\nb'<Credentials><SecretAccessKey>{SECRET}</SecretAccessKey>'",
    f"{{'SecretAccessKey': '{SECRET}', 'SessionToken': '{TOKEN}'}}",
    f'{{"SecretAccessKey": "{SECRET}", "SessionToken": "{TOKEN}"}}',
    f"headers={{'X-Amz-Security-Token': b'{TOKEN}'}}",
    f"x-amz-security-token:{TOKEN}\nhost:s3",
    f"https://b.s3.amazonaws.com/k?X-Amz-Security-Token={TOKEN}&X-Amz-Signature={SECRET}",
    f"aws_secret_access_key={SECRET} aws_session_token={TOKEN}",
    f"Credentials(secret_key='{SECRET}', token='{TOKEN}')",
    f"Authorization: AWS4-HMAC-SHA256 Credential=ASIAX/20261128/us-east-1/s3/aws4_request, "
    f"SignedHeaders=host, Signature={SECRET}",
]


@pytest.mark.parametrize("text", SHAPES)
def test_redact_removes_secrets(text: str) -> None:
    out = redact(text)
    assert SECRET not in out and TOKEN not in out
    assert "***" in out


def test_text_without_secrets_is_untouched() -> None:
    text = "job j1: credentials refreshed, access key ASIAX, expire at 2026-11-28T13:00:00Z"
    assert redact(text) is text


@pytest.fixture
def redaction() -> Iterator[None]:
    install_secret_redaction(quiet_aws_libraries=False)
    try:
        yield
    finally:
        uninstall_secret_redaction()


def test_records_are_redacted_at_creation(
    redaction: None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    logging.getLogger("botocore.parsers").debug("Response body:\n%r", SHAPES[0].encode())
    logging.getLogger("s3feed.anything").info("params %s", {"SessionToken": TOKEN})
    assert SECRET not in caplog.text and TOKEN not in caplog.text
    assert all(r.args is None for r in caplog.records)


def test_install_is_idempotent_and_quiets_botocore() -> None:
    before = logging.getLogRecordFactory()
    try:
        install_secret_redaction()
        install_secret_redaction()
        assert logging.getLogger("botocore").level == logging.WARNING
        uninstall_secret_redaction()
        assert logging.getLogRecordFactory() is before
    finally:
        logging.setLogRecordFactory(before)
        logging.getLogger("botocore").setLevel(logging.NOTSET)
