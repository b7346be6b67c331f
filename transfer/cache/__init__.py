"""The on-disk cache: verified, resumable, shared downloads, and reads at any offset.

The names below are this package's public face: nothing outside it imports
its modules directly (tests/unit/test_layout.py walks the imports).
"""

from s3feed.transfer.cache.cache import Cache
from s3feed.transfer.cache.disk import EntryState
from s3feed.transfer.cache.flight import CacheEntry
from s3feed.transfer.cache.reads import EntryReader
from s3feed.transfer.errors import AclUnsupported

__all__ = [
    "AclUnsupported",
    "Cache",
    "CacheEntry",
    "EntryReader",
    "EntryState",
]
