"""The `s3feed` command: the daemon (`serve`) and a CLI over its socket API.

    s3feed serve [--config PATH]
    s3feed config check [PATH]
    s3feed job create JOB --tenant T --uri URI --role ARN [--duration S]
    s3feed job list | show JOB | delete JOB
    s3feed ls JOB [PREFIX]
    s3feed fetch JOB KEY            prints the cached file's path
    s3feed cat JOB KEY [--range A-B] > out   (| ffmpeg -i pipe:0)
    s3feed put JOB KEY [FILE|-]      upload an output (ffmpeg ... pipe:1 | s3feed put JOB K -)
    s3feed status
    s3feed trust-policy TENANT

`--json` (anywhere on the line) prints the server's documents as they are,
for scripts; errors are then the JSON error document on stderr. Otherwise an
error is one line on stderr that says what to do. The exit code tells the
class of error (EXIT_CODES, also in `--help`), so a script can retry a 503
and not a 403. Nothing the user can cause prints a traceback: socket errors
and Ctrl-C become a message (`_local_error`), and Ctrl-C during `fetch`
cancels the fetch first (docs/design.md, Socket API: fetch cancel).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import faulthandler
import grp
import http.client
import os
import pwd
import select
import signal
import stat
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson

from .client import Client, S3feedError

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
# which comes without a status.
RETRY_CODES = frozenset(
    {"LimitExceeded", "S3Unavailable", "StsUnavailable", "CredentialsExpired", "ShuttingDown"}
)
CHANGED_CODES = frozenset({"SourceChanged"})

EPILOG = """\
exit codes:
  0    ok
  1    usage: a wrong command line
  3    not found: NoSuchJob, NoSuchKey, NoSuchFetch
  4    denied: AccessDenied, AssumeRoleDenied, Forbidden, or no permission on the socket
  5    temporary, retry: a 503 (S3Unavailable, StsUnavailable, ShuttingDown, ...),
       LimitExceeded, or the daemon restarting (connection refused or closed)
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


def _print_json(doc: Any) -> None:
    sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    raise AssertionError


def _uid(value: str) -> int:
    """A uid, or a user name looked up in the passwd database."""
    if value.isdigit():
        return int(value)
    try:
        return pwd.getpwnam(value).pw_uid
    except KeyError:
        raise argparse.ArgumentTypeError(f"no user {value!r} on this host") from None


def _job_line(job: dict[str, Any]) -> str:
    return (
        f"{job['JobId']}\t{job['TenantName']}\ts3://{job['Bucket']}/{job['Prefix']}\t"
        f"expires {job['CredentialsExpireAt']}\trefreshes {job['Refreshes']}"
    )


def job_create_fields(args: argparse.Namespace) -> dict[str, Any]:
    """Top-level fields of the job body beyond JobId, TenantName and Source;
    an option added to `job create` adds its field here."""
    fields: dict[str, Any] = {}
    if args.encoder_uid:
        fields["EncoderUids"] = sorted(set(args.encoder_uid))
    return fields


def cmd_job(args: argparse.Namespace, client: Client) -> int:
    if args.action == "create":
        doc = client.create_job(
            args.job, args.tenant, args.uri, args.role, args.duration, **job_create_fields(args)
        )
    elif args.action == "list":
        jobs = client.list_jobs()
        if args.json:
            _print_json({"Jobs": jobs})
        else:
            for job in jobs:
                print(_job_line(job))
        return EXIT_OK
    elif args.action == "show":
        doc = client.get_job(args.job)
    else:
        client.delete_job(args.job)
        if not args.json:
            print(f"deleted {args.job}")
        return EXIT_OK
    if args.json or args.action == "show":
        _print_json(doc)
    else:
        print(_job_line(doc))
        for warning in doc.get("Warnings", []):
            print(f"warning: {warning}", file=sys.stderr)
    return EXIT_OK


def cmd_ls(args: argparse.Namespace, client: Client) -> int:
    # One page at a time, printed as it comes: a folder of millions of keys
    # needs no more memory here than in the daemon.
    objects = client.iter_objects(args.job, args.prefix or "", max_keys=args.max_keys)
    if args.json:
        out = sys.stdout
        out.write('{\n  "Objects": [')
        for n, obj in enumerate(objects):
            out.write(("," if n else "") + "\n    " + orjson.dumps(obj).decode())
        out.write("\n  ]\n}\n")
        return EXIT_OK
    for obj in objects:
        print(f"{obj['LastModified']}\t{obj['Size']:>14}\t{obj['Key']}")
    return EXIT_OK


