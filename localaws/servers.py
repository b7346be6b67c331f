"""Starting, stopping and sharing the servers: ministack (S3 + STS + IAM with
real auth semantics) and SeaweedFS (fast S3, for throughput tests and the
benchmark; it cannot evaluate an ExternalId condition)."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Sequence
from typing import Any

from .checks import verify_ministack, verify_seaweed
from .iam import (
    ACME_BUCKET,
    ACME_ROLE,
    ACME_TENANT,
    DAEMON_USER,
    GLOBEX_BUCKET,
    GLOBEX_ROLE,
    GLOBEX_TENANT,
    SEAWEED_BUCKET,
    SEAWEED_ROLE,
    TEST_BUCKET_PREFIX,
    UNTRUSTING_ROLE,
    provision_ministack,
    provision_seaweed,
    role_arn,
    seaweed_config,
    write_seaweed_configs,
)
from .install import install_ministack, install_seaweed
from .media import MEDIA_MP4_KEY, MEDIA_TS_KEY, MULTIPART_KEY, make_media
from .processes import (
    ServerExited,
    alive,
    free_port,
    free_port_pair,
    kill_group,
    listening_ports,
    port_open,
    spawn,
    wait_ports_closed,
    wait_until,
)
from .s3 import client, quick_config
from .state import (
    ACCOUNT_ID,
    ADMIN_KEY_ID,
    ADMIN_SECRET,
    ENV_PREFIX,
    HOST,
    REGION,
    START_TIMEOUT_S,
    STOP_TIMEOUT_S,
    LocalAwsError,
    Paths,
    locked,
    log,
    read_state,
    write_json,
    write_state,
)

SEAWEED_STOP_TIMEOUT_S = 20.0  # it stops its parts one by one: ~5 s measured


def _stop_timeout(name: str) -> float:
    return SEAWEED_STOP_TIMEOUT_S if name == "seaweed" else STOP_TIMEOUT_S


def _running_entry(paths: Paths, state: dict[str, Any], name: str) -> dict[str, Any] | None:
    """The state entry of server `name` if it runs; a stale entry is cleaned up
    (its process group killed, the entry dropped from `state` and state.json)."""
    current = state.get(name)
    if current and alive(current["pid"]) and port_open(current["port"]):
        return dict(current)
    if current:
        log(f"stale {name} state (pid {current['pid']}); cleaning up")
        kill_group(current["pid"], _stop_timeout(name))
        state.pop(name, None)
        write_state(paths, state)
    return None


def start_ministack(paths: Paths, owner: str = "cli") -> dict[str, Any]:
    """Start (or find running) ministack; returns its state entry."""
    with locked(paths):
        state = read_state(paths)
        current = _running_entry(paths, state, "ministack")
        if current is not None:
            return current
        install_ministack(paths)
        make_media(paths)
        paths.tmp.mkdir(parents=True, exist_ok=True)
        entry: dict[str, Any] | None = None
        for attempt in range(5):
            port = free_port()
            env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "LOCALSTACK_"))}
            env.update(
                BIND_HOST=HOST,
                GATEWAY_PORT=str(port),
                AUTH="true",
                MINISTACK_REGION=REGION,
                MINISTACK_ACCOUNT_ID=ACCOUNT_ID,
                TMPDIR=str(paths.tmp),  # its pid file goes to $TMPDIR
                STATE_DIR=str(paths.ministack_data / "state"),
                S3_DATA_DIR=str(paths.ministack_data / "s3"),
                PERSIST_STATE="0",
                S3_PERSIST="0",
            )
            pid = spawn([str(paths.ministack_bin)], env, paths.ministack_log, paths.root)
            endpoint = f"http://{HOST}:{port}"

            def bound(pid: int = pid, port: int = port) -> bool:
                return port in listening_ports(pid)

            try:
                wait_until("ministack", bound, pid, paths.ministack_log, START_TIMEOUT_S)
            except ServerExited:
                log(f"ministack did not bind port {port} (attempt {attempt + 1}); retrying")
                kill_group(pid)
                continue
            except BaseException:
                kill_group(pid)
                raise
            entry = {"pid": pid, "port": port, "endpoint_url": endpoint, "owner": owner}
            break
        if entry is None:
            raise LocalAwsError(f"ministack failed to start; see {paths.ministack_log}")
        state["ministack"] = entry
        write_state(paths, state)
        try:
            facts = provision_ministack(paths, entry["endpoint_url"])
            entry["checked"] = verify_ministack(entry["endpoint_url"], facts)
        except BaseException:
            kill_group(entry["pid"])
            state.pop("ministack", None)
            write_state(paths, state)
            raise
        entry.update(facts)
        state["ministack"] = entry
        write_state(paths, state)
        write_json(paths.env, env_vars(paths, state))
        return dict(entry)


def find_s3_port(pid: int, wanted: int, keys: dict[str, str]) -> int | None:
    """The port where SeaweedFS's S3 gateway answers our admin keys, if any yet."""
    ports = listening_ports(pid)
    candidates = ([wanted] if wanted in ports else []) + sorted(ports - {wanted})
    for port in candidates:
        if not 0 < port < 65536:
            continue
        s3 = client(
            "s3",
            f"http://{HOST}:{port}",
            keys["admin_access_key_id"],
            keys["admin_secret_access_key"],
            config=quick_config(),
        )
        with contextlib.closing(s3):
            try:
                s3.list_buckets()
            except Exception:  # not S3, or not ready yet
                continue
        return port
    return None


