"""The socket API, v1: routes, connections, per-uid limits, objects and outputs.

The names below are this package's public face: nothing outside it imports
its modules directly (tests/unit/test_layout.py walks the imports).
"""

from s3feed.daemon.api.accesslog import (
    RequestRecorder,
    access_log_class,
    quiet_malformed_requests,
)
from s3feed.daemon.api.connections import KEEPALIVE_TIMEOUT, Answered, GuardedServer
from s3feed.daemon.api.limits import UidLimits
from s3feed.daemon.api.outputs import UploadJournal, abort_leftovers
from s3feed.daemon.api.peer import Controllers
from s3feed.daemon.api.routes import Api, OutputsConfig

__all__ = [
    "KEEPALIVE_TIMEOUT",
    "Answered",
    "Api",
    "Controllers",
    "GuardedServer",
    "OutputsConfig",
    "RequestRecorder",
    "UidLimits",
    "UploadJournal",
    "abort_leftovers",
    "access_log_class",
    "quiet_malformed_requests",
]
