"""Measuring processes: wall time, CPU seconds and peak RSS, per process.

Design note. Every contender runs as child processes of the harness (a
pipeline: producer, then an optional reader such as `cmp - REF`). Each child
is reaped with `os.wait4`, whose rusage is that process's own CPU (user +
system), so nothing else on the machine is counted. Its peak RSS is not
taken from rusage: Linux carries the spawning process's high-water mark
across vfork+exec into ru_maxrss, so every child would show the harness's
peak. Instead a thread polls each child's VmHWM (the high-water mark of its
own, post-exec address space) every 10 ms while it runs; growth in its last
10 ms can be missed. A daemon is
not our child's child and does not exit between runs: its CPU is the
difference of /proc/<pid>/stat (utime + stime, all threads) before and after,
and its peak is VmHWM from /proc/<pid>/status (one daemon per run, so the
high-water mark is that run's). SeaweedFS is measured the same way, summed
over its process group. The machine's busy time (/proc/stat) is recorded
too: busy minus what we measured is other people's load on the shared cores.

Everything is bounded: a watchdog kills the whole pipeline when it outlives
its timeout, and the run is reported as failed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system, every thread) a live process has used."""
    return sum(proc_user_sys(pid))


def pids_cpu(pids: Sequence[int]) -> float:
    """CPU seconds of these live processes together (the remote profile's relays)."""
    return sum(proc_cpu(pid) for pid in pids)


def proc_user_sys(pid: int) -> tuple[float, float]:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK  # utime, stime


def proc_status_kib(pid: int, name: str) -> int:
    """A `VmXXX:` line of /proc/<pid>/status, in KiB (0 when absent)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    return 0


def group_pids(pgid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:
            out.append(int(d.name))
    return out


def group_cpu(pgid: int) -> float:
    return sum(group_user_sys(pgid))


def group_user_sys(pgid: int) -> tuple[float, float]:
    """User and system CPU-s of a process group's live members."""
    user = system = 0.0
    for pid in group_pids(pgid):
        with contextlib.suppress(OSError, IndexError):  # it exited since the listing
            u, s = proc_user_sys(pid)
            user, system = user + u, system + s
    return user, system


def machine_busy() -> float:
    """CPU seconds the whole machine has been busy (all cores, not idle/iowait)."""
    with open("/proc/stat") as fh:
        values = [int(v) for v in fh.readline().split()[1:]]
    idle = values[3] + values[4]
    return (sum(values[:8]) - idle) / CLK_TCK


# Work the kernel does in the context of whichever process allocates memory,
# charged to its CPU: direct reclaim and direct compaction. A to-a-file row
# that ran into them paid for the machine's memory state, not its download.
STALLS = ("allocstall", "compact_stall", "pgscan_direct")


def kernel_stalls() -> dict[str, int]:
    """STALLS from /proc/vmstat, machine-wide (allocstall summed over zones)."""
    out = dict.fromkeys(STALLS, 0)
    with open("/proc/vmstat") as fh:
        for line in fh:
            name, _, value = line.partition(" ")
            key = "allocstall" if name.startswith("allocstall_") else name
            if key in out:
                out[key] += int(value)
    return out


def wait_quiet(busy_below: float = 0.25, window: float = 0.1, timeout: float = 5.0) -> float:
    """Wait until the machine was busy less than `busy_below` cores over `window`
    seconds (cancelled transfers have wound down), at most `timeout`; returns
    the busy cores seen last."""
    deadline = time.monotonic() + timeout
    while True:
        b0, t0 = machine_busy(), time.monotonic()
        time.sleep(window)
        busy = (machine_busy() - b0) / (time.monotonic() - t0)
        if busy < busy_below or time.monotonic() >= deadline:
            return busy


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


@dataclass
class ProcResult:
    argv0: str
    returncode: int
    cpu_s: float
    maxrss_kib: int
    sys_s: float = 0.0  # the kernel's share of cpu_s


@dataclass
class PipelineResult:
    wall_s: float
    procs: list[ProcResult]
    stdout: bytes = b""  # of the last process, when captured
    stderr: list[bytes] = field(default_factory=list)
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return not self.timed_out and all(p.returncode == 0 for p in self.procs)