def _progress_line(doc: dict[str, Any]) -> str:
    done, size, rate = doc["BytesDone"], doc.get("SizeBytes") or 0, doc.get("BytesPerSecond") or 0
    width = 30
    filled = int(width * done / size) if size else 0
    eta = f"{(size - done) / rate:5.0f}s" if rate and size else "    ?"
    return (
        f"\r[{'#' * filled}{'.' * (width - filled)}] {_human(done)} / {_human(size)} "
        f"{_human(rate)}/s ETA {eta}"
    )


@contextlib.contextmanager
def _sigint_deferred() -> Iterator[list[int]]:
    """Hold a first Ctrl-C until the block ends (the list then holds it); a
    second one interrupts at once. The fetch is started in such a block: a
    Ctrl-C before its FetchId is known would leave it running."""
    held: list[int] = []

    def hold(signum: int, frame: object) -> None:
        if held:
            raise KeyboardInterrupt
        held.append(signum)

    previous = signal.signal(signal.SIGINT, hold)
    try:
        yield held
    finally:
        signal.signal(signal.SIGINT, previous)


def cmd_fetch(args: argparse.Namespace, client: Client) -> int:
    live = sys.stderr.isatty() and not args.json
    fetch_id = None
    try:
        with _sigint_deferred() as held:
            doc = client.fetch(args.job, args.key, wait=False)
            fetch_id = doc["FetchId"]
        if held:
            raise KeyboardInterrupt
        delay = 0.02
        while doc["State"] in ("queued", "running"):
            if live:
                sys.stderr.write(_progress_line(doc))
                sys.stderr.flush()
            time.sleep(delay)
            delay = min(delay * 2, 0.2 if live else 0.5)
            doc = client.get_fetch(args.job, fetch_id)
    except KeyboardInterrupt:
        if live:
            sys.stderr.write("\n")
        if fetch_id is None:  # a second Ctrl-C before the daemon answered
            raise Interrupted(f"interrupted; the fetch of {args.key} may go on") from None
        # Only this fetch's wait ends: the daemon goes on downloading while
        # another fetch waits for the same object.
        client.cancel_fetch(args.job, fetch_id)
        raise Interrupted(f"fetch {fetch_id} of {args.key} cancelled") from None
    if live:
        sys.stderr.write(_progress_line(doc) + "\n")
    if doc["State"] != "done":
        err = doc.get("Error") or {"Code": "Cancelled", "Message": f"the fetch {doc['State']}"}
        raise S3feedError(0, err["Code"], err["Message"], doc, {"Error": err, "Fetch": doc})
    if args.json:
        _print_json(doc)
    else:
        print(doc["Path"])
    return EXIT_OK


def _passable(fd: int) -> bool:
    """A file, pipe or socket: the daemon can write into it itself."""
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return False
    return stat.S_ISREG(mode) or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


def cmd_cat(args: argparse.Namespace, client: Client) -> int:
    sys.stdout.flush()
    out = sys.stdout.fileno()
    try:
        if _passable(out) and not args.through_socket:
            # The daemon writes into our stdout itself (docs/design.md, Socket
            # API: deliveries); we leave it alone until the answer.
            try:
                client.deliver(args.job, args.key, out, args.range)
            except S3feedError as exc:
                if exc.code != "OutputClosed":
                    raise
                # the reader (e.g. ffprobe) had enough, as below
            return EXIT_OK
        client.copy_object(args.job, args.key, out, args.range)
    except BrokenPipeError:  # the reader (e.g. ffprobe) had enough
        # Keep Python's exit flush from failing on the closed pipe.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return EXIT_OK


def cmd_put(args: argparse.Namespace, client: Client) -> int:
    show = sys.stderr.isatty() and not args.json
    started = time.monotonic()

    def progress(sent: int) -> None:
        if show:
            rate = sent / max(1e-3, time.monotonic() - started)
            sys.stderr.write(f"\r{args.key}: {_human(sent)} sent, {_human(rate)}/s  ")
            sys.stderr.flush()

    if args.file in (None, "-"):
        doc = client.put(args.job, args.key, sys.stdin.buffer.fileno(),
                         content_type=args.content_type, progress=progress)  # fmt: skip
    else:
        try:
            f = open(args.file, "rb")  # noqa: SIM115
        except OSError as exc:
            raise CliError(
                "Usage", f"cannot read {args.file}: {exc.strerror}", EXIT_USAGE
            ) from None
        with f:
            doc = client.put(args.job, args.key, f, content_type=args.content_type,
                             progress=progress)  # fmt: skip
    if show:
        sys.stderr.write("\n")
    if args.json:
        _print_json(doc)
    else:
        algorithm, value = next(iter(doc["Checksum"].items()), ("", ""))
        print(f"s3://{doc['Bucket']}/{doc['Key']}\t{doc['Size']}\t{doc['ETag']}\t"
              f"{algorithm} {value}".rstrip())  # fmt: skip
    return EXIT_OK


