"""daemon/logs.py: JSON lines with fields, the journal's native format, no secrets."""

from __future__ import annotations

import json
import logging
import socket
from pathlib import Path

from s3feed.daemon.logs import JournalHandler, JsonFormatter


def test_json_lines_carry_the_extra_fields() -> None:
    record = logging.LogRecord(
        "s3feed.jobs", logging.WARNING, __file__, 1, "fetch failed", (), None
    )
    record.job_id = "job-1"
    record.tenant = "acme-films"
    doc = json.loads(JsonFormatter().format(record))
    assert doc["msg"] == "fetch failed" and doc["level"] == "warning"
    assert (doc["job_id"], doc["tenant"]) == ("job-1", "acme-films")
    assert doc["ts"].endswith("+00:00")


def test_journal_datagrams_have_upper_case_fields(tmp_path: Path) -> None:
    path = str(tmp_path / "journal.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as journal:
        journal.bind(path)
        handler = JournalHandler(path)
        try:
            record = logging.LogRecord("s3feed.api", logging.ERROR, __file__, 1, "a\nb", (), None)
            record.job_id = "job-7"
            handler.emit(record)
        finally:
            handler.close()
        data = journal.recv(65536)
    assert b"JOB_ID=job-7\n" in data
    assert b"PRIORITY=3\n" in data
    assert b"SYSLOG_IDENTIFIER=s3feed\n" in data
    # A multi-line message uses the length-prefixed form.
    assert b"MESSAGE\n" + (3).to_bytes(8, "little") + b"a\nb\n" in data
