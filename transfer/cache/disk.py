"""The cache's on-disk format: one sidecar record per entry, and the start-up scan.

For entry id I (a hash of endpoint, bucket, key and ETag) the cache directory
holds `I.json`, the record, and either `I.part` (being downloaded; sparse,
written with pwrite per range) or `I.data` (complete). Records are replaced
atomically (write `I.json.tmp`, rename). Order of writes on completion:
data renamed `I.part` -> `I.data`, then the record says COMPLETE; a crash
between the two leaves a PARTIAL record whose part file is gone, which the
scan drops. So a file is served only when its record says COMPLETE.

Durability without fsync on the download path (an fsync there costs a large
share of a download: docs/design.md, Performance notes: fsync): a process
crash loses nothing the kernel holds, only a kernel crash or power loss does.
A record therefore carries the kernel's boot id and a `synced` flag; the cache
fsyncs completed entries in the background and then marks them synced. After a
reboot, an unsynced COMPLETE entry is dropped and an unsynced PARTIAL entry
forgets its ranges (its bytes may be zeros), so nothing unverified is ever
served as complete. A cache directory is written by one daemon at a time.

This module only reads and writes files; it has no event loop state. Its
calls run in worker threads (docs/design.md, Cache): the cache's one file
worker, in the order the loop issues them, and the start-up scan's thread.
A worker writes a `Record.snapshot()`, never a record the loop goes on changing.
"""

from __future__ import annotations

import contextlib
import ctypes
import enum
import errno
import hashlib
import hmac
import json
import os
import secrets
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from s3feed.transfer.cache import acl
from s3feed.transfer.progress import RangeSet

FORMAT = 1
SECRET_BYTES = 32


def current_boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"  # never equal to itself across boots we cannot tell apart


_fallocate: Callable[[int, int, int, int], int] | None = None


def reserve(fd: int, size: int) -> bool:
    """Allocate the blocks of [0, size) of a part file now: fallocate(2), mode 0.

    Written by hand (ctypes): Python's os has only posix_fallocate, whose glibc
    fallback on a file system without fallocate writes a byte into every
    block. On ext4 this takes the delayed-allocation bookkeeping out of every
    pwrite of the download (a large share of the daemon's CPU: docs/design.md,
    Performance notes, fallocate), and a disk without room says so (ENOSPC)
    before a byte is fetched. Where the file system cannot allocate ahead,
    nothing is reserved. True when the blocks are now the file's (free space
    shows them as used).
    """
    global _fallocate
    if size <= 0:
        return True
    if _fallocate is None:
        fn = ctypes.CDLL(None, use_errno=True).fallocate
        fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
        fn.restype = ctypes.c_int
        _fallocate = fn
    while _fallocate(fd, 0, 0, size) != 0:
        err = ctypes.get_errno()
        if err in (errno.EOPNOTSUPP, errno.ENOSYS):
            return False
        if err != errno.EINTR:
            raise OSError(err, os.strerror(err))
    return True


class EntryState(enum.Enum):
    PARTIAL = "partial"
    COMPLETE = "complete"


def entry_id(endpoint: str, bucket: str, key: str, etag: str, secret: bytes) -> str:
    """Identity of a cached object, and its file name. ETag alone identifies
    the bytes (two versions with one ETag have the same content), so VersionId
    is recorded but not part of the key: a stream that knows only the ETag
    finds it. Keyed with the cache's secret, so a name cannot be computed from
    a bucket, key and ETag: encoders may open the files of the cache directory
    (group traverse-only) but find only the paths the API gave them."""
    raw = json.dumps([endpoint, bucket, key, etag], ensure_ascii=False).encode()
    return hmac.new(secret, raw, hashlib.sha256).hexdigest()[:40]


