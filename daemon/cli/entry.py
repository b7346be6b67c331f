"""The `s3feed` command: the daemon (`serve`) and a CLI over its socket API.

    s3feed serve [--config PATH]
    s3feed config check [PATH]
    s3feed job create JOB --tenant T --uri URI --role ARN [--duration S]
                      [--encoder-uid U]... [--destination URI [--destination-role ARN]
                      [--sse AES256|aws:kms [--sse-kms-key-id ID]]]
    s3feed job list | show JOB | delete JOB
    s3feed ls JOB [PREFIX] [-h]
    s3feed fetch JOB KEY            prints the cached file's path
    s3feed cat JOB KEY [--range A-B] > out   (| ffmpeg -i pipe:0)
    s3feed put JOB KEY [FILE|-]      upload an output (ffmpeg ... pipe:1 | s3feed put JOB K -)
    s3feed put JOB PREFIX DIR --recursive    every file under DIR, in parallel
    s3feed status
    s3feed trust-policy TENANT
    s3feed iam-policy --source URI [--destination URI] [--kms-key ARN]...

`--json` (anywhere on the line) prints the server's documents as they are,
for scripts; errors are then the JSON error document on stderr. Otherwise an
error is one line on stderr that says what to do. The exit code tells the
class of error (EXIT_CODES, also in `--help`), so a script can retry a 503
and not a 403. Nothing the user can cause prints a traceback: socket errors
and Ctrl-C become a message (`local_error`), and Ctrl-C during `fetch`
cancels the fetch first (docs/design.md, Socket API: fetch cancel).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from s3feed.client import Client, S3feedError
from s3feed.daemon.cli.commands import (
    cmd_cat,
    cmd_config_check,
    cmd_fetch,
    cmd_iam_policy,
    cmd_job,
    cmd_ls,
    cmd_put,
    cmd_serve,
    cmd_status,
    cmd_trust_policy,
    cmd_url,
    parse_uid,
)
from s3feed.daemon.cli.exits import (
    EPILOG,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    CliError,
    Interrupted,
    exit_code,
    for_cli,
    http_error,
    local_error,
    report,
    stdout_closed,
)


class _Parser(argparse.ArgumentParser):
    """Usage errors exit 1 (EXIT_USAGE), as one line, in JSON under --json."""

    def error(self, message: str) -> Any:
        raise CliError("Usage", f"{message} (see {self.prog} --help)", EXIT_USAGE)


class _Version(argparse.Action):
    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, help="print the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        from s3feed.daemon import __version__  # read only when asked: it costs start-up time

        print(f"s3feed {__version__}")
        parser.exit(EXIT_OK)


def build_parser() -> argparse.ArgumentParser:
    # --json and --socket are accepted before and after the subcommand: every
    # parser has them, defaulting to "not given" so a later parser does not
    # overwrite what an earlier one read.
    common = _Parser(add_help=False)
    common.add_argument(
        "--socket",
        default=argparse.SUPPRESS,
        help="API socket (default $S3FEED_SOCKET or /run/s3feed/s3feed.sock)",
    )
    common.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print the server's JSON documents (and errors as JSON on stderr)",
    )

    def sub_parser(
        group: Any, name: str, help: str, add_help: bool = True
    ) -> argparse.ArgumentParser:
        return group.add_parser(  # type: ignore[no-any-return]
            name,
            help=help,
            description=help,
            parents=[common],
            epilog=EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
            add_help=add_help,
        )

    p = _Parser(
        prog="s3feed",
        description="Feeds S3 sources to video encoders.",
        parents=[common],
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action=_Version)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub_parser(sub, "serve", "run the daemon")
    s.add_argument("--config", type=Path, help="TOML file (default /etc/s3feed/s3feed.toml)")
    s.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")

    c = sub_parser(sub, "config", "configuration tools")
    csub = c.add_subparsers(dest="action", required=True, metavar="ACTION")
    cc = sub_parser(csub, "check", "validate a configuration file")
    cc.add_argument(
        "path",
        type=Path,
        nargs="?",
        default=Path("/etc/s3feed/s3feed.toml"),
        help="the TOML file (default /etc/s3feed/s3feed.toml)",
    )

    j = sub_parser(sub, "job", "register, list, show, delete jobs")
    jsub = j.add_subparsers(dest="action", required=True, metavar="ACTION")
    add_job_create_arguments(sub_parser(jsub, "create", "register a job (assumes the role now)"))
    sub_parser(jsub, "list", "jobs of this user (root: all)")
    for name, help in (("show", "a job's document"), ("delete", "end a job")):
        sub_parser(jsub, name, help).add_argument("job", help="the JobId")

    # -h is ls's human sizes, as for ls(1) and du(1); --help still helps.
    ls = sub_parser(sub, "ls", "list objects under a job's folder", add_help=False)
    ls.add_argument("--help", action="help", help="show this help message and exit")
    ls.add_argument(
        "-h", "--human-readable", action="store_true", help="sizes as 1.5 MiB, not bytes"
    )
    ls.add_argument("job", help="the JobId")
    ls.add_argument("prefix", nargs="?", help="only keys starting with this (relative to the job)")
    ls.add_argument(
        "--max-keys", type=int, default=1000, help="keys per request to the daemon (1..1000)"
    )
    f = sub_parser(sub, "fetch", "download an object into the cache; prints its path")
    f.add_argument("job", help="the JobId")
    f.add_argument("key", help="the object's key, relative to the job's folder")
    cat = sub_parser(sub, "cat", "stream an object to stdout, in order")
    cat.add_argument("job", help="the JobId")
    cat.add_argument("key", help="the object's key, relative to the job's folder")
    cat.add_argument("--range", help="bytes A-B (inclusive), A- or -N")
    cat.add_argument(
        "--through-socket",
        action="store_true",
        help="copy the bytes through this process (as to a terminal) instead of "
        "passing stdout to the daemon",
    )
    put = sub_parser(sub, "put", "upload an output to the job's Destination")
    put.add_argument("job", help="the JobId")
    put.add_argument(
        "key",
        help="the output's key, relative to the destination folder (with --recursive: "
        "the prefix every file's path under DIR is appended to)",
    )
    put.add_argument(
        "file",
        nargs="?",
        help="the file to upload; - or none: standard input (with --recursive: the directory)",
    )
    put.add_argument(
        "--content-type",
        help="the object's Content-Type (default: from the key's extension, "
        ".m3u8 application/vnd.apple.mpegurl, .ts video/mp2t, ...)",
    )
    put.add_argument(
        "-r",
        "--recursive",
        action="store_true",
        help="upload every file under the directory FILE, several at a time; prints a "
        "summary line and exits with the code of the worst failure",
    )
    put.add_argument(
        "--parallel",
        type=int,
        default=4,
        metavar="N",
        help="with --recursive: uploads at once (default 4; the daemon allows "
        "[limits] uploads_per_uid, 8, per user)",
    )
    u = sub_parser(sub, "url", "the URL of an object (or output) on the loopback listener")
    u.add_argument("job", help="the JobId")
    u.add_argument("key", help="the key, relative to the job's folder (--output: its destination)")
    u.add_argument(
        "--output", action="store_true", help="the URL to PUT an output to (ffmpeg -method PUT)"
    )
    sub_parser(sub, "status", "the daemon's health and summary")
    t = sub_parser(sub, "trust-policy", "the trust policy a tenant's role needs")
    t.add_argument("tenant", help="the TenantName (the role's sts:ExternalId)")
    ip = sub_parser(
        sub,
        "iam-policy",
        "the permissions policy a customer's role needs (beside trust-policy); "
        "printed here, no daemon needed",
    )
    ip.add_argument("--source", metavar="URI", help="the jobs' source UriPath (read, list)")
    ip.add_argument(
        "--destination", metavar="URI", help="the jobs' Destination UriPath (write outputs)"
    )
    ip.add_argument(
        "--kms-key",
        action="append",
        default=[],
        metavar="ARN",
        help="a KMS key ARN (arn:aws:kms:REGION:ACCOUNT:key/ID) that encrypts sources or "
        "outputs (SSE-KMS); allowed only through S3; repeatable. None: no KMS permission",
    )
    return p


def add_job_create_arguments(jc: argparse.ArgumentParser) -> None:
    jc.add_argument("job", help="the JobId: 1-128 letters, digits, '.', '_', '-'")
    jc.add_argument("--tenant", required=True, help="TenantName; sent as sts:ExternalId")
    jc.add_argument(
        "--uri", required=True, help="UriPath, e.g. https://b.s3.eu-west-1.amazonaws.com/in/"
    )
    jc.add_argument("--role", required=True, help="RoleArnToAssume")
    jc.add_argument("--duration", type=int, help="RoleSessionDurationInSeconds (900..43200)")
    jc.add_argument(
        "--encoder-uid",
        action="append",
        type=parse_uid,
        default=[],
        metavar="UID|USER",
        help="a uid (or user name) that may use the job besides you; repeatable",
    )
    jc.add_argument(
        "--destination",
        metavar="URI",
        help="Destination UriPath: where `s3feed put` uploads outputs",
    )
    jc.add_argument(
        "--destination-role",
        metavar="ARN",
        help="the Destination's RoleArnToAssume (default: --role)",
    )
    jc.add_argument(
        "--sse",
        choices=["AES256", "aws:kms"],
        help="the Destination's ServerSideEncryption",
    )
    jc.add_argument(
        "--sse-kms-key-id", metavar="ID", help="the Destination's SSEKMSKeyId (with --sse aws:kms)"
    )


COMMANDS: dict[str, Callable[[argparse.Namespace, Client], int]] = {
    "job": cmd_job,
    "ls": cmd_ls,
    "fetch": cmd_fetch,
    "cat": cmd_cat,
    "put": cmd_put,
    "url": cmd_url,
    "status": cmd_status,
    "trust-policy": cmd_trust_policy,
}


def main(argv: list[str] | None = None) -> int:
    raw = sys.argv[1:] if argv is None else argv
    # Known before parsing, so that a usage error follows it too.
    as_json = "--json" in raw[: raw.index("--")] if "--" in raw else "--json" in raw
    try:
        try:
            args = build_parser().parse_args(raw)
        except KeyboardInterrupt:
            raise Interrupted("interrupted") from None
        args.json = getattr(args, "json", False)
        args.socket = getattr(args, "socket", None)
        if args.command == "serve":
            return cmd_serve(args)
        if args.command == "config":
            return cmd_config_check(args)
        if args.command == "iam-policy":
            return cmd_iam_policy(args)
        client = Client(args.socket)
        try:
            return COMMANDS[args.command](args, client)
        except KeyboardInterrupt:
            raise Interrupted("interrupted") from None
        except Exception as exc:
            if not (isinstance(exc, OSError) or http_error(exc, "HTTPException")):
                raise
            if isinstance(exc, BrokenPipeError) and stdout_closed():
                # `s3feed ls JOB | head`: the reader had enough, as for `cat`.
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                return EXIT_OK
            raise local_error(exc, client.socket) from None
    except S3feedError as exc:
        report(exc.code, for_cli(exc.code, exc.message), exc.document, as_json)
        return exit_code(exc.status, exc.code)
    except CliError as exc:
        error = {"Error": {"Code": exc.code, "Message": exc.message}}
        report("" if exc.code == "Usage" else exc.code, exc.message, error, as_json)
        return exc.exit_code
    except Interrupted as exc:
        report("", str(exc), {"Error": {"Code": "Interrupted", "Message": str(exc)}}, as_json)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:  # while reporting
        return EXIT_INTERRUPTED
