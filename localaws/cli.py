"""python -m localaws install|start|stop|status|env: the local AWS by hand.

    python -m localaws install [--seaweed]
    python -m localaws start   [--seaweed]
    python -m localaws stop    [--seaweed]
    python -m localaws status
    python -m localaws env     [--json]
    python -m localaws relay   --upstream HOST:PORT [--rate B/s] [--delay S] ...

(`relay` is localaws/relay.py: a pacing TCP relay, remote S3 on loopback.)

(`python scripts/local_aws.py ...` is the same command.)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from . import relay
from .install import install
from .servers import env_vars, start_ministack, start_seaweed, status, stop
from .state import LocalAwsError, Paths, log


def shell_quote(value: str) -> str:
    return "'" + value.replace("'", "'\"'\"'") + "'"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["relay"]:
        return relay.main(argv[1:])
    parser = argparse.ArgumentParser(
        prog="python -m localaws", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("command", choices=["install", "start", "stop", "status", "env"])
    parser.add_argument(
        "--seaweed", action="store_true", help="SeaweedFS instead of ministack (start/stop)"
    )
    parser.add_argument("--json", action="store_true", help="env: one JSON object")
    args = parser.parse_args(argv)
    paths = Paths()
    try:
        if args.command == "install":
            install(paths)
        elif args.command == "start":
            entry = (start_seaweed if args.seaweed else start_ministack)(paths)
            name = "seaweed" if args.seaweed else "ministack"
            print(f"{name}: {entry['endpoint_url']} (pid {entry['pid']})")
            for line in entry.get("checked", []):
                print(f"  verified: {line}")
        elif args.command == "stop":
            which = ("seaweed",) if args.seaweed else ("ministack", "seaweed")
            for line in stop(paths, which) or ["nothing was running"]:
                print(f"stopped {line}" if "pid" in line else line)
        elif args.command == "status":
            print("\n".join(status(paths)))
        elif args.command == "env":
            values = env_vars(paths)
            if len(values) == 1:
                log("nothing is running; start it first: scripts/local_aws.py start")
            if args.json:
                print(json.dumps(values, indent=2, sort_keys=True))
            else:
                for k, v in values.items():
                    print(f"export {k}={shell_quote(v)}")
    except (LocalAwsError, subprocess.CalledProcessError) as exc:
        print(f"local_aws: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
