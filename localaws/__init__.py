"""A real local AWS on 127.0.0.1 for the integration tests, the benchmark and the demo.

ministack (the default) is the S3 + STS + IAM server with real auth semantics:
the daemon's IAM user, one role per tenant (trust policy requiring
sts:ExternalId = tenant name), a role the daemon can never assume, and the
tenants' buckets with sample media, checked after each start to be enforced.
SeaweedFS is the fast one, for throughput tests and the benchmark.

Not part of the wheel: tests, bench/ and scripts/ import it from the
repository root (pytest's `pythonpath`, `python -m bench.run`, the scripts'
own path). One module per job:

    state      where things live (Paths), the lock, state.json, shared constants
    install    the servers' virtualenvs
    media      sample media and objects
    processes  spawn, wait, find ports, stop process groups
    s3         botocore clients, uploads, emptying buckets
    iam        users, roles, policies, buckets (ministack and SeaweedFS)
    checks     that a started server enforces what the tests rely on
    servers    start/stop/status/env, and acquire/release for test sessions
    daemon     `s3feed serve` as a subprocess (tests and bench)
    relay      a pacing TCP relay: S3 as if remote (bench --link remote)
    cli        python -m localaws install|start|stop|status|env|relay

The names below are the ones callers use; import them from `localaws`.
"""

from .checks import verify_ministack, verify_seaweed
from .iam import (
    ACME_BUCKET,
    ACME_ROLE,
    ACME_TENANT,
    DAEMON_USER,
    GLOBEX_BUCKET,
    GLOBEX_ROLE,
    GLOBEX_TENANT,
    GLOBEX_TEST_BUCKET_PREFIX,
    SEAWEED_BUCKET,
    SEAWEED_ROLE,
    SEAWEED_WRITER_ROLE,
    TEST_BUCKET_PREFIX,
    UNTRUSTING_ROLE,
    role_arn,
)
from .install import install
from .media import MEDIA_MP4_KEY, MEDIA_TS_KEY, MULTIPART_KEY, mp4_top_level_boxes, sample_bytes
from .processes import alive, free_port, kill_group, listening_ports, pids_in_group
from .s3 import client, closing_client, empty_and_delete_bucket, error_code, put_object
from .servers import (
    acquire,
    env_vars,
    find_s3_port,
    release,
    start_ministack,
    start_seaweed,
    status,
    stop,
)
from .state import ACCOUNT_ID, ENV_PREFIX, HOST, REGION, LocalAwsError, Paths, read_state

__all__ = [
    "ACCOUNT_ID",
    "ACME_BUCKET",
    "ACME_ROLE",
    "ACME_TENANT",
    "DAEMON_USER",
    "ENV_PREFIX",
    "GLOBEX_BUCKET",
    "GLOBEX_ROLE",
    "GLOBEX_TENANT",
    "GLOBEX_TEST_BUCKET_PREFIX",
    "HOST",
    "MEDIA_MP4_KEY",
    "MEDIA_TS_KEY",
    "MULTIPART_KEY",
    "REGION",
    "SEAWEED_BUCKET",
    "SEAWEED_ROLE",
    "SEAWEED_WRITER_ROLE",
    "TEST_BUCKET_PREFIX",
    "UNTRUSTING_ROLE",
    "LocalAwsError",
    "Paths",
    "acquire",
    "alive",
    "client",
    "closing_client",
    "empty_and_delete_bucket",
    "env_vars",
    "error_code",
    "find_s3_port",
    "free_port",
    "install",
    "kill_group",
    "listening_ports",
    "mp4_top_level_boxes",
    "pids_in_group",
    "put_object",
    "read_state",
    "release",
    "role_arn",
    "sample_bytes",
    "start_ministack",
    "start_seaweed",
    "status",
    "stop",
    "verify_ministack",
    "verify_seaweed",
]
