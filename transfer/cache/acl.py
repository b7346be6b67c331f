"""Per-uid read access to one file: POSIX ACL entries in the kernel's xattr form.

A cache file is the daemon's, mode 0600; a job's users get `user:UID:r--`
entries, with `mask::r--` and nothing for the owning group or others (see
docs/design.md, Cache). The set of entries is replaced as a
whole on every change, so what a file grants is always exactly the union the
cache computed; an empty set makes it a plain 0600 file again.

Why the xattr by hand and not a library or setfacl (Debian 12, Python 3.11,
2026-11): pylibacl 0.7.3, the maintained binding, ships only a source
distribution, and `pip install pylibacl` fails on a fresh host with
"sys/acl.h: No such file or directory" (it needs libacl1-dev and gcc); the
`setfacl` tool is not installed either (Debian package `acl`), and a fork and
exec per grant costs far more than the setxattr below (docs/design.md,
Performance notes: File calls). The access ACL is a documented, stable kernel
format (include/uapi/linux/posix_acl_xattr.h): a little-endian u32 version 2,
then one (u16 tag, u16 perm, u32 id) triple per entry, sorted by tag and then
id. `os.setxattr` of it is one system call; the kernel checks the entries and
sets the mode's group bits from the mask (so `ls -l` shows `-rw-r-----+`,
while the owning group's own entry is `---`).

Reading is never blocked for root (it bypasses ACLs), which is fine: root can
read anything on the host anyway.
"""

from __future__ import annotations

import contextlib
import errno
import os
import struct
import tempfile
from collections.abc import Iterable
from pathlib import Path

from s3feed.transfer.errors import AclUnsupported

XATTR = "system.posix_acl_access"
VERSION = 2
UNDEFINED_ID = 0xFFFFFFFF

# e_tag values
USER_OBJ = 0x01
USER = 0x02
GROUP_OBJ = 0x04
GROUP = 0x08
MASK = 0x10
OTHER = 0x20

READ, WRITE = 0x4, 0x2

MAX_UID = 0xFFFFFFFE  # (uid_t)-1 means "no uid"

_HEADER = struct.Struct("<I")
_ENTRY = struct.Struct("<HHI")

# What a file system without ACLs (or with them switched off) answers.
_UNSUPPORTED = {errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS}


FileRef = int | str | os.PathLike[str]


def encode(readers: Iterable[int]) -> bytes:
    """The xattr value granting read to `readers`, owner rw, nobody else."""
    uids = sorted(set(readers))
    for uid in uids:
        if not 0 <= uid <= MAX_UID:
            raise ValueError(f"uid {uid} out of range 0..{MAX_UID}")
    entries = [(USER_OBJ, READ | WRITE, UNDEFINED_ID)]
    entries += [(USER, READ, uid) for uid in uids]
    entries += [(GROUP_OBJ, 0, UNDEFINED_ID), (MASK, READ, UNDEFINED_ID), (OTHER, 0, UNDEFINED_ID)]
    return _HEADER.pack(VERSION) + b"".join(_ENTRY.pack(*e) for e in entries)


def decode(value: bytes) -> list[tuple[int, int, int]]:
    """(tag, perm, id) of every entry; ValueError on a malformed value."""
    if len(value) < _HEADER.size or (len(value) - _HEADER.size) % _ENTRY.size:
        raise ValueError(f"an ACL xattr of {len(value)} bytes")
    (version,) = _HEADER.unpack_from(value)
    if version != VERSION:
        raise ValueError(f"ACL xattr version {version}")
    return list(_ENTRY.iter_unpack(value[_HEADER.size :]))


def set_readers(file: FileRef, uids: Iterable[int]) -> None:
    """Make `file` readable by exactly `uids` (and its owner, and root).

    Empty: the file becomes plain 0600 without extended entries. The mode is
    set first, so revoking never passes through a state where the owning
    group could read (a chmod of a file with an ACL lowers its mask at once).
    Raises AclUnsupported where the file system has no ACLs and `uids` is not
    empty; revoking there is just the chmod.
    """
    readers = frozenset(uids)
    value = encode(readers) if readers else b""
    if not readers:
        _chmod(file, 0o600)
        try:
            if isinstance(file, int):
                os.removexattr(file, XATTR)
            else:
                os.removexattr(file, XATTR, follow_symlinks=False)
        except OSError as exc:
            if exc.errno not in _UNSUPPORTED and exc.errno != errno.ENODATA:
                raise
        return
    try:
        if isinstance(file, int):
            os.setxattr(file, XATTR, value)
        else:
            os.setxattr(file, XATTR, value, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in _UNSUPPORTED:
            raise AclUnsupported("no POSIX ACLs on this file system", exc.errno) from exc
        raise


def readers(file: FileRef) -> frozenset[int]:
    """The uids a `user:UID:` entry lets read `file` (through the mask)."""
    try:
        if isinstance(file, int):
            value = os.getxattr(file, XATTR)
        else:
            value = os.getxattr(file, XATTR, follow_symlinks=False)
    except OSError as exc:
        if exc.errno == errno.ENODATA or exc.errno in _UNSUPPORTED:
            return frozenset()
        raise
    entries = decode(value)
    mask = next((perm for tag, perm, _ in entries if tag == MASK), READ | WRITE)
    if not mask & READ:
        return frozenset()
    return frozenset(uid for tag, perm, uid in entries if tag == USER and perm & READ)


def supported(directory: Path) -> bool:
    """Whether files in `directory` keep per-uid ACL entries: a temporary
    file is given one (for a uid nobody uses) and read back."""
    probe_uid = MAX_UID - 1
    fd, name = tempfile.mkstemp(prefix=".acl-probe-", dir=directory)
    try:
        set_readers(fd, [probe_uid])
        return readers(fd) == {probe_uid}
    except AclUnsupported:
        return False
    finally:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)


def _chmod(file: FileRef, mode: int) -> None:
    if isinstance(file, int):
        os.fchmod(file, mode)
    else:
        os.chmod(file, mode)


def filesystem(path: Path) -> str:
    """The type and mount point of the file system holding `path` (for messages)."""
    best = ("", "unknown file system")
    target = str(path.resolve())
    with contextlib.suppress(OSError), open("/proc/self/mounts") as mounts:
        for line in mounts:
            fields = line.split()
            if len(fields) < 3:
                continue
            point = fields[1].replace("\\040", " ")
            inside = target == point or target.startswith(point.rstrip("/") + "/")
            if inside and len(point) >= len(best[0]):
                best = (point, f"{fields[2]} mounted on {point}")
    return best[1]