def cmd_status(args: argparse.Namespace, client: Client) -> int:
    health = client.health()
    if args.json:
        _print_json(health)
        return EXIT_OK
    print(f"principal: {health.get('Principal')}")
    print(f"jobs: {health['Jobs']}  transfers: {health['Transfers']}")
    print(f"cache: {_human(health['CacheSizeBytes'])} of {_human(health['CacheCapacityBytes'])}")
    return EXIT_OK


def cmd_trust_policy(args: argparse.Namespace, client: Client) -> int:
    _print_json(client.trust_policy(args.tenant))
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    import asyncio

    import uvloop

    from .config import ConfigError, load_config
    from .logs import setup_logging
    from .server import serve

    # The watchdog kills a stuck daemon with SIGABRT: print where the loop was.
    faulthandler.enable()
    setup_logging(args.log_level)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"s3feed: bad configuration: {exc}", file=sys.stderr)
        return 2
    if args.socket:
        from dataclasses import replace

        config = replace(config, api=replace(config.api, socket=Path(args.socket)))
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(serve(config, args.config))


def cmd_config_check(args: argparse.Namespace) -> int:
    from .config import ConfigError, load_config

    try:
        load_config(args.path)
    except ConfigError as exc:
        raise CliError("InvalidConfig", str(exc), EXIT_ERROR) from None
    if args.json:
        _print_json({"Path": str(args.path), "Valid": True})
    else:
        print(f"{args.path}: ok")
    return EXIT_OK


class _Parser(argparse.ArgumentParser):
    """Usage errors exit 1 (EXIT_USAGE), as one line, in JSON under --json."""

    def error(self, message: str) -> Any:
        raise CliError("Usage", f"{message} (see {self.prog} --help)", EXIT_USAGE)


class _Version(argparse.Action):
    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, help="print the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        from . import __version__  # read only when asked: it costs start-up time

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

    def sub_parser(group: Any, name: str, help: str) -> argparse.ArgumentParser:
        return group.add_parser(  # type: ignore[no-any-return]
            name, help=help, description=help, parents=[common], epilog=EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )  # fmt: skip

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

    ls = sub_parser(sub, "ls", "list objects under a job's folder")
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
    put.add_argument("key", help="the output's key, relative to the destination folder")
    put.add_argument("file", nargs="?", help="the file to upload; - or none: standard input")
    put.add_argument("--content-type", help="the object's Content-Type")
    sub_parser(sub, "status", "the daemon's health and summary")
    t = sub_parser(sub, "trust-policy", "the trust policy a tenant's role needs")
    t.add_argument("tenant", help="the TenantName (the role's sts:ExternalId)")
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
        type=_uid,
        default=[],
        metavar="UID|USER",
        help="a uid (or user name) that may use the job besides you; repeatable",
    )


COMMANDS: dict[str, Callable[[argparse.Namespace, Client], int]] = {
    "job": cmd_job,
    "ls": cmd_ls,
    "fetch": cmd_fetch,
    "cat": cmd_cat,
    "put": cmd_put,
    "status": cmd_status,
    "trust-policy": cmd_trust_policy,
}


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


def _local_error(exc: BaseException, sock: str) -> CliError:
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
    if isinstance(exc, ConnectionError | http.client.IncompleteRead | http.client.BadStatusLine):
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


def _stdout_closed() -> bool:
    """stdout is a pipe whose reader is gone (not the daemon's socket)."""
    try:
        poll = select.poll()
        poll.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poll.poll(0))
    except (OSError, ValueError):
        return False


def _report(code: str, message: str, document: Any, as_json: bool) -> None:
    if as_json:
        sys.stderr.write(orjson.dumps(document).decode() + "\n")
    else:
        line = " ".join(message.split())  # one line, whatever the message holds
        sys.stderr.write(f"s3feed: {code}: {line}\n" if code else f"s3feed: {line}\n")


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
        client = Client(args.socket)
        try:
            return COMMANDS[args.command](args, client)
        except KeyboardInterrupt:
            raise Interrupted("interrupted") from None
        except (OSError, http.client.HTTPException) as exc:
            if isinstance(exc, BrokenPipeError) and _stdout_closed():
                # `s3feed ls JOB | head`: the reader had enough, as for `cat`.
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                return EXIT_OK
            raise _local_error(exc, client.socket) from None
    except S3feedError as exc:
        _report(exc.code, exc.message, exc.document, as_json)
        return exit_code(exc.status, exc.code)
    except CliError as exc:
        error = {"Error": {"Code": exc.code, "Message": exc.message}}
        _report("" if exc.code == "Usage" else exc.code, exc.message, error, as_json)
        return exc.exit_code
    except Interrupted as exc:
        _report("", str(exc), {"Error": {"Code": "Interrupted", "Message": str(exc)}}, as_json)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:  # while reporting
        return EXIT_INTERRUPTED
