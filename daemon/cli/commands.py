"""The CLI's subcommands, one function each, over client/blocking.py."""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import json
import os
import pwd
import shlex
import signal
import stat
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

from s3feed.client import Client, Destination, Fetch, Job, S3feedError, Upload
from s3feed.daemon.cli.exits import (
    EXIT_ERROR,
    EXIT_OK,
    EXIT_RETRY,
    EXIT_USAGE,
    CliError,
    Interrupted,
    compact_json,
    exit_code,
    for_cli,
    local_error,
)
from s3feed.daemon.cli.moovcheck import MoovCheck, grow_pipe, pump


def _print_json(doc: Any) -> None:
    sys.stdout.write(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    raise AssertionError


def parse_uid(value: str) -> int:
    """A uid, or a user name looked up in the passwd database."""
    if value.isdigit():
        return int(value)
    try:
        return pwd.getpwnam(value).pw_uid
    except KeyError:
        raise argparse.ArgumentTypeError(f"no user {value!r} on this host") from None


def _job_line(job: Job) -> str:
    return (
        f"{job['JobId']}\t{job['TenantName']}\ts3://{job['Bucket']}/{job['Prefix']}\t"
        f"expires {job['CredentialsExpireAt']}\trefreshes {job['Refreshes']}"
    )


def job_destination(args: argparse.Namespace) -> Destination | None:
    """The job's Destination from `job create`'s options; usage errors for the
    options that mean nothing without one."""
    if args.destination is None:
        given = [
            option
            for option, value in (
                ("--destination-role", args.destination_role),
                ("--sse", args.sse),
                ("--sse-kms-key-id", args.sse_kms_key_id),
            )
            if value is not None
        ]
        if given:
            raise CliError("Usage", f"{given[0]} needs --destination URI", EXIT_USAGE)
        return None
    if args.sse_kms_key_id is not None and args.sse != "aws:kms":
        raise CliError("Usage", "--sse-kms-key-id needs --sse aws:kms", EXIT_USAGE)
    return Destination(
        args.destination,
        role_arn=args.destination_role,
        server_side_encryption=args.sse,
        kms_key_id=args.sse_kms_key_id,
    )


def cmd_job(args: argparse.Namespace, client: Client) -> int:
    if args.action == "create":
        doc = client.create_job(
            args.job,
            args.tenant,
            args.uri,
            args.role,
            args.duration,
            destination=job_destination(args),
            encoder_uids=args.encoder_uid or None,
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
            out.write(("," if n else "") + "\n    " + compact_json(obj))
        out.write("\n  ]\n}\n")
        return EXIT_OK
    for obj in objects:
        size = _human(obj["Size"]) if args.human_readable else str(obj["Size"])
        print(f"{obj['LastModified']}\t{size:>14}\t{obj['Key']}")
    return EXIT_OK


def _progress_line(doc: Fetch) -> str:
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
    deliver = _passable(out) and not args.through_socket
    if _watch_moov(out, args.range):
        return _cat_watched(args, client, out, deliver)
    try:
        if deliver:
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
        _quiet_stdout()
    return EXIT_OK


def _quiet_stdout() -> None:
    # Keep Python's exit flush from failing on the closed pipe.
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _watch_moov(out: int, byte_range: str | None) -> bool:
    """Whether `cat` looks for an MP4/MOV index after its media: for readers
    that cannot seek (anything but a regular file), when the bytes start at 0."""
    if byte_range is not None and byte_range.partition("-")[0].strip() not in ("0",):
        return False
    try:
        return not stat.S_ISREG(os.fstat(out).st_mode)
    except OSError:
        return False


def _cat_watched(args: argparse.Namespace, client: Client, out: int, deliver: bool) -> int:
    """`cat` through a pipe of our own, so that the box headers are seen as
    the bytes pass (daemon/cli/moovcheck.py): the daemon delivers into it (or
    the stream is spliced into it) in a thread, this one moves it on to stdout."""
    source, sink = os.pipe()
    grow_pipe(sink)
    grow_pipe(out)
    failed: list[BaseException] = []

    def feed() -> None:
        try:
            if deliver:
                client.deliver(args.job, args.key, sink, args.range)
            else:
                client.copy_object(args.job, args.key, sink, args.range)
        except BaseException as exc:
            failed.append(exc)
        finally:
            os.close(sink)  # with the daemon's copy closed too: the pipe's end

    def verdict(late: bool) -> None:
        if late:
            command = f"s3feed url {shlex.quote(args.job)} {shlex.quote(args.key)}"
            print(
                f"s3feed: warning: {args.key} is an MP4/MOV with its index (moov) after its "
                f"media (mdat): a reader of a pipe cannot seek back to the media and may get "
                f"no frames; give it the URL of `{command}` instead",
                file=sys.stderr,
                flush=True,
            )

    feeder = threading.Thread(target=feed, name="cat-feed", daemon=True)
    feeder.start()
    reader_left = False
    try:
        pump(source, out, MoovCheck(), verdict)
    except BrokenPipeError:  # the reader (e.g. ffprobe) had enough
        reader_left = True
        _quiet_stdout()
    finally:
        os.close(source)  # the daemon's writes (or the splice) fail now, if any are left
    feeder.join()
    for exc in failed:
        if reader_left and (
            isinstance(exc, BrokenPipeError)
            or (isinstance(exc, S3feedError) and exc.code == "OutputClosed")
        ):
            continue  # it failed because we stopped reading
        raise exc
    return EXIT_OK


def _put_line(doc: Upload) -> str:
    algorithm, value = next(iter(doc["Checksum"].items()), ("", ""))
    return (
        f"s3://{doc['Bucket']}/{doc['Key']}\t{doc['Size']}\t{doc['ETag']}\t"
        f"{algorithm} {value}".rstrip()
    )


def _files_under(top: Path) -> list[Path]:
    """Every regular file under `top` (symbolic links to files too), in name order."""
    found = []
    for root, dirs, files in os.walk(top):
        dirs.sort()
        for name in sorted(files):
            path = Path(root, name)
            if path.is_file():
                found.append(path)
    return found


def _worst(codes: list[int]) -> int:
    """The exit code of a batch: a failure worth retrying (5) only when every
    failure is one, else the highest of the others."""
    return max(codes, key=lambda code: (code != EXIT_RETRY, code), default=EXIT_OK)


def cmd_put_recursive(args: argparse.Namespace, client: Client) -> int:
    """Every file under a directory, `--parallel` uploads at once, each to
    PREFIX + its path under the directory. Content-Type: the daemon's guess from
    the key's extension (docs/design.md, URLs for encoders: Output Content-Type)."""
    import queue
    import threading

    top = Path(args.file or "")
    if not args.file or not top.is_dir():
        raise CliError("Usage", f"--recursive needs a directory, not {args.file!r}", EXIT_USAGE)
    if args.content_type:
        raise CliError(
            "Usage", "--content-type is one type for one file: not with --recursive", EXIT_USAGE
        )
    if args.parallel < 1:
        raise CliError("Usage", "--parallel must be at least 1", EXIT_USAGE)
    prefix = args.key if args.key.endswith("/") or not args.key else args.key + "/"
    files = _files_under(top)
    todo: queue.SimpleQueue[Path | None] = queue.SimpleQueue()
    done: queue.SimpleQueue[tuple[Path, str, Any, S3feedError | OSError | None]] = (
        queue.SimpleQueue()
    )
    for path in files:
        todo.put(path)

    def worker() -> None:
        while (path := todo.get()) is not None:
            key = prefix + path.relative_to(top).as_posix()
            try:
                with path.open("rb") as f:
                    done.put((path, key, client.put(args.job, key, f), None))
            except (S3feedError, OSError) as exc:
                done.put((path, key, None, exc))
            except BaseException as exc:  # a bug: reported by the main thread
                done.put((path, key, None, OSError(str(exc))))

    # Daemon threads: Ctrl-C ends the process at once; an upload whose body it
    # cut off is aborted by the daemon (docs/design.md, CLI).
    workers = [
        threading.Thread(target=worker, daemon=True) for _ in range(min(args.parallel, len(files)))
    ]
    for thread in workers:
        todo.put(None)
        thread.start()
    started = time.monotonic()
    uploaded: list[Any] = []
    failed: list[dict[str, Any]] = []
    codes: list[int] = []
    for _ in files:
        try:
            path, key, doc, error = done.get()
        except KeyboardInterrupt:
            raise Interrupted(
                f"interrupted after {len(uploaded)} of {len(files)} files: an upload cut "
                "off mid-body is aborted (nothing at its key); one sent whole may still land"
            ) from None
        if error is None:
            uploaded.append(doc)
            if not args.json:
                print(_put_line(doc), flush=True)
            continue
        if isinstance(error, S3feedError):
            code, message, exit_ = (
                error.code,
                for_cli(error.code, error.message),
                exit_code(error.status, error.code),
            )
        else:
            local = local_error(error, client.socket)
            code, message, exit_ = local.code, local.message, local.exit_code
        codes.append(exit_)
        failed.append({"File": str(path), "Key": key, "Error": {"Code": code, "Message": message}})
        if not args.json:
            sys.stderr.write(f"s3feed: {path}: {code}: {' '.join(message.split())}\n")
    seconds = time.monotonic() - started
    size = sum(doc["Size"] for doc in uploaded)
    if args.json:
        _print_json({"Uploaded": uploaded, "Failed": failed})
    else:
        summary = (
            f"{len(uploaded)} of {len(files)} files uploaded, {_human(size)} in {seconds:.1f} s"
        )
        print(summary + (f"; {len(failed)} failed" if failed else ""), file=sys.stderr)
    return _worst(codes)


def cmd_put(args: argparse.Namespace, client: Client) -> int:
    if args.recursive:
        return cmd_put_recursive(args, client)
    if args.file and os.path.isdir(args.file):
        raise CliError(
            "Usage",
            f"{args.file} is a directory: upload every file under it with "
            f"`s3feed put {args.job} PREFIX {args.file} --recursive`",
            EXIT_USAGE,
        )
    show = sys.stderr.isatty() and not args.json
    started = time.monotonic()

    def progress(sent: int) -> None:
        if show:
            rate = sent / max(1e-3, time.monotonic() - started)
            sys.stderr.write(f"\r{args.key}: {_human(sent)} sent, {_human(rate)}/s  ")
            sys.stderr.flush()

    if args.file in (None, "-"):
        doc = client.put(
            args.job,
            args.key,
            sys.stdin.buffer.fileno(),
            content_type=args.content_type,
            progress=progress,
        )
    else:
        try:
            f = open(args.file, "rb")  # noqa: SIM115
        except OSError as exc:
            raise CliError(
                "Usage", f"cannot read {args.file}: {exc.strerror}", EXIT_USAGE
            ) from None
        with f:
            doc = client.put(
                args.job, args.key, f, content_type=args.content_type, progress=progress
            )
    if show:
        sys.stderr.write("\n")
    if args.json:
        _print_json(doc)
    else:
        print(_put_line(doc))
    return EXIT_OK


def cmd_status(args: argparse.Namespace, client: Client) -> int:
    """Exit 0 when the daemon is ok; degraded (its own credentials broken) is
    the exit of StsUnavailable, 5 (docs/design.md, CLI)."""
    health = client.health()
    ok = health.get("Status") == "ok"
    if args.json:
        _print_json(health)
        return EXIT_OK if ok else EXIT_RETRY
    print(f"status: {health.get('Status')}")
    for problem in health.get("Problems", []):
        print(f"  {problem.get('Code')}: {problem.get('Message')}")
    print(f"principal: {health.get('Principal') or 'unknown'}")
    print(f"jobs: {health['Jobs']}  transfers: {health['Transfers']}")
    print(f"cache: {_human(health['CacheSizeBytes'])} of {_human(health['CacheCapacityBytes'])}")
    return EXIT_OK if ok else EXIT_RETRY


def cmd_url(args: argparse.Namespace, client: Client) -> int:
    """A URL only this job's uids can open (docs/design.md, URLs for encoders)."""
    listen = client.health().get("HttpListen")
    if not listen:
        raise CliError(
            "UrlsOff",
            'the daemon serves no URLs: set [api] http_listen = "127.0.0.1:7468" in its '
            "config (/etc/s3feed/s3feed.toml) and restart it",
            EXIT_ERROR,
        )
    client.get_job(args.job)  # NoSuchJob (exit 3) here, not at ffmpeg's first request
    route = "outputs" if args.output else "objects"
    path = f"/v1/jobs/{quote(args.job, safe='')}/{route}/{quote(args.key, safe='/')}"
    if args.json:
        _print_json({"Url": f"http://{listen}{path}"})
    else:
        print(f"http://{listen}{path}")
    return EXIT_OK


def cmd_trust_policy(args: argparse.Namespace, client: Client) -> int:
    _print_json(client.trust_policy(args.tenant))
    return EXIT_OK


def cmd_iam_policy(args: argparse.Namespace) -> int:
    """The permissions policy of a customer's role, from the statements the
    daemon's session policies are built of (docs/design.md, Session policy)."""
    from s3feed.auth import CodedError, Outputs, role_policy
    from s3feed.transfer import S3Config, parse_uri_path

    if args.source is None and args.destination is None:
        raise CliError(
            "Usage", "iam-policy needs --source URI, --destination URI or both", EXIT_USAGE
        )
    for key in args.kms_key:
        parts = key.split(":", 5)
        if (
            len(parts) != 6
            or parts[0] != "arn"
            or parts[2] != "kms"
            or not (parts[5].startswith("key/") and len(parts[5]) > 4)
        ):
            raise CliError(
                "Usage",
                f"--kms-key {key!r} is not a KMS key ARN (arn:aws:kms:REGION:ACCOUNT:key/ID; "
                "an alias ARN cannot name a key in a policy's Resource)",
                EXIT_USAGE,
            )
    s3 = S3Config()
    try:
        source = parse_uri_path(args.source, s3) if args.source is not None else None
        dest = parse_uri_path(args.destination, s3) if args.destination is not None else None
    except CodedError as exc:  # InvalidUriPath: its message names the accepted forms
        raise CliError(exc.code, exc.message, exit_code(400, exc.code)) from None
    outputs = Outputs(dest, kms=bool(args.kms_key)) if dest is not None else None
    _print_json(role_policy(source, outputs=outputs, kms_keys=tuple(args.kms_key)))
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    import asyncio

    import uvloop

    from s3feed.daemon import allocator
    from s3feed.daemon.config import ConfigError, load_config
    from s3feed.daemon.logs import setup_logging
    from s3feed.daemon.service import serve

    allocator.tune()  # process-wide: docs/design.md, Performance notes (Allocator)
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
    from s3feed.daemon.config import ConfigError, load_config

    try:
        load_config(args.path)
    except ConfigError as exc:
        raise CliError("InvalidConfig", str(exc), EXIT_ERROR) from None
    if args.json:
        _print_json({"Path": str(args.path), "Valid": True})
    else:
        print(f"{args.path}: ok")
    return EXIT_OK
