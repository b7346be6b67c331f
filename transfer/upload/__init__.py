"""Uploads: bytes arriving on the socket -> one object in S3, within one memory budget.

The names below are this package's public face: nothing outside it imports
its modules directly (tests/unit/test_layout.py walks the imports).
"""

from s3feed.transfer.upload.memory import UploadMemory
from s3feed.transfer.upload.multipart import (
    CHECKSUM,
    MIN_PART,
    BodyError,
    Encryption,
    PartDone,
    Upload,
    UploadClient,
    UploadConfig,
    content_type_for,
    upload,
)

__all__ = [
    "CHECKSUM",
    "MIN_PART",
    "BodyError",
    "Encryption",
    "PartDone",
    "Upload",
    "UploadClient",
    "UploadConfig",
    "UploadMemory",
    "content_type_for",
    "upload",
]
