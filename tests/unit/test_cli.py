"""daemon/cli/entry.py's pure parts: the exit code of each error class, the one-line
message of each socket error, and the parser (every positional explained,
--json and --socket before or after the subcommand)."""

from __future__ import annotations

import errno
import http.client
from pathlib import Path

import pytest

from s3feed.daemon.cli.entry import build_parser, main
from s3feed.daemon.cli.exits import (
    EXIT_DENIED,
    EXIT_ERROR,
    EXIT_RETRY,
    CliError,
    exit_code,
    local_error,
)


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (404, "NoSuchJob", 3),
        (404, "NoSuchKey", 3),
        (404, "NoSuchFetch", 3),
        (403, "AccessDenied", 4),
        (403, "AssumeRoleDenied", 4),
        (403, "Forbidden", 4),
        (503, "S3Unavailable", 5),
        (503, "SomethingNew", 5),
        (429, "LimitExceeded", 5),
        (0, "StsUnavailable", 5),  # a fetch document's error has no status
        (409, "SourceChanged", 6),
        (400, "InvalidRequest", 7),
        (404, "NotFound", 7),
        (500, "InternalError", 7),
        (502, "ShortRead", 5),  # cut short: the daemon stopped or crashed; a retry gets it whole
        (409, "Cancelled", 7),
    ],
)
def test_exit_code_by_class(status: int, code: str, expected: int) -> None:
    assert exit_code(status, code) == expected


@pytest.mark.parametrize(
    ("exc", "code", "exit", "says"),
    [
        (FileNotFoundError(errno.ENOENT, "x"), "NoDaemon", EXIT_ERROR, "no daemon at /s.sock"),
        (ConnectionRefusedError(errno.ECONNREFUSED, "x"), "NoDaemon", EXIT_RETRY, "retry"),
        (ConnectionResetError(errno.ECONNRESET, "x"), "ConnectionClosed", EXIT_RETRY, "restarting"),
        (BrokenPipeError(errno.EPIPE, "x"), "ConnectionClosed", EXIT_RETRY, "restarting"),
        (http.client.RemoteDisconnected("x"), "ConnectionClosed", EXIT_RETRY, "restarting"),
        (http.client.IncompleteRead(b""), "ConnectionClosed", EXIT_RETRY, "restarting"),
        (TimeoutError(), "Timeout", EXIT_RETRY, "did not answer"),
        (
            OSError(errno.ENOSPC, "No space left on device"),
            "OutputError",
            EXIT_ERROR,
            "cannot write",
        ),
        (
            OSError(errno.EIO, "Input/output error", "f"),
            "OSError",
            EXIT_ERROR,
            "Input/output error (f)",
        ),
    ],
)
def test_socket_errors_are_one_line_with_the_fix(
    exc: BaseException, code: str, exit: int, says: str
) -> None:
    error = local_error(exc, "/s.sock")
    assert (error.code, error.exit_code) == (code, exit)
    assert says in error.message and "\n" not in error.message


def test_permission_denied_names_the_sockets_group(tmp_path: Path) -> None:
    sock = tmp_path / "s.sock"
    sock.touch()
    error = local_error(PermissionError(errno.EACCES, "x"), str(sock))
    assert error.exit_code == EXIT_DENIED
    assert error.message.startswith(f"permission denied on {sock}: ")
    assert "log in again" in error.message
    hidden = local_error(PermissionError(errno.EACCES, "x"), str(tmp_path / "gone" / "s.sock"))
    assert "its directory is closed to this user" in hidden.message


def test_every_positional_has_help_and_options_go_anywhere() -> None:
    parser = build_parser()
    stack = [parser]
    while stack:
        p = stack.pop()
        for action in p._actions:
            if not action.option_strings and action.help is None and not action.choices:
                raise AssertionError(f"{p.prog}: {action.dest} has no help")
            if action.choices and isinstance(action.choices, dict):
                stack.extend(action.choices.values())
    for argv in (
        ["--json", "--socket", "/a", "ls", "j"],
        ["ls", "j", "--json", "--socket", "/a"],
        ["ls", "--socket", "/a", "j", "--json"],
    ):
        args = parser.parse_args(argv)
        assert (args.json, args.socket, args.job) == (True, "/a", "j")
    assert not hasattr(parser.parse_args(["ls", "j"]), "json")  # main() fills the default


def test_usage_errors_raise_not_exit(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(CliError) as e:
        build_parser().parse_args(["job", "show"])
    assert e.value.exit_code == 1
    assert main(["job", "show"]) == 1
    assert capsys.readouterr().err.count("\n") == 1


@pytest.mark.parametrize(
    ("codes", "worst"),
    [([], 0), ([5], 5), ([5, 5], 5), ([5, 3], 3), ([4, 5, 3], 4), ([6, 7, 5], 7), ([1, 5], 1)],
)
def test_a_batch_exits_with_its_worst_failure_retry_only_when_all_are(
    codes: list[int], worst: int
) -> None:
    from s3feed.daemon.cli.commands import _worst

    assert _worst(codes) == worst


def test_messages_name_the_cli_command_not_the_route() -> None:
    from s3feed.daemon.cli.exits import for_cli

    said = "no job 'x' for this caller; list them with GET /v1/jobs"
    assert (
        for_cli("NoSuchJob", said) == "no job 'x' for this caller; list them with `s3feed job list`"
    )
    assert for_cli("NoSuchKey", said) == said  # by code only


def test_iam_policy_prints_the_role_policy(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from s3feed.auth import Outputs, role_policy
    from s3feed.transfer import S3Config, parse_uri_path

    src = "https://acme-sources.s3.eu-west-1.amazonaws.com/masters/"
    dst = "https://acme-out.s3.us-east-1.amazonaws.com/job-1/"
    key = "arn:aws:kms:us-east-1:272758771130:key/abcd"
    argv = ["iam-policy", "--source", src, "--destination", dst, "--kms-key", key]
    assert main(argv) == 0
    expected = role_policy(
        parse_uri_path(src, S3Config()),
        outputs=Outputs(parse_uri_path(dst, S3Config()), kms=True),
        kms_keys=(key,),
    )
    assert json.loads(capsys.readouterr().out) == expected
    assert main(["iam-policy", "--source", src, "--kms-key", "alias/x"]) == 1
    assert "not a KMS key ARN" in capsys.readouterr().err
    assert main(["iam-policy"]) == 1


def test_cat_sends_its_delivery_before_importing_http_client(tmp_path: Path) -> None:
    """`s3feed cat JOB KEY | reader` speaks raw HTTP on the socket (it passes a
    descriptor): its first request leaves without http.client, email or ssl
    loaded (docs/design.md, Performance notes: CLI start-up)."""
    import socket
    import subprocess
    import sys

    path = str(tmp_path / "s.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    code = (
        "import socket, sys\n"
        "def sendall(self, data, *args):\n"
        "    print(sorted(m for m in ('http.client', 'email', 'ssl', 'asyncio')"
        " if m in sys.modules), data.split(b' ')[0].decode(), flush=True)\n"
        "    raise SystemExit(0)\n"
        "socket.socket.sendall = sendall\n"
        "from s3feed.daemon.cli import main\n"
        "main(['--socket', sys.argv[1], 'cat', 'job-1', 'a.mp4'])\n"
    )
    try:
        done = subprocess.run(
            [sys.executable, "-c", code, path], capture_output=True, text=True, timeout=60
        )
    finally:
        listener.close()
    assert done.stdout == "[] POST\n", done.stderr