def _reap(proc: subprocess.Popen[bytes]) -> tuple[int, os.struct_rusage]:
    """Block in wait4 until the child exits (the watchdog bounds the wait)."""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage


def run_pipeline(
    cmds: Sequence[Sequence[str]],
    *,
    env: dict[str, str] | None = None,
    timeout: float = 600.0,
    capture_last: bool = False,
) -> PipelineResult:
    """Run cmds[0] | cmds[1] | ...; wall time from the first spawn to the last exit.

    The last process's stdout is captured (`capture_last`) or goes to /dev/null. Every process's stderr is captured
    (small: progress bars are off).
    """
    procs: list[subprocess.Popen[bytes]] = []
    errs: list[Path] = []
    err_dir = Path(os.environ.get("TMPDIR", "/tmp"))
    watchdog: threading.Timer | None = None
    start = time.monotonic()
    try:
        prev_out = None
        for i, argv in enumerate(cmds):
            last = i == len(cmds) - 1
            if last:
                stdout = subprocess.PIPE if capture_last else subprocess.DEVNULL
            else:
                stdout = subprocess.PIPE
            # Unique per pipeline: several run at once from threads (streams at once).
            err_path = err_dir / f"s3feed-bench-{os.getpid()}-{threading.get_ident()}-{i}.err"
            errs.append(err_path)
            with open(err_path, "wb") as err_fh:
                p = subprocess.Popen(
                    list(argv),
                    stdin=prev_out if prev_out is not None else subprocess.DEVNULL,
                    stdout=stdout,
                    stderr=err_fh,
                    env=env,
                )
            if prev_out is not None:
                prev_out.close()  # the reader holds it now
            prev_out = p.stdout if not last else None
            procs.append(p)
        peaks = [0] * len(procs)
        polling = threading.Event()

        def poll_peaks() -> None:
            while not polling.wait(0.01):
                for i, p in enumerate(procs):
                    if p.returncode is None:
                        with contextlib.suppress(OSError, ValueError):
                            peaks[i] = max(peaks[i], proc_status_kib(p.pid, "VmHWM"))

        poller = threading.Thread(target=poll_peaks, daemon=True)
        poller.start()
        timed_out = threading.Event()

        def kill_all() -> None:
            timed_out.set()
            for q in procs:
                if q.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        q.send_signal(signal.SIGKILL)

        watchdog = threading.Timer(timeout, kill_all)
        watchdog.start()
        captured = b""
        if capture_last and procs[-1].stdout is not None:
            captured = procs[-1].stdout.read()
            procs[-1].stdout.close()
        results: list[ProcResult] = []
        for p in procs:
            code, usage = _reap(p)
            argv0 = Path(str(p.args[0])).name  # type: ignore[index]
            cpu = usage.ru_utime + usage.ru_stime
            results.append(ProcResult(argv0, code, cpu, 0, usage.ru_stime))
        watchdog.cancel()
        wall = time.monotonic() - start
        polling.set()
        poller.join()
        for i, r in enumerate(results):
            r.maxrss_kib = peaks[i]
        stderr = [e.read_bytes()[-4000:] for e in errs]
        return PipelineResult(wall, results, captured, stderr, timed_out.is_set())
    finally:
        for p in procs:
            if p.returncode is None:
                p.kill()
                p.wait()
            if p.stdout is not None:
                p.stdout.close()
        if watchdog is not None:
            watchdog.cancel()
        for e in errs:
            e.unlink(missing_ok=True)


@dataclass
class Sample:
    """CPU counters of the daemon, the server and the machine at one instant."""

    t: float
    daemon_user: float
    daemon_sys: float
    server_user: float
    server_sys: float
    busy: float

    @property
    def daemon_cpu(self) -> float:
        return self.daemon_user + self.daemon_sys

    @property
    def server_cpu(self) -> float:
        return self.server_user + self.server_sys

    @classmethod
    def take(cls, daemon_pid: int | None, server_pgid: int | None) -> Sample:
        user, sys = proc_user_sys(daemon_pid) if daemon_pid else (0.0, 0.0)
        s_user, s_sys = group_user_sys(server_pgid) if server_pgid else (0.0, 0.0)
        return cls(time.monotonic(), user, sys, s_user, s_sys, machine_busy())