@dataclass
class Record:
    id: str
    endpoint: str
    bucket: str
    key: str
    etag: str
    size: int
    version_id: str | None = None
    state: EntryState = EntryState.PARTIAL
    ranges: RangeSet = field(default_factory=RangeSet)
    verified: tuple[str, ...] = ()
    synced: bool = False
    boot_id: str = ""
    last_used: float = 0.0  # wall clock, for LRU across restarts

    def complete(self, verified: list[str], boot_id: str) -> None:
        if self.state is not EntryState.PARTIAL:
            raise RuntimeError(f"entry {self.id} is already {self.state.value}")
        self.state = EntryState.COMPLETE
        self.ranges = RangeSet([(0, self.size - 1)] if self.size else [])
        self.verified = tuple(verified)
        self.synced = False
        self.boot_id = boot_id

    def snapshot(self) -> Record:
        """A copy to hand to a worker thread while the loop goes on adding ranges."""
        return Record.from_json(self.id, self.to_json())

    def to_json(self) -> dict[str, object]:
        return {
            "Format": FORMAT,
            "Endpoint": self.endpoint,
            "Bucket": self.bucket,
            "Key": self.key,
            "ETag": self.etag,
            "VersionId": self.version_id,
            "Size": self.size,
            "State": self.state.value,
            "Ranges": self.ranges.to_json(),
            "Verified": list(self.verified),
            "Synced": self.synced,
            "BootId": self.boot_id,
            "LastUsed": self.last_used,
        }

    @classmethod
    def from_json(cls, rid: str, d: dict[str, object]) -> Record:
        if d.get("Format") != FORMAT:
            raise ValueError(f"unknown format {d.get('Format')!r}")
        rec = cls(
            id=rid,
            endpoint=_str(d, "Endpoint"),
            bucket=_str(d, "Bucket"),
            key=_str(d, "Key"),
            etag=_str(d, "ETag"),
            size=_int(d, "Size"),
            version_id=d["VersionId"] if isinstance(d.get("VersionId"), str) else None,  # type: ignore[arg-type]
            state=EntryState(d.get("State")),
            ranges=RangeSet.from_json(d.get("Ranges")),
            verified=tuple(str(v) for v in d.get("Verified") or ()),  # type: ignore[attr-defined]
            synced=d.get("Synced") is True,
            boot_id=str(d.get("BootId", "")),
            last_used=float(d.get("LastUsed", 0.0)),  # type: ignore[arg-type]
        )
        return rec


def _str(d: dict[str, object], k: str) -> str:
    v = d.get(k)
    if not isinstance(v, str):
        raise ValueError(f"{k} must be a string")
    return v


def _int(d: dict[str, object], k: str) -> int:
    v = d.get(k)
    if not isinstance(v, int) or v < 0:
        raise ValueError(f"{k} must be a non-negative integer")
    return v


