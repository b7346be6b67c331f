"""Keep secrets out of logs, botocore's debug logging included.

botocore and aiobotocore log whole request parameters, headers and response
bodies at DEBUG: an AssumeRole response body carries SecretAccessKey and
SessionToken, every signed request the X-Amz-Security-Token header. Two
guards, installed once at daemon start by `install_secret_redaction()`:

1. The AWS libraries' loggers are set to WARNING, so their debug output is
   off unless an operator turns it on on purpose.
2. Every log record, from any logger, is redacted as it is *created* (a
   wrapped `logging.LogRecordFactory`), so no handler, formatter or test
   capture installed before or after this call ever sees the secret: the
   message is formatted once, secret values are replaced by `***`, and the
   record carries the redacted text with no arguments left to re-format.
   Records whose text has no trigger word are left exactly as they are.

Access key ids are not secret (they appear in CloudTrail) and are kept;
signatures are redacted anyway, since they are useless in a log.
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Any

NOISY_LOGGERS = ("botocore", "aiobotocore", "boto3", "s3transfer", "urllib3")

_TRIGGER = re.compile(r"(?i)secret|token|signature|password")
_XML = re.compile(
    r"(<(SecretAccessKey|SessionToken|Token|Signature)>)[^<]*(</\2>)",
)
_KEY_VALUE = re.compile(
    r"""(?ix)
    (                                   # the name, any spelling botocore uses
      secret[_-]?access[_-]?key | secret[_-]?key | aws[_-]secret[_-]access[_-]key
      | session[_-]?token | security[_-]token | aws[_-]session[_-]token | x-amz-security-token
      | (?<![\w-])token | signature | password
    )
    ( ["']? \s* [:=] \s* b?["']? )      # separator: ': ', '=', "': b'", ...
    ( [^"'\s,;&}<>)\]]+ )               # the value
    """
)
_REDACTED = "***"

_install_lock = threading.Lock()


def redact(text: str) -> str:
    """`text` with the values of secret-looking fields replaced by ***."""
    if not _TRIGGER.search(text):
        return text
    text = _XML.sub(lambda m: f"{m.group(1)}{_REDACTED}{m.group(3)}", text)
    return _KEY_VALUE.sub(lambda m: f"{m.group(1)}{m.group(2)}{_REDACTED}", text)


def _redacting_factory(inner: Any) -> Any:
    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record: logging.LogRecord = inner(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: leave it to logging to report
            return record
        redacted = redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return record

    factory.s3feed_redacting = True  # type: ignore[attr-defined]
    factory.wrapped_factory = inner  # type: ignore[attr-defined]
    return factory


def install_secret_redaction(*, quiet_aws_libraries: bool = True) -> None:
    """Install both guards; safe to call more than once."""
    with _install_lock:
        if quiet_aws_libraries:
            for name in NOISY_LOGGERS:
                logging.getLogger(name).setLevel(logging.WARNING)
        current = logging.getLogRecordFactory()
        if not getattr(current, "s3feed_redacting", False):
            logging.setLogRecordFactory(_redacting_factory(current))


def uninstall_secret_redaction() -> None:
    """For tests: restore the record factory that was wrapped."""
    with _install_lock:
        current = logging.getLogRecordFactory()
        inner = getattr(current, "wrapped_factory", None)
        if inner is not None:
            logging.setLogRecordFactory(inner)
