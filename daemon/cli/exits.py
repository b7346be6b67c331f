"""How the CLI ends: exit codes by class of error (docs/design.md, CLI),
and the one-line message with the fix for a socket error or Ctrl-C."""

from __future__ import annotations

import errno
import grp
import json
import os
import pwd
import select
import sys
from typing import Any

EXIT_OK = 0
EXIT_USAGE = 1
EXIT_NOT_FOUND = 3
EXIT_DENIED = 4
EXIT_RETRY = 5
EXIT_CHANGED = 6
EXIT_ERROR = 7
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it

NOT_FOUND_CODES = frozenset({"NoSuchJob", "NoSuchKey", "NoSuchFetch"})
DENIED_CODES = frozenset({"AccessDenied", "AssumeRoleDenied", "Forbidden"})
# Besides every 503: these are 503s too, named for a fetch document's Error,
# which comes without a status; and ShortRead, the client's name for a stream
# or answer the daemon cut short (it stopped or crashed, or S3 failed after the
# headers: docs/design.md, CLI), which a retry gets whole.
RETRY_CODES = frozenset(
    {
        "LimitExceeded",
        "S3Unavailable",
        "StsUnavailable",
        "CredentialsExpired",
        "ShuttingDown",
        "ShortRead",
    }
)
CHANGED_CODES = frozenset({"SourceChanged"})

EPILOG = """\
exit codes:
  0    ok
  1    usage: a wrong command line
  3    not found: NoSuchJob, NoSuchKey, NoSuchFetch
  4    denied: AccessDenied, AssumeRoleDenied, Forbidden, or no permission on the socket
  5    temporary, retry: a 503 (S3Unavailable, StsUnavailable, ShuttingDown, ...),
       LimitExceeded, the daemon restarting (connection refused or closed), or a
       stream cut short (ShortRead)
  6    the source changed during the transfer (SourceChanged)
  7    any other error (the message says which)
  130  interrupted (Ctrl-C); `fetch` cancels its fetch first

--json may stand anywhere on the line; errors are then printed as the JSON
error document ({"Error": {"Code", "Message", ...}}) on stderr.
"""


def exit_code(status: int, code: str) -> int:
    """The exit code of an error answer: its class, by code then by status."""
    if code in NOT_FOUND_CODES:
        return EXIT_NOT_FOUND
    if code in DENIED_CODES:
        return EXIT_DENIED
    if code in RETRY_CODES or status == 503:
        return EXIT_RETRY
    if code in CHANGED_CODES:
        return EXIT_CHANGED
    return EXIT_ERROR


class CliError(Exception):
    """An error found on this side of the socket: code, one-line message, exit code."""

    def __init__(self, code: str, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.exit_code = exit_code


class Interrupted(Exception):
    """Ctrl-C, after whatever it had to undo; the message says what was undone."""


def _user() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return f"uid {os.getuid()}"


def _permission_fix(sock: str) -> str:
    """What to do when the socket refuses this user: which group, and whether
    only a new login is missing (a group added to a user reaches new logins only)."""
    user = _user()
    try:
        gid = os.stat(sock).st_gid
    except OSError:
        return f"{user} may not reach {sock}: its directory is closed to this user"
    try:
        group = grp.getgrgid(gid)
    except KeyError:
        return f"add {user} to group {gid} and log in again"
    if user in group.gr_mem and gid not in os.getgroups():
        return f"{user} is in group {group.gr_name}, but this session is not: log in again"
    return f"add {user} to group {group.gr_name} and log in again"


def local_error(exc: BaseException, sock: str) -> CliError:
    """An OSError of the socket or of stdout -> one line that says what to do."""
    if isinstance(exc, PermissionError):
        return CliError(
            "PermissionDenied", f"permission denied on {sock}: {_permission_fix(sock)}", EXIT_DENIED
        )
    if isinstance(exc, FileNotFoundError):
        return CliError(
            "NoDaemon",
            f"no daemon at {sock}: start it (systemctl start s3feed.socket) or give its "
            "socket with --socket or S3FEED_SOCKET",
            EXIT_ERROR,
        )
    if isinstance(exc, ConnectionRefusedError):
        return CliError(
            "NoDaemon",
            f"no daemon listens at {sock} (restarting, or stopped?): "
            "retry, or check systemctl status s3feed",
            EXIT_RETRY,
        )
    if isinstance(exc, ConnectionError) or http_error(exc, "IncompleteRead", "BadStatusLine"):
        return CliError(
            "ConnectionClosed",
            f"the daemon at {sock} closed the connection (restarting?): retry",
            EXIT_RETRY,
        )
    if isinstance(exc, TimeoutError):
        return CliError(
            "Timeout", f"the daemon at {sock} did not answer in time: retry", EXIT_RETRY
        )
    if isinstance(exc, OSError):
        what = exc.strerror or str(exc)
        if exc.errno == errno.ENOSPC:
            return CliError("OutputError", f"cannot write the output: {what}", EXIT_ERROR)
        where = f" ({exc.filename})" if exc.filename else ""
        return CliError("OSError", f"{what}{where}", EXIT_ERROR)
    return CliError("Error", str(exc), EXIT_ERROR)


def stdout_closed() -> bool:
    """stdout is a pipe whose reader is gone (not the daemon's socket)."""
    try:
        poll = select.poll()
        poll.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poll.poll(0))
    except (OSError, ValueError):
        return False


# The daemon's messages speak to API callers; where one names an API route,
# a CLI user is told the command instead (by code: the phrase, its CLI form).
# `--json` prints the server's document as it is.
CLI_WORDING = {
    "NoSuchJob": ("list them with GET /v1/jobs", "list them with `s3feed job list`"),
    "JobExists": ("DELETE it first", "delete it first (`s3feed job delete`)"),
    "NoDestination": (
        "register the job with one",
        "register the job with one (`s3feed job create ... --destination URI`)",
    ),
}


def for_cli(code: str, message: str) -> str:
    """`message` as a CLI user reads it: commands where the daemon names routes."""
    api, cli = CLI_WORDING.get(code, ("", ""))
    return message.replace(api, cli) if api else message


def compact_json(doc: Any) -> str:
    """`doc` as compact JSON on one line (`--json` output: error documents,
    `ls` entries)."""
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False)


def report(code: str, message: str, document: Any, as_json: bool) -> None:
    if as_json:
        sys.stderr.write(compact_json(document) + "\n")
    else:
        line = " ".join(message.split())  # one line, whatever the message holds
        sys.stderr.write(f"s3feed: {code}: {line}\n" if code else f"s3feed: {line}\n")


def http_error(exc: BaseException, *names: str) -> bool:
    """Whether `exc` is one of http.client's `names`: http.client is imported
    only by the calls that use it (`s3feed cat` delivers without it: docs/design.md,
    Performance notes: CLI start-up), so none of its errors exist before that."""
    module = sys.modules.get("http.client")
    return module is not None and isinstance(exc, tuple(getattr(module, n) for n in names))
