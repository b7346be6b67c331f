"""Per-job RSS of idle jobs: a real daemon on the local AWS (ministack), 200 jobs.

    .venv/bin/python bench/job_rss.py [--jobs 200] [--code DIR]

Starts `s3feed serve` (from this checkout, or from the package tree DIR,
i.e. DIR/s3feed/{auth,transfer,daemon}, to measure another revision),
registers 10 warm-up jobs and lists each once (every code path imported,
pools at their steady size), reads VmRSS, registers `--jobs` more jobs
(each registration warms the job's store: docs/design.md, Transfers), lists
each once, waits a second, reads VmRSS again and prints
(after - before) / jobs. Not a test: a measurement, printed as one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "integration"))

from conftest import _from_env, local_aws_script  # noqa: E402
from daemonproc import Daemon, free_port, stop, wait_for_socket, write_config  # noqa: E402

from s3feed.daemon.client import Client  # noqa: E402


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--code", type=Path, help="a tree holding s3feed/{auth,transfer,daemon}")
    args = parser.parse_args()
    paths = local_aws_script.Paths()
    local_aws_script.acquire(paths)
    try:
        aws = _from_env(local_aws_script.env_vars(paths), paths.root)
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            port = free_port()
            sections = {
                "api": {"socket": work / "s3feed.sock"},
                "metrics": {"listen": f"127.0.0.1:{port}"},
                "sts": {"region": aws.region, "endpoint_url": aws.endpoint_url},
                "s3": {"endpoint_url": aws.endpoint_url},
                "cache": {"dir": work / "cache", "max_size": "1GiB", "min_free": "0"},
                "limits": {"jobs_per_uid": 10000, "job_creates_per_minute_per_uid": 100000},
            }
            config = work / "s3feed.toml"
            write_config(config, sections)
            env = {
                **os.environ,
                "AWS_ACCESS_KEY_ID": aws.daemon_access_key_id,
                "AWS_SECRET_ACCESS_KEY": aws.daemon_secret_access_key,
                "AWS_DEFAULT_REGION": aws.region,
            }
            if args.code:
                env["PYTHONPATH"] = str(args.code)
            log = work / "s3feed.log"
            cmd = [sys.executable, "-m", "s3feed.daemon", "serve", "--config", str(config)]
            with log.open("wb") as out:
                process = subprocess.Popen(cmd, env=env, stdout=out, stderr=out)
            daemon = Daemon(process, work / "s3feed.sock", port, log, work / "cache", config)
            try:
                wait_for_socket(daemon)
                client = Client(str(daemon.socket), timeout=60)
                uri = f"https://{aws.acme_bucket}.s3.{aws.region}.amazonaws.com/"

                def register(name: str) -> None:
                    client.create_job(name, aws.acme_tenant, uri, aws.acme_role_arn)
                    client.list_objects_page(name, max_keys=1)

                for n in range(10):
                    register(f"warm-{n}")
                time.sleep(1)
                before = rss_kib(process.pid)
                for n in range(args.jobs):
                    register(f"idle-{n}")
                time.sleep(1)
                after = rss_kib(process.pid)
            finally:
                stop(process)
        print(
            json.dumps(
                {
                    "code": str(args.code or "this checkout"),
                    "jobs": args.jobs,
                    "rss_before_kib": before,
                    "rss_after_kib": after,
                    "per_job_kib": round((after - before) / args.jobs, 1),
                }
            )
        )
    finally:
        local_aws_script.release(paths)


if __name__ == "__main__":
    main()
