"""S3 over HTTP: the daemon's one connection pool, signing, S3's answers, and the
ObjectStore and UploadClient of a job's buckets.

The names below are this package's public face: nothing outside it imports
its modules directly (tests/unit/test_layout.py walks the imports).
"""

from s3feed.transfer.s3.client import S3Client
from s3feed.transfer.s3.objects import S3ObjectStore
from s3feed.transfer.s3.uploader import S3Uploader

__all__ = [
    "S3Client",
    "S3ObjectStore",
    "S3Uploader",
]