def start_seaweed(
    paths: Paths, owner: str = "cli", extra_args: Sequence[str] = ()
) -> dict[str, Any]:
    """Start (or find running) SeaweedFS (`weed mini`); returns its state entry.
    `extra_args` go to `weed mini` (the benchmark's HTTPS port and certificate)."""
    with locked(paths):
        state = read_state(paths)
        current = _running_entry(paths, state, "seaweed")
        if current is not None:
            return current
        install_seaweed(paths)
        make_media(paths)
        keys = seaweed_config(paths)
        ids_path, iam_path = write_seaweed_configs(paths, keys)
        entry: dict[str, Any] | None = None
        for attempt in range(3):
            shutil.rmtree(paths.seaweed_data, ignore_errors=True)  # a fresh store each start
            paths.seaweed_data.mkdir(parents=True)
            taken: set[int] = set()
            ports = {
                name: free_port_pair(taken) for name in ("s3", "master", "volume", "filer", "admin")
            }
            cmd = [
                str(paths.weed_bin),
                "mini",
                f"-dir={paths.seaweed_data}",
                f"-ip={HOST}",
                f"-ip.bind={HOST}",
                f"-s3.config={ids_path}",
                f"-s3.iam.config={iam_path}",
                "-master.telemetry=false",
                "-admin.ui=false",
                "-webdav=false",
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
                f"-s3.port={ports['s3']}",
                f"-master.port={ports['master']}",
                f"-volume.port={ports['volume']}",
                f"-filer.port={ports['filer']}",
                f"-admin.port={ports['admin']}",
                f"-s3.localSocket={paths.seaweed_data / 's3.sock'}",
                f"-filer.localSocket={paths.seaweed_data / 'filer.sock'}",
                *extra_args,
            ]
            env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
            pid = spawn(cmd, env, paths.seaweed_log, paths.root)
            found: list[int] = []

            def s3_ready(
                pid: int = pid, wanted: int = ports["s3"], found: list[int] = found
            ) -> bool:
                port = find_s3_port(pid, wanted, keys)
                if port is not None:
                    found.append(port)
                return port is not None

            try:
                wait_until("seaweed", s3_ready, pid, paths.seaweed_log, START_TIMEOUT_S)
            except ServerExited:
                log(f"seaweed exited early (attempt {attempt + 1}); retrying")
                kill_group(pid, SEAWEED_STOP_TIMEOUT_S)
                continue
            except BaseException:
                kill_group(pid, SEAWEED_STOP_TIMEOUT_S)
                raise
            port = found[0]
            if port != ports["s3"]:
                log(f"seaweed S3 moved from port {ports['s3']} to {port}")
            entry = {
                "pid": pid,
                "port": port,
                "endpoint_url": f"http://{HOST}:{port}",
                "owner": owner,
                "role_arn": role_arn(SEAWEED_ROLE),
                "untrusting_role_arn": role_arn(UNTRUSTING_ROLE),
                "bucket": SEAWEED_BUCKET,
                **{k: v for k, v in keys.items() if k != "signing_key"},
            }
            break
        if entry is None:
            raise LocalAwsError(f"seaweed failed to start; see {paths.seaweed_log}")
        state["seaweed"] = entry
        write_state(paths, state)
        try:
            provision_seaweed(paths, entry["endpoint_url"], keys)
            entry["checked"] = verify_seaweed(entry["endpoint_url"], keys)
        except BaseException:
            kill_group(entry["pid"], SEAWEED_STOP_TIMEOUT_S)
            state.pop("seaweed", None)
            write_state(paths, state)
            raise
        # Every port it listens on, so that stop can check they all closed.
        entry["ports"] = sorted(listening_ports(entry["pid"]))
        state["seaweed"] = entry
        write_state(paths, state)
        write_json(paths.env, env_vars(paths, state))
        return dict(entry)


def stop(paths: Paths, which: tuple[str, ...] = ("ministack", "seaweed")) -> list[str]:
    stopped = []
    with locked(paths):
        state = read_state(paths)
        for name in which:
            entry = state.get(name)
            if not entry:
                continue
            kill_group(entry["pid"], _stop_timeout(name))
            wait_ports_closed(list(entry.get("ports", [entry["port"]])))
            state.pop(name)
            write_state(paths, state)
            stopped.append(f"{name} (pid {entry['pid']}, port {entry['port']})")
        if state:
            write_json(paths.env, env_vars(paths, state))
        else:
            paths.env.unlink(missing_ok=True)
    return stopped