class CacheDir:
    SECRET = ".secret"

    def __init__(self, path: Path, boot_id: str | None = None) -> None:
        self.path = path
        self.boot_id = boot_id if boot_id is not None else current_boot_id()
        self._secret: bytes | None = None

    def open(self, group: int | None) -> None:
        """Create the directory (traverse-only for `group`) and load or make the secret that names entries.

        A secret that is missing or not exactly SECRET_BYTES long (a crash
        while an older version wrote it, a truncated copy) is replaced, and
        every entry goes with it: their names were keyed with a secret that
        is lost, and a short one makes names guessable."""
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Under the shipped unit systemd made the directory ours, with this
        # group and mode, already: change only what differs (chown(2) is
        # refused there by SystemCallFilter=~@privileged). No setgid bit:
        # files are 0600 with ACLs, their group does not matter, and the
        # unit's RestrictSUIDSGID= refuses it.
        st = self.path.stat()
        if group is not None and st.st_gid != group:
            os.chown(self.path, -1, group)
        mode = 0o710 if group is not None else 0o700
        if stat.S_IMODE(st.st_mode) != mode:
            os.chmod(self.path, mode)
        secret_path = self.path / self.SECRET
        try:
            secret = secret_path.read_bytes()
        except FileNotFoundError:
            secret = b""
        if len(secret) != SECRET_BYTES:
            self._drop_entries()
            secret = secrets.token_bytes(SECRET_BYTES)
            self._write_atomically(secret_path, secret)
        self._secret = secret

    def _drop_entries(self) -> None:
        with os.scandir(self.path) as it:
            names = [e.name for e in it if e.name != self.SECRET]
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                (self.path / name).unlink()

    def _write_atomically(self, path: Path, data: bytes) -> None:
        """tmp, fsync, rename, fsync of the directory: after a crash the file
        is either the old one or complete, never empty or short."""
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        dfd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def entry_id(self, endpoint: str, bucket: str, key: str, etag: str) -> str:
        if self._secret is None:
            raise RuntimeError("CacheDir.open() first")
        return entry_id(endpoint, bucket, key, etag, self._secret)

    def data_path(self, rid: str) -> Path:
        return self.path / f"{rid}.data"

    def part_path(self, rid: str) -> Path:
        return self.path / f"{rid}.part"

    def record_path(self, rid: str) -> Path:
        return self.path / f"{rid}.json"

    def write_record(self, rec: Record) -> None:
        # Owner-only: records name other tenants' buckets and keys.
        tmp = self.path / f"{rec.id}.json.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(json.dumps(rec.to_json()).encode())
        os.replace(tmp, self.record_path(rec.id))

    def open_part(self, rid: str, size: int, allocate: bool = True) -> tuple[int, bool]:
        """The part file of `rid`, open for writing at `size` bytes, and
        whether its blocks are reserved (`reserve`; a URL read's entry stays
        sparse: it holds only what was read). 0600 always, also for a part
        file an older version left group-readable. What is in it stays."""
        fd = os.open(self.part_path(rid), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            os.fchmod(fd, 0o600)
            if os.fstat(fd).st_size != size:
                os.ftruncate(fd, size)
            return fd, reserve(fd, size) if allocate else False
        except BaseException:
            os.close(fd)
            raise

    def finish(self, rec: Record) -> None:
        """`rec` (a COMPLETE snapshot) is done: its part file becomes its data
        file, then its record says so (the order the scan relies on)."""
        os.replace(self.part_path(rec.id), self.data_path(rec.id))
        self.write_record(rec)

    def remove(self, rid: str) -> None:
        for p in (self.record_path(rid), self.data_path(rid), self.part_path(rid)):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()

    def load(self, rid: str) -> Record | None:
        """The record of `rid` if it describes files that may be used, else
        None (and whatever is unusable is removed)."""
        try:
            raw = json.loads(self.record_path(rid).read_bytes())
            rec = Record.from_json(rid, raw)
            if self.entry_id(rec.endpoint, rec.bucket, rec.key, rec.etag) != rid:
                raise ValueError("record does not match its file name")
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):
            self.remove(rid)
            return None
        same_boot = rec.boot_id == self.boot_id and rec.boot_id != "unknown"
        if rec.state is EntryState.COMPLETE:
            try:
                st = self.data_path(rid).stat()
            except FileNotFoundError:
                st = None
            if st is None or st.st_size != rec.size or not (rec.synced or same_boot):
                self.remove(rid)
                return None
            # The process that granted access is gone, and with it its jobs
            # (docs/design.md, Cache). The group bits show an
            # ACL's mask, so a file without them grants nobody (a file an
            # older version left group-readable 0640 is made 0600 too).
            if st.st_mode & 0o077:
                try:
                    acl.set_readers(self.data_path(rid), ())
                except OSError:
                    self.remove(rid)  # never serve a file whose access is unknown
                    return None
            return rec
        if not self.part_path(rid).exists() and rec.ranges:
            rec.ranges = RangeSet()  # the record is written before its part file
            self.write_record(rec)
        if not same_boot:
            rec.ranges = RangeSet()  # unsynced bytes may not have survived the reboot
            rec.boot_id = self.boot_id
            self.write_record(rec)
        return rec

    def fsync(self, path: Path) -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def scan(self, busy: Callable[[str], bool]) -> list[Record]:
        """Every usable record; removes orphans and leftovers. Blocking: run in
        a thread. Ids for which `busy` is true (downloads in flight) are left
        alone: their record is written before their part file."""
        records: list[Record] = []
        ids: set[str] = set()
        names: list[str] = []
        with os.scandir(self.path) as it:
            for e in it:
                names.append(e.name)
                if e.name.endswith(".json"):
                    ids.add(e.name[: -len(".json")])
        for rid in sorted(ids):
            if busy(rid):
                continue
            rec = self.load(rid)
            if rec is not None:
                records.append(rec)
        kept = {r.id for r in records}
        for name in names:
            stem, _, suffix = name.partition(".")
            if suffix in ("data", "part", "json.tmp") and stem not in kept and not busy(stem):
                with contextlib.suppress(FileNotFoundError):
                    (self.path / name).unlink()
        return records
