"""`s3feed serve`: wires the components together and runs them until SIGTERM.

Design note. Everything runs on one event loop (uvloop). The daemon owns, in
order of construction: the STS client, the shared S3 clients, the engine
(global concurrency), the cache, the job registry, the identity, and two
aiohttp runners (the API on the Unix socket, /metrics on TCP). Background
tasks reap idle jobs and measure the loop's lag (daemon/looplag.py). With a
state directory, the jobs a previous run saved are live again before the API
answers (daemon/jobs/state.py). SIGTERM: stop accepting, give running fetches
and streams `drain_grace` seconds, then end what is left with ShuttingDown,
close everything in reverse order (the saved jobs stay saved), remove the
socket file if we created it, exit 0. SIGHUP
re-reads the configuration and applies what can change safely (the job idle
TTL and drain grace); everything else is logged as needing a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
import socket
import stat
import time
from collections.abc import Callable
from dataclasses import replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.aiohttp import make_aiohttp_handler

from s3feed.auth import AioStsClient, StsClient
from s3feed.daemon import allocator, systemd
from s3feed.daemon.api import (
    KEEPALIVE_TIMEOUT,
    Api,
    Controllers,
    GuardedServer,
    OutputsConfig,
    RequestRecorder,
    UidLimits,
    UploadJournal,
    abort_leftovers,
    access_log_class,
    quiet_malformed_requests,
)
from s3feed.daemon.config import Config, ConfigError, load_config, loopback_host_port
from s3feed.daemon.identity import DaemonIdentity, OwnCredentials
from s3feed.daemon.jobs import JobRegistry, JobState
from s3feed.daemon.looplag import LoopLag
from s3feed.daemon.metrics import Metrics
from s3feed.transfer import Engine, ObjectServer
from s3feed.transfer.cache import AclUnsupported, Cache
from s3feed.transfer.s3 import S3Client
from s3feed.transfer.upload import MIN_PART, UploadConfig, UploadMemory

log = logging.getLogger("s3feed.server")
ACCESS_LOG = logging.getLogger("s3feed.access")


def s3feed_version() -> str:
    try:
        return version("s3feed")
    except PackageNotFoundError:
        return "0+unknown"


class SocketInUse(RuntimeError):
    pass


def bind_unix_socket(path: Path, mode: int) -> socket.socket:
    """Bind `path` with `mode`; a stale socket file is replaced, a live one refused."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() or path.is_symlink():
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise SocketInUse(
                f"{path} exists and is not a socket; remove it or choose another path"
            )
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except OSError as exc:
            if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
                raise
            path.unlink(missing_ok=True)  # stale: nobody listens
        else:
            raise SocketInUse(f"another daemon is already serving on {path}")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o777 & ~mode)
    try:
        sock.bind(str(path))
    except BaseException:
        sock.close()
        raise
    finally:
        os.umask(old_umask)
    os.chmod(path, mode)
    sock.listen(1024)
    sock.setblocking(False)
    return sock