def env_vars(paths: Paths, state: dict[str, Any] | None = None) -> dict[str, str]:
    state = read_state(paths) if state is None else state
    p = ENV_PREFIX
    out: dict[str, str] = {"S3FEED_LOCAL_AWS_DIR": str(paths.root)}
    ms = state.get("ministack")
    if ms and "daemon_access_key_id" in ms:
        out.update(
            {
                p + "ENDPOINT_URL": ms["endpoint_url"],
                p + "REGION": REGION,
                p + "ACCOUNT_ID": ACCOUNT_ID,
                p + "DAEMON_ACCESS_KEY_ID": ms["daemon_access_key_id"],
                p + "DAEMON_SECRET_ACCESS_KEY": ms["daemon_secret_access_key"],
                p + "DAEMON_ARN": f"arn:aws:iam::{ACCOUNT_ID}:user/{DAEMON_USER}",
                p + "ADMIN_ACCESS_KEY_ID": ADMIN_KEY_ID,
                p + "ADMIN_SECRET_ACCESS_KEY": ADMIN_SECRET,
                p + "ACME_TENANT": ACME_TENANT,
                p + "ACME_ROLE_ARN": role_arn(ACME_ROLE),
                p + "ACME_BUCKET": ACME_BUCKET,
                p + "GLOBEX_TENANT": GLOBEX_TENANT,
                p + "GLOBEX_ROLE_ARN": role_arn(GLOBEX_ROLE),
                p + "GLOBEX_BUCKET": GLOBEX_BUCKET,
                p + "UNTRUSTING_ROLE_ARN": role_arn(UNTRUSTING_ROLE),
                p + "TEST_BUCKET_PREFIX": TEST_BUCKET_PREFIX,
                p + "MULTIPART_KEY": MULTIPART_KEY,
            }
        )
        if paths.media_ts.exists():
            out[p + "MEDIA_TS_KEY"] = MEDIA_TS_KEY
            out[p + "MEDIA_TS_PATH"] = str(paths.media_ts)
        if paths.media_mp4.exists():
            out[p + "MEDIA_MP4_KEY"] = MEDIA_MP4_KEY
            out[p + "MEDIA_MP4_PATH"] = str(paths.media_mp4)
    sw = state.get("seaweed")
    if sw and "daemon_access_key_id" in sw:
        out.update(
            {
                p + "SEAWEED_ENDPOINT_URL": sw["endpoint_url"],
                p + "SEAWEED_ADMIN_ACCESS_KEY_ID": sw["admin_access_key_id"],
                p + "SEAWEED_ADMIN_SECRET_ACCESS_KEY": sw["admin_secret_access_key"],
                p + "SEAWEED_DAEMON_ACCESS_KEY_ID": sw["daemon_access_key_id"],
                p + "SEAWEED_DAEMON_SECRET_ACCESS_KEY": sw["daemon_secret_access_key"],
                p + "SEAWEED_ROLE_ARN": sw["role_arn"],
                p + "SEAWEED_UNTRUSTING_ROLE_ARN": sw["untrusting_role_arn"],
                p + "SEAWEED_MULTIPART_KEY": MULTIPART_KEY,
                p + "SEAWEED_BUCKET": sw["bucket"],
            }
        )
    return out


def status(paths: Paths) -> list[str]:
    state = read_state(paths)
    lines = []
    for name in ("ministack", "seaweed"):
        entry = state.get(name)
        if not entry:
            lines.append(f"{name}: not running")
            continue
        ok = alive(entry["pid"]) and port_open(entry["port"])
        health = "running" if ok else "DEAD (stale state; run stop)"
        lines.append(
            f"{name}: {health}, pid {entry['pid']}, {entry['endpoint_url']}"
            f", started by {entry.get('owner', '?')}"
        )
    return lines


def acquire(paths: Paths, which: str = "ministack") -> dict[str, Any]:
    """Start a server for a test session unless running; register the session as a user."""
    entry = (start_seaweed if which == "seaweed" else start_ministack)(paths, owner="pytest")
    users = paths.users / which
    users.mkdir(parents=True, exist_ok=True)
    (users / str(os.getpid())).touch()
    return entry


def release(paths: Paths, which: str = "ministack") -> bool:
    """Unregister; stop the server if a test session started it and nobody else uses it."""
    users = paths.users / which
    (users / str(os.getpid())).unlink(missing_ok=True)
    with locked(paths):
        entry = read_state(paths).get(which)
        if not entry or entry.get("owner") != "pytest":
            return False
        for user in users.iterdir() if users.exists() else []:
            if user.name.isdigit() and alive(int(user.name)):
                return False
            user.unlink(missing_ok=True)
    return bool(stop(paths, (which,)))
