"""transfer/cache/acl.py: the xattr format, and what the kernel makes of it on real files.

The files live on the test's own tmp_path (ext4 here) and on /dev/shm (tmpfs);
opening them as other uids is tests/integration/test_cache_acl.py.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from s3feed.transfer.cache import acl


def _dirs() -> list[str]:
    return ["tmp_path", "/dev/shm"] if os.path.isdir("/dev/shm") else ["tmp_path"]


@pytest.fixture(params=_dirs())
def where(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    if request.param == "tmp_path":
        yield tmp_path
        return
    with tempfile.TemporaryDirectory(dir=request.param) as d:
        yield Path(d)


def _file(d: Path) -> Path:
    f = d / "entry.data"
    f.write_bytes(b"media")
    f.chmod(0o600)
    return f


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_encode_is_the_kernels_layout_sorted_and_deduplicated() -> None:
    value = acl.encode([1002, 1001, 1002])
    assert value[:4] == b"\x02\x00\x00\x00", "little-endian version 2"
    assert acl.decode(value) == [
        (acl.USER_OBJ, acl.READ | acl.WRITE, acl.UNDEFINED_ID),
        (acl.USER, acl.READ, 1001),
        (acl.USER, acl.READ, 1002),
        (acl.GROUP_OBJ, 0, acl.UNDEFINED_ID),
        (acl.MASK, acl.READ, acl.UNDEFINED_ID),
        (acl.OTHER, 0, acl.UNDEFINED_ID),
    ]


@pytest.mark.parametrize("uid", [-1, 0xFFFFFFFF, 1 << 32])
def test_encode_refuses_uids_the_kernel_cannot_name(uid: int) -> None:
    with pytest.raises(ValueError, match="out of range"):
        acl.encode([uid])


@pytest.mark.parametrize(
    "value", [b"", b"\x02\x00\x00", b"\x02\x00\x00\x00\x01", b"\x01\x00\x00\x00"]
)
def test_decode_refuses_malformed_values(value: bytes) -> None:
    with pytest.raises(ValueError):
        acl.decode(value)


def test_the_directories_of_these_tests_keep_acls(where: Path) -> None:
    assert acl.supported(where)
    assert [p.name for p in where.iterdir()] == [], "the probe file is gone"


def test_set_readers_grants_exactly_those_uids(where: Path) -> None:
    f = _file(where)
    acl.set_readers(f, {1001, 1002})
    assert acl.readers(f) == {1001, 1002}
    entries = {(tag, i): perm for tag, perm, i in acl.decode(os.getxattr(f, acl.XATTR))}
    assert entries[(acl.GROUP_OBJ, acl.UNDEFINED_ID)] == 0, "the owning group reads nothing"
    assert entries[(acl.OTHER, acl.UNDEFINED_ID)] == 0
    # The kernel shows the mask as the mode's group bits; the group's own entry is ---.
    assert _mode(f) == 0o640
    acl.set_readers(f, {1003})
    assert acl.readers(f) == {1003}, "the set is replaced, not added to"


def test_an_empty_set_makes_a_plain_0600_file(where: Path) -> None:
    f = _file(where)
    acl.set_readers(f, {1001})
    acl.set_readers(f, ())
    assert acl.readers(f) == frozenset() and _mode(f) == 0o600
    assert acl.XATTR not in os.listxattr(f)
    acl.set_readers(f, ())  # nothing to remove: no error
    f.chmod(0o640)  # as an older version left its files
    acl.set_readers(f, ())
    assert _mode(f) == 0o600


def test_file_descriptors_work_like_paths(where: Path) -> None:
    f = _file(where)
    fd = os.open(f, os.O_RDONLY)
    try:
        acl.set_readers(fd, [4242])
        assert acl.readers(fd) == {4242} == acl.readers(f)
        acl.set_readers(fd, [])
        assert acl.readers(fd) == frozenset() and _mode(f) == 0o600
    finally:
        os.close(fd)


def test_a_mask_without_read_grants_nobody(tmp_path: Path) -> None:
    f = _file(tmp_path)
    acl.set_readers(f, [1001])
    f.chmod(0o600)  # chmod lowers the mask to the group bits: ---
    assert acl.readers(f) == frozenset()


def test_without_acls_granting_says_so_and_revoking_still_chmods(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A real file system without ACLs (ramfs) is in the integration tests.
    def no_acls(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    f = _file(tmp_path)
    f.chmod(0o640)
    monkeypatch.setattr(os, "setxattr", no_acls)
    monkeypatch.setattr(os, "removexattr", no_acls)
    with pytest.raises(acl.AclUnsupported) as refused:
        acl.set_readers(f, [1001])
    # Still an OSError with the kernel's errno: the cache's `except OSError`
    # around every ACL change fails closed on it (transfer/cache/grants.py).
    assert isinstance(refused.value, OSError) and refused.value.errno == errno.EOPNOTSUPP
    assert str(refused.value) == "no POSIX ACLs on this file system"
    assert not acl.supported(tmp_path)
    acl.set_readers(f, [])
    assert _mode(f) == 0o600


def test_filesystem_names_the_mount(tmp_path: Path) -> None:
    assert " mounted on /" in acl.filesystem(tmp_path)
    if os.path.isdir("/dev/shm"):
        assert acl.filesystem(Path("/dev/shm")).startswith("tmpfs mounted on /dev/shm")
