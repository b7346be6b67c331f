"""A job's bucket answers in the job's region: checked at registration, once per bucket.

Design note (docs/design.md, Socket API: registering a job). A UriPath names
the bucket's region, and every request of the job is signed for it; a wrong
one used to surface only at the first fetch or stream (InvalidUriPath). After
the role is assumed, `RegionCheck.check` asks S3 for one key of the job's
folder (ListObjectsV2, max-keys 1, prefix = the folder: what the job's
session policy allows) with the job's own credentials. S3 checks the
endpoint and the signature's region before it checks access, so a bucket in
another region answers 301 PermanentRedirect or AuthorizationHeaderMalformed,
which transfer/s3/translate.py makes InvalidUriPath naming the bucket's
region: the registration fails with it. Any other answer (the objects,
AccessDenied for a role without s3:ListBucket, NoSuchBucket) shows the
region is right, or is not a region problem, and the registration goes on.
So does no answer within `TIMEOUT` or a transient failure: registering never
waited for S3 before, and the first transfer will say what is wrong.

A right answer is kept per (endpoint, bucket, region) for as long as the
daemon runs (a bucket never moves; the `KEEP` most recent), so jobs on a bucket
the daemon has seen cost no request. Runs on the event loop, in the
registration's task; a cancelled registration cancels the request.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict

from s3feed.auth import AuthError
from s3feed.transfer import ObjectStore, S3Location, TransferError

TIMEOUT = 5.0  # seconds S3 gets to answer the check
KEEP = 4096  # buckets remembered


class RegionCheck:
    def __init__(self, *, timeout: float = TIMEOUT, keep: int = KEEP) -> None:
        self._timeout = timeout
        self._keep = keep
        self._known: OrderedDict[tuple[str, str, str], None] = OrderedDict()
        self.requests = 0  # checks that went to S3

    async def check(self, store: ObjectStore, location: S3Location) -> None:
        """Raise InvalidUriPath when S3 says the bucket is in another region."""
        known = (store.endpoint, location.bucket, location.region)
        if known in self._known:
            self._known.move_to_end(known)
            return
        self.requests += 1
        try:
            async with asyncio.timeout(self._timeout):
                await store.list_page(location.prefix_for(""), max_keys=1)
        except TransferError as exc:
            if exc.code == "InvalidUriPath":
                raise  # S3 named the bucket's region
            if exc.code == "S3Unavailable":
                return  # no answer that tells: not remembered, the first transfer will say
            # S3 answered (AccessDenied, NoSuchKey...): the region is right
        except (AuthError, TimeoutError):
            return
        self._known[known] = None
        while len(self._known) > self._keep:
            self._known.popitem(last=False)
