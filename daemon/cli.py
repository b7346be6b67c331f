"""The `s3feed` command: the daemon (`serve`) and a CLI over its socket API.

    s3feed serve [--config PATH]
    s3feed config check [PATH]
    s3feed job create JOB --tenant T --uri URI --role ARN [--duration S]
    s3feed job list | show JOB | delete JOB
    s3feed ls JOB [PREFIX]
    s3feed fetch JOB KEY            prints the cached file's path
    s3feed cat JOB KEY [--range A-B] > out   (| ffmpeg -i pipe:0)
    s3feed status
    s3feed trust-policy TENANT

`--json` prints the server's documents as they are, for scripts. Errors
print the server's code and message on stderr and exit 1 (2 for usage).
"""

from __future__ import annotations

import argparse
import faulthandler
import os
import pwd
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from .client import Client, S3feedError


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


def cmd_job(args: argparse.Namespace, client: Client) -> int:
    if args.action == "create":
        doc = client.create_job(
            args.job, args.tenant, args.uri, args.role, args.duration, args.encoder_uid
        )
    elif args.action == "list":
        jobs = client.list_jobs()
        if args.json:
            _print_json({"Jobs": jobs})
        else:
            for job in jobs:
                print(_job_line(job))
        return 0
    elif args.action == "show":
        doc = client.get_job(args.job)
    else:
        client.delete_job(args.job)
        if not args.json:
            print(f"deleted {args.job}")
        return 0
    if args.json or args.action == "show":
        _print_json(doc)
    else:
        print(_job_line(doc))
        for warning in doc.get("Warnings", []):
            print(f"warning: {warning}", file=sys.stderr)
    return 0


def cmd_ls(args: argparse.Namespace, client: Client) -> int:
    objects = client.list_objects(args.job, args.prefix or "")
    if args.json:
        _print_json({"Objects": objects})
    else:
        for obj in objects:
            print(f"{obj['LastModified']}\t{obj['Size']:>14}\t{obj['Key']}")
    return 0


def _progress_line(doc: dict[str, Any]) -> str:
    done, size, rate = doc["BytesDone"], doc.get("SizeBytes") or 0, doc.get("BytesPerSecond") or 0
    width = 30
    filled = int(width * done / size) if size else 0
    eta = f"{(size - done) / rate:5.0f}s" if rate and size else "    ?"
    return (
        f"\r[{'#' * filled}{'.' * (width - filled)}] {_human(done)} / {_human(size)} "
        f"{_human(rate)}/s ETA {eta}"
    )


def cmd_fetch(args: argparse.Namespace, client: Client) -> int:
    live = sys.stderr.isatty() and not args.json
    if not live:
        doc = client.fetch(args.job, args.key, wait=True)
    else:
        doc = client.fetch(args.job, args.key, wait=False)
        while doc["State"] in ("queued", "running"):
            sys.stderr.write(_progress_line(doc))
            sys.stderr.flush()
            time.sleep(0.2)
            doc = client.get_fetch(args.job, doc["FetchId"])
        sys.stderr.write(_progress_line(doc) + "\n")
        if doc["State"] != "done":
            err = doc.get("Error") or {"Code": "FetchFailed", "Message": doc["State"]}
            raise S3feedError(0, err["Code"], err["Message"], doc)
    if args.json:
        _print_json(doc)
    else:
        print(doc["Path"])
    return 0


def cmd_cat(args: argparse.Namespace, client: Client) -> int:
    sys.stdout.flush()
    try:
        client.copy_object(args.job, args.key, sys.stdout.fileno(), args.range)
    except BrokenPipeError:  # the reader (e.g. ffprobe) had enough
        # Keep Python's exit flush from failing on the closed pipe.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def cmd_status(args: argparse.Namespace, client: Client) -> int:
    health = client.health()
    if args.json:
        _print_json(health)
        return 0
    print(f"principal: {health.get('Principal')}")
    print(f"jobs: {health['Jobs']}  transfers: {health['Transfers']}")
    print(f"cache: {_human(health['CacheSizeBytes'])} of {_human(health['CacheCapacityBytes'])}")
    return 0


def cmd_trust_policy(args: argparse.Namespace, client: Client) -> int:
    _print_json(client.trust_policy(args.tenant))
    return 0


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
        print(f"s3feed: {exc}", file=sys.stderr)
        return 1
    print(f"{args.path}: ok")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="s3feed", description="Feeds S3 sources to video encoders.")
    p.add_argument(
        "--socket", help="API socket (default $S3FEED_SOCKET or /run/s3feed/s3feed.sock)"
    )
    p.add_argument("--json", action="store_true", help="print the server's JSON documents")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the daemon")
    s.add_argument("--config", type=Path, help="TOML file (default /etc/s3feed/s3feed.toml)")
    s.add_argument("--log-level", default="INFO")

    c = sub.add_parser("config", help="configuration tools")
    csub = c.add_subparsers(dest="action", required=True)
    cc = csub.add_parser("check", help="validate a configuration file")
    cc.add_argument("path", type=Path, nargs="?", default=Path("/etc/s3feed/s3feed.toml"))

    j = sub.add_parser("job", help="register, list, show, delete jobs")
    jsub = j.add_subparsers(dest="action", required=True)
    jc = jsub.add_parser("create", help="register a job (assumes the role now)")
    jc.add_argument("job")
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
    jsub.add_parser("list", help="jobs of this user")
    for name in ("show", "delete"):
        jsub.add_parser(name).add_argument("job")

    ls = sub.add_parser("ls", help="list objects under a job's folder")
    ls.add_argument("job")
    ls.add_argument("prefix", nargs="?")
    f = sub.add_parser("fetch", help="download an object into the cache; prints its path")
    f.add_argument("job")
    f.add_argument("key")
    cat = sub.add_parser("cat", help="stream an object to stdout, in order")
    cat.add_argument("job")
    cat.add_argument("key")
    cat.add_argument("--range", help="bytes A-B (inclusive), A- or -N")
    sub.add_parser("status", help="the daemon's health and summary")
    t = sub.add_parser("trust-policy", help="the trust policy a tenant's role needs")
    t.add_argument("tenant")
    return p


COMMANDS = {
    "job": cmd_job,
    "ls": cmd_ls,
    "fetch": cmd_fetch,
    "cat": cmd_cat,
    "status": cmd_status,
    "trust-policy": cmd_trust_policy,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return cmd_serve(args)
    if args.command == "config":
        return cmd_config_check(args)
    client = Client(args.socket)
    try:
        return COMMANDS[args.command](args, client)
    except S3feedError as exc:
        print(f"s3feed: {exc.code}: {exc.message}", file=sys.stderr)
        return 1
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        print(
            f"s3feed: cannot reach the daemon at {client.socket}: {exc.strerror}", file=sys.stderr
        )
        return 1
