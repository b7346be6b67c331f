"""The CLI's subcommands, one function each, over client/blocking.py."""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import fcntl
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

import orjson

from s3feed.client import Client, S3feedError
from s3feed.daemon.cli.exits import EXIT_ERROR, EXIT_OK, EXIT_USAGE, CliError, Interrupted
from s3feed.daemon.cli.moovcheck import MoovCheck, pump


def _print_json(doc: Any) -> None:
    sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")


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
    with contextlib.suppress(OSError):  # capped by /proc/sys/fs/pipe-max-size
        fcntl.fcntl(sink, fcntl.F_SETPIPE_SZ, 1024 * 1024)
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


def cmd_put(args: argparse.Namespace, client: Client) -> int:
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
        algorithm, value = next(iter(doc["Checksum"].items()), ("", ""))
        print(
            f"s3://{doc['Bucket']}/{doc['Key']}\t{doc['Size']}\t{doc['ETag']}\t"
            f"{algorithm} {value}".rstrip()
        )
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