class Daemon:
    def __init__(
        self,
        config: Config,
        *,
        config_path: Path | None = None,
        sts: StsClient | None = None,
        make_store: Callable[..., Any] | None = None,
        make_uploader: Callable[..., Any] | None = None,
        metrics_registry: CollectorRegistry | None = None,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.metrics = Metrics(metrics_registry or CollectorRegistry(), s3feed_version())
        self._own_sts = sts is None
        self.sts: StsClient = sts or AioStsClient(config.sts)
        try:
            self.s3_clients = S3Client(config.s3)  # the one S3 client of every job
        except ValueError as exc:  # a CA bundle that cannot be read
            raise ConfigError(str(exc)) from None
        self.engine = Engine(config.transfer, self.metrics)
        self.cache = Cache(config.cache, self.engine, self.metrics)
        self.server = ObjectServer(self.engine, self.cache, self.metrics)
        try:
            controllers = Controllers(config.api.controller_groups)
        except ValueError as exc:
            raise ConfigError(f"[api] controller_groups: {exc}") from None
        self.identity = DaemonIdentity(self.sts)
        state_dir = config.api.state_path(os.environ)
        self.registry = JobRegistry(
            state=JobState(state_dir / "jobs" if state_dir else None),
            sts=self.sts,
            s3_clients=self.s3_clients,
            server=self.server,
            credential_observer=OwnCredentials(self.metrics, self.identity),
            transfer_observer=self.metrics,
            make_store=make_store,
            make_uploader=make_uploader,
            jobs_changed=self.metrics.jobs_active.set,
        )
        self.upload_journal = UploadJournal(state_dir / "uploads.json" if state_dir else None)
        self._make_uploader = make_uploader
        self.limits = UidLimits(config.limits, refused=self.metrics.limit_refused)
        self.api = Api(
            registry=self.registry,
            s3_config=config.s3,
            server=self.server,
            controllers=controllers,
            identity=self.identity,
            metrics_registry=self.metrics.registry,
            max_body=config.api.max_body,
            summary=self.summary,
            limits=self.limits,
            body_timeout=config.api.header_timeout,
            outputs=OutputsConfig(
                UploadConfig(
                    part_size=max(config.transfer.part_size, MIN_PART),
                    memory=config.transfer.upload_memory,
                    retries=config.transfer.retries,
                    stall_timeout=config.transfer.stall_timeout,
                ),
                self.metrics,
                self.upload_journal,
                UploadMemory(config.transfer.upload_memory_total, self.metrics.upload_memory),
            ),
        )
        self._runners: list[web.AppRunner] = []
        self._api_server: GuardedServer | None = None
        self._url_server: GuardedServer | None = None
        self.http_listen: str | None = None  # the URL listener's bound "HOST:PORT"
        self._created_socket: Path | None = None
        self._reaper: asyncio.Task[None] | None = None
        self._trimmer: asyncio.Task[None] | None = None
        self._lag: asyncio.Task[None] | None = None
        self._recovery: asyncio.Task[None] | None = None
        self.socket_path: Path | None = None

    def summary(self) -> dict[str, Any]:
        return {
            "Jobs": len(self.registry),
            "Transfers": sum(
                1
                for j in self.registry.all_jobs()
                for t in j.transfers.values()
                if not t.finished.is_set()
            ),
            "CacheSizeBytes": self.cache.size_bytes,
            "CacheCapacityBytes": self.cache.capacity_bytes,
            "HttpListen": self.http_listen,
        }

    async def start(self, listen_socket: socket.socket | None = None) -> None:
        if self._own_sts:
            await self.sts.start()  # type: ignore[attr-defined]
        await self.cache.start()
        # Before the API answers: a saved job is never NoSuchJob to its encoder.
        await self.registry.restore(await self.registry.state.load(self.config.s3))
        quiet_malformed_requests()
        api_runner = await self._api_runner(self.api.app(), "socket")
        if listen_socket is None:
            listen_socket = bind_unix_socket(self.config.api.socket, self.config.api.socket_mode)
            self._created_socket = self.config.api.socket
        self.socket_path = Path(listen_socket.getsockname())
        # The metrics listener before the API serves: once the API answers, all
        # of the daemon does (a client that waited for it can scrape at once).
        metrics_at = None
        if (hp := self.config.metrics.host_port) is not None:
            app = web.Application()
            app.router.add_get("/metrics", make_aiohttp_handler(self.metrics.registry))
            runner = web.AppRunner(
                app, handle_signals=False, access_log=None, keepalive_timeout=KEEPALIVE_TIMEOUT
            )
            await runner.setup()
            self._runners.append(runner)
            site = web.TCPSite(runner, hp[0], hp[1], reuse_address=True)
            await site.start()
            host, port = runner.addresses[0][:2]
            metrics_at = f"{host}:{port}"  # the port bound when the config said 0
        self._api_server = GuardedServer(
            api_runner,
            listen_socket,
            limits=self.limits,
            header_timeout=self.config.api.header_timeout,
            refused=self.metrics.connection_refused,
        )
        await self._api_server.start()
        if self.config.api.http_listen:
            await self._start_urls(self.config.api.http_listen)
        self._reaper = asyncio.create_task(self._reap_idle(), name="reaper")
        self._trimmer = asyncio.create_task(_give_back_memory(), name="trimmer")
        self._lag = asyncio.create_task(LoopLag(self.metrics.loop_lag).run(), name="loop lag")
        if self.upload_journal.entries:
            self._recovery = asyncio.create_task(self._abort_leftovers(), name="upload recovery")
        asyncio.create_task(self.identity.try_learn(), name="identity")  # noqa: RUF006
        log.info(
            "s3feed serving",
            extra={
                "socket": str(self.socket_path),
                "metrics": metrics_at,
                "http_listen": self.http_listen,
            },
        )

    async def _api_runner(self, app: web.Application, listener: str) -> web.AppRunner:
        """A runner for an API listener ("socket" or "url"), set up."""
        recorder = RequestRecorder(listener, self.config.api.access_log, self.metrics.api_request)
        runner = web.AppRunner(
            app,
            handle_signals=False,
            # Counts answers for the guard and the metric; logs them with
            # [api] access_log (daemon/api/accesslog.py).
            access_log=ACCESS_LOG,
            access_log_class=access_log_class(recorder),
            # Handlers still running after our own drain are streams whose job
            # was just closed: they end at once, so a short shutdown timeout.
            shutdown_timeout=5.0,
            keepalive_timeout=KEEPALIVE_TIMEOUT,
        )
        await runner.setup()
        self._runners.append(runner)
        return runner

    async def _start_urls(self, listen: str) -> None:
        """The loopback listener of URLs (docs/design.md, URLs for encoders): the
        same guard, limits and handlers as the socket, fewer routes."""
        host, port = loopback_host_port(listen)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(1024)
        except OSError as exc:
            sock.close()
            raise ConfigError(
                f"[api] http_listen: cannot listen on {listen}: {exc.strerror}"
            ) from None
        sock.setblocking(False)
        runner = await self._api_runner(self.api.url_app(), "url")
        self._url_server = GuardedServer(
            runner,
            sock,
            limits=self.limits,
            header_timeout=self.config.api.header_timeout,
            refused=self.metrics.connection_refused,
        )
        await self._url_server.start()
        bound_host, bound_port = sock.getsockname()[:2]
        self.http_listen = (
            f"[{bound_host}]:{bound_port}"
            if family == socket.AF_INET6
            else f"{bound_host}:{bound_port}"
        )

    async def _abort_leftovers(self) -> None:
        """Multipart uploads a crashed run left behind (docs/design.md, Outputs)."""
        try:
            await abort_leftovers(
                self.upload_journal,
                sts=self.sts,
                s3=self.config.s3,
                observer=self.metrics,
                make_uploader=self._make_uploader or self.registry._real_uploader,
            )
        except Exception:
            log.exception("aborting the last run's multipart uploads failed")

    async def _reap_idle(self) -> None:
        while True:
            await asyncio.sleep(min(60.0, self.config.api.job_idle_ttl / 4))
            try:
                await self.registry.reap_idle(self.config.api.job_idle_ttl)
            except Exception:  # one bad round must not end reaping for good
                log.exception("idle reaping failed; trying again next round")

    def reload(self) -> None:
        if self.config_path is None:
            log.info("SIGHUP: no config file to reload")
            return
        try:
            new = load_config(self.config_path)
        except ConfigError as exc:
            log.error("SIGHUP: config not reloaded", extra={"error": str(exc)})
            return
        applied = replace(
            self.config.api, job_idle_ttl=new.api.job_idle_ttl, drain_grace=new.api.drain_grace
        )
        rest_changed = replace(new, api=applied) != replace(self.config, api=applied)
        self.config = replace(self.config, api=applied)
        log.info(
            "SIGHUP: config reloaded",
            extra={
                "needs_restart": "changes outside [api] job_idle_ttl/drain_grace"
                if rest_changed
                else None
            },
        )

    async def stop(self) -> None:
        """Drain, then close everything in reverse order."""
        log.info("stopping: draining transfers", extra={"grace_s": self.config.api.drain_grace})
        if self._api_server is not None:
            self._api_server.close()
        if self._url_server is not None:
            self._url_server.close()
        for runner in self._runners:
            for site in list(runner.sites):
                await site.stop()
        if not await self.registry.drain(self.config.api.drain_grace):
            log.warning("drain grace over: ending the transfers still running with ShuttingDown")
        if self._recovery is not None:
            self._recovery.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._recovery
        for task in (self._reaper, self._trimmer, self._lag):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.registry.close(shutting_down=True)
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners.clear()
        await self.identity.close()
        await self.cache.close()
        await self.s3_clients.close()
        if self._own_sts:
            await self.sts.close()  # type: ignore[attr-defined]
        if self._created_socket is not None:
            self._created_socket.unlink(missing_ok=True)
        log.info("stopped")

    def status_line(self) -> str:
        s = self.summary()
        rate = sum(
            t.progress.rate(time.monotonic())
            for j in self.registry.all_jobs()
            for t in j.transfers.values()
            if not t.finished.is_set()
        )
        return f"{s['Jobs']} jobs, {s['Transfers']} transfers, {rate / 1e6:.1f} MB/s"


async def _give_back_memory() -> None:
    """docs/design.md, Performance notes (Allocator): free heap pages go back
    to the kernel every few seconds, not on every free."""
    while True:
        await asyncio.sleep(allocator.TRIM_INTERVAL)
        allocator.trim()


async def _keep_systemd_informed(daemon: Daemon) -> None:
    """STATUS= every few seconds and WATCHDOG=1 at half of WATCHDOG_USEC, from
    the event loop itself, so a blocked loop misses its pings and is killed."""
    interval = systemd.watchdog_interval()
    period = min(interval, 5.0) if interval else 5.0
    while True:
        message = f"STATUS={daemon.status_line()}"
        if interval:
            message += "\nWATCHDOG=1"
        systemd.notify(message)
        await asyncio.sleep(period)


async def serve(config: Config, config_path: Path | None) -> int:
    daemon = Daemon(config, config_path=config_path)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def reload() -> None:
        systemd.notify(f"RELOADING=1\nMONOTONIC_USEC={systemd.monotonic_usec()}")
        daemon.reload()
        systemd.notify(f"READY=1\nSTATUS={daemon.status_line()}")

    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload)
    passed = systemd.listen_fds_with_names()
    api_socket = dict(passed).get("api") if passed else None
    if passed and api_socket is None:
        api_socket = passed[0][1]
    for _, sock in passed:
        if sock is not api_socket:
            sock.close()
    try:
        await daemon.start(api_socket)
    except (SocketInUse, AclUnsupported, ConfigError) as exc:
        log.error(str(exc))
        await daemon.stop()
        return 1
    systemd.notify(f"READY=1\nSTATUS={daemon.status_line()}")
    informer = asyncio.create_task(_keep_systemd_informed(daemon), name="systemd")
    await stop.wait()
    systemd.notify("STOPPING=1\nSTATUS=draining transfers")
    informer.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await informer
    await daemon.stop()
    return 0
