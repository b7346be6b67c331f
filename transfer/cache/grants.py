"""Pins and per-uid grants: which live owners hold which cache entries, and who may open them.

Who may open a file (docs/design.md, Cache): data files are 0600, the
daemon's. Each pin carries the uids its owner (a job) grants; when an entry is
handed to an owner, the file's POSIX ACL becomes the union of the readers of
its live owners, and `unpin_all` takes the owner's uids away again unless
another live owner still grants them. A pinned entry is never evicted.

What runs where: all state lives on the event loop (no locks). ACLs are set on
the loop, one short setxattr each (docs/design.md, Performance notes: File
calls): a revoke is done when the call returns. Revoking must not fail open:
an entry whose ACL cannot be set is dropped at once through `fail_closed` (the
path stops opening for everyone).
"""

from __future__ import annotations

import contextlib
import errno
import logging
from collections.abc import Callable
from pathlib import Path

from s3feed.transfer.cache import acl
from s3feed.transfer.errors import InsufficientStorage

log = logging.getLogger("s3feed.transfer.cache")


class Grants:
    def __init__(self, data_path: Callable[[str], Path], fail_closed: Callable[[str], None]):
        self._data_path = data_path
        self._fail_closed = fail_closed
        self.acl = False  # the directory's file system keeps ACLs (known at start)
        # entry id -> owner -> the uids that owner lets open the entry's file
        self._pins: dict[str, dict[str, frozenset[int]]] = {}

    def __contains__(self, rid: object) -> bool:
        """`rid` is pinned by a live owner."""
        return rid in self._pins

    def pin(self, rid: str, owner: str) -> bool:
        """Pin `rid` for `owner`; True when this made a new pin."""
        owners = self._pins.setdefault(rid, {})
        if owner in owners:
            return False
        owners[owner] = frozenset()
        return True

    def unpin(self, rid: str, owner: str) -> None:
        owners = self._pins.get(rid)
        if owners is None or owner not in owners:
            return
        granted = owners.pop(owner)
        if not owners:
            del self._pins[rid]
        if granted:
            self.apply_or_forget(rid)

    def unpin_all(self, owner: str) -> None:
        for rid in list(self._pins):
            self.unpin(rid, owner)

    def grant(self, rid: str, owner: str, readers: frozenset[int]) -> None:
        """`owner`'s pin of `rid` lets `readers` open the file too."""
        owners = self._pins.get(rid)
        if owners is None or owner not in owners or readers <= owners[owner]:
            return
        before = owners[owner]
        owners[owner] = before | readers
        try:
            self.apply(rid)
        except OSError as exc:
            owners[owner] = before
            self.apply_or_forget(rid)
            if exc.errno not in (errno.ENOSPC, errno.E2BIG):
                raise
            # The file system has no room for that many ACL entries (how many
            # each keeps: docs/design.md, Performance notes: ACL entries).
            raise InsufficientStorage(
                f"the cache file {self._data_path(rid).name} cannot name "
                f"{len(self.readers(rid) | readers)} reader uids (the jobs holding it "
                "grant too many distinct uids for the file system's ACL); end some of "
                "those jobs or give them fewer EncoderUids"
            ) from exc

    def readers(self, rid: str) -> frozenset[int]:
        return frozenset().union(*self._pins.get(rid, {}).values())

    def apply(self, rid: str) -> None:
        """The entry's file grants exactly what its live owners grant."""
        if not self.acl:
            return  # no group sharing here (start() refused it): 0600 is all there is
        with contextlib.suppress(FileNotFoundError):  # evicted or dropped meanwhile
            acl.set_readers(self._data_path(rid), self.readers(rid))

    def apply_or_forget(self, rid: str) -> None:
        try:
            self.apply(rid)
        except OSError:
            log.error("cache entry ACL not set: entry removed", exc_info=True, extra={"entry": rid})
            self._fail_closed(rid)

    def revoke_all(self) -> None:
        """The daemon is stopping: every owner's access ends."""
        for rid in [rid for rid in self._pins if self.readers(rid)]:
            for owner in self._pins[rid]:
                self._pins[rid][owner] = frozenset()
            self.apply_or_forget(rid)
