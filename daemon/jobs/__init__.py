"""Jobs: what an encoder registered, the registry of live jobs, their transfer records.

The names below are this package's public face: nothing outside it imports
its modules directly (tests/unit/test_layout.py walks the imports).
"""

from s3feed.daemon.jobs.job import Job
from s3feed.daemon.jobs.records import TransferRecord, TransferState
from s3feed.daemon.jobs.registry import JobRegistry
from s3feed.daemon.jobs.request import JobRequest, parse_job_request
from s3feed.daemon.jobs.state import JobState

__all__ = [
    "Job",
    "JobRegistry",
    "JobRequest",
    "JobState",
    "TransferRecord",
    "TransferState",
    "parse_job_request",
]
