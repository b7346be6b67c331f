"""Per-job RSS of idle jobs: a real daemon on the local AWS (ministack), 200 jobs.

    .venv/bin/python bench/job_rss.py [--jobs 200]

Starts `s3feed serve` (localaws/daemon.py), registers 10 warm-up jobs and lists each once (every code path imported,
pools at their steady size), reads VmRSS, registers `--jobs` more jobs
(each registration warms the job's store: docs/design.md, Transfers), lists
each once, waits a second, reads VmRSS again and prints
(after - before) / jobs. Not a test: a measurement, printed as one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "integration"))
sys.path.insert(0, str(HERE.parent))  # localaws is not installed

from conftest import _from_env  # noqa: E402

import localaws  # noqa: E402
from localaws.daemon import Identity, running  # noqa: E402
from s3feed.client import Client  # noqa: E402


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=200)
    args = parser.parse_args()
    paths = localaws.Paths()
    localaws.acquire(paths)
    try:
        aws = _from_env(localaws.env_vars(paths), paths.root)
        with tempfile.TemporaryDirectory() as tmp:
            identity = Identity(
                aws.endpoint_url, aws.region, aws.daemon_access_key_id, aws.daemon_secret_access_key
            )
            overrides = {
                "cache": {"max_size": "1GiB", "min_free": "0"},
                "limits": {"jobs_per_uid": 10000, "job_creates_per_minute_per_uid": 100000},
            }
            with running(identity, Path(tmp), overrides) as daemon:
                client = Client(str(daemon.socket), timeout=60)
                uri = f"https://{aws.acme_bucket}.s3.{aws.region}.amazonaws.com/"

                def register(name: str) -> None:
                    client.create_job(name, aws.acme_tenant, uri, aws.acme_role_arn)
                    client.list_objects_page(name, max_keys=1)

                for n in range(10):
                    register(f"warm-{n}")
                time.sleep(1)  # a measurement, not a test: let the allocator settle
                before = rss_kib(daemon.pid)
                for n in range(args.jobs):
                    register(f"idle-{n}")
                time.sleep(1)
                after = rss_kib(daemon.pid)
        print(
            json.dumps(
                {
                    "jobs": args.jobs,
                    "rss_before_kib": before,
                    "rss_after_kib": after,
                    "per_job_kib": round((after - before) / args.jobs, 1),
                }
            )
        )
    finally:
        localaws.release(paths)


if __name__ == "__main__":
    main()
