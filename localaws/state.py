"""Where the local AWS keeps its state, and what every other module shares.

State lives in <repo>/.local-aws (or $S3FEED_LOCAL_AWS_DIR): the servers'
virtualenvs, logs, data, state.json (pids, ports, keys) and env.json (what
`python -m localaws env` prints). start/stop/install of processes sharing one
state directory are serialised by a file lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent

HOST = "127.0.0.1"
REGION = "us-east-1"
ACCOUNT_ID = "000000000000"
ADMIN_KEY_ID = "test"
ADMIN_SECRET = "test"


START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0

ENV_PREFIX = "S3FEED_LOCAL_"


class LocalAwsError(RuntimeError):
    """Something about the local servers is not as the tests need it."""


def log(msg: str) -> None:
    print(f"local_aws: {msg}", file=sys.stderr, flush=True)


class Paths:
    """Where everything lives; one instance per state directory."""

    def __init__(self, root: Path | None = None) -> None:
        if root is None:
            override = os.environ.get("S3FEED_LOCAL_AWS_DIR")
            root = Path(override) if override else REPO_ROOT / ".local-aws"
        self.root = root.resolve()
        self.ministack_venv = self.root / "ministack-venv"
        self.seaweed_venv = self.root / "seaweed-venv"
        self.media = self.root / "media"
        self.state = self.root / "state.json"
        self.env = self.root / "env.json"
        self.lock = self.root / ".lock"
        self.users = self.root / "users"
        self.tmp = self.root / "tmp"
        self.ministack_log = self.root / "ministack.log"
        self.ministack_data = self.root / "ministack-data"
        self.seaweed_log = self.root / "seaweed.log"
        self.seaweed_data = self.root / "seaweed-data"
        self.seaweed_conf = self.root / "seaweed-conf"

    @property
    def ministack_bin(self) -> Path:
        return self.ministack_venv / "bin" / "ministack"

    @property
    def weed_bin(self) -> Path:
        return self.seaweed_venv / "bin" / "weed"

    @property
    def media_ts(self) -> Path:
        return self.media / "sample.ts"

    @property
    def media_mp4(self) -> Path:
        return self.media / "sample.mp4"


@contextlib.contextmanager
def locked(paths: Paths) -> Iterator[None]:
    """Serialise start/stop/install between processes sharing a state dir."""
    paths.root.mkdir(parents=True, exist_ok=True)
    with open(paths.lock, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def read_state(paths: Paths) -> dict[str, Any]:
    try:
        return dict(json.loads(paths.state.read_text()))
    except FileNotFoundError:
        return {}


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.chmod(0o600)  # it holds secret keys (local, throwaway ones, but still)
    tmp.replace(path)


def write_state(paths: Paths, state: dict[str, Any]) -> None:
    if state:
        write_json(paths.state, state)
    else:
        paths.state.unlink(missing_ok=True)
