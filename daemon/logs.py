"""Structured logs: one JSON object per line on stderr, or the journal's native protocol.

Fields passed with `extra=` (job_id, tenant, key, code, ...) become JSON keys,
or upper-case journal fields (JOB_ID, TENANT) when stderr is the journal
(systemd sets JOURNAL_STREAM to stderr's device:inode). A redacting filter
(auth/redact.py) rewrites every record that names a secret as it is created,
and holds botocore's loggers at WARNING.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import sys
from datetime import UTC, datetime
from typing import Any

import orjson

from s3feed.auth import install_secret_redaction

_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}
JOURNAL_SOCKET = "/run/systemd/journal/socket"


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD and v is not None}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            **_fields(record),
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(doc, default=str).decode()


class JournalHandler(logging.Handler):
    """Native journal protocol (datagrams of KEY=value lines) without libsystemd."""

    PRIORITY = {"DEBUG": 7, "INFO": 6, "WARNING": 4, "ERROR": 3, "CRITICAL": 2}

    def __init__(self, path: str = JOURNAL_SOCKET) -> None:
        super().__init__()
        self._path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields = {
                "MESSAGE": record.getMessage(),
                "PRIORITY": str(self.PRIORITY.get(record.levelname, 6)),
                "SYSLOG_IDENTIFIER": "s3feed",
                "LOGGER": record.name,
            }
            for key, value in _fields(record).items():
                fields[re.sub(r"[^A-Z0-9_]", "_", key.upper())] = str(value)
            if record.exc_info:
                fields["MESSAGE"] += "\n" + logging.Formatter().formatException(record.exc_info)
            data = b"".join(_journal_field(k, v) for k, v in fields.items())
            self._sock.sendto(data, self._path)
        except OSError:
            self.handleError(record)

    def close(self) -> None:
        self._sock.close()
        super().close()


def _journal_field(key: str, value: str) -> bytes:
    raw = value.encode()
    if b"\n" in raw:
        return key.encode() + b"\n" + len(raw).to_bytes(8, "little") + raw + b"\n"
    return key.encode() + b"=" + raw + b"\n"


def stderr_is_journal() -> bool:
    stream = os.environ.get("JOURNAL_STREAM", "")
    dev, _, ino = stream.partition(":")
    if not (dev.isdigit() and ino.isdigit()):
        return False
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return st.st_dev == int(dev) and st.st_ino == int(ino)


def setup_logging(level: str = "INFO") -> logging.Handler:
    handler: logging.Handler
    if stderr_is_journal() and os.path.exists(JOURNAL_SOCKET):
        handler = JournalHandler()
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    install_secret_redaction()
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    return handler
