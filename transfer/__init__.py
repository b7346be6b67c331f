"""S3 locations, the ranged-GET engine, its sinks (cache file, in-order stream) and the cache.

The names below are this package's public face: nothing outside it imports
its modules directly (tests/unit/test_layout.py walks the imports).
"""

from s3feed.transfer.config import CacheConfig, S3Config, TransferConfig
from s3feed.transfer.engine import Engine
from s3feed.transfer.errors import RETRY_REASONS, InvalidRange, TransferError
from s3feed.transfer.fairshare import Membership
from s3feed.transfer.firstbytes import first_bytes
from s3feed.transfer.objectserver import Authorised, Delivery, ObjectServer
from s3feed.transfer.observer import NullUploadObserver, TransferObserver, UploadObserver
from s3feed.transfer.progress import Progress
from s3feed.transfer.store import MAX_KEYS, ObjectMeta, ObjectStore
from s3feed.transfer.uri import S3Location, parse_uri_path

__all__ = [
    "MAX_KEYS",
    "RETRY_REASONS",
    "Authorised",
    "CacheConfig",
    "Delivery",
    "Engine",
    "InvalidRange",
    "Membership",
    "NullUploadObserver",
    "ObjectMeta",
    "ObjectServer",
    "ObjectStore",
    "Progress",
    "S3Config",
    "S3Location",
    "TransferConfig",
    "TransferError",
    "TransferObserver",
    "UploadObserver",
    "first_bytes",
    "parse_uri_path",
]
