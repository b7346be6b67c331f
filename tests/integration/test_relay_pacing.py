"""localaws/relay.py in front of the session's SeaweedFS: a real signed GET
through it returns the object's bytes, and the relay's own accounting shows
it paced them (it never ran ahead of its rate by more than one slice, and it
had to stop reading to hold that) and delayed the request. No assertion on
how long anything took: the accounting is the relay's clock, and a busy
machine can only make it later, never ahead."""

from __future__ import annotations

import contextlib
import os
import secrets

from conftest import Seaweed

import localaws
from localaws.relay import Link, in_thread

SIZE = 3 << 20


def test_a_get_through_the_relay_is_exact_and_paced(seaweed: Seaweed) -> None:
    key = f"relay-{secrets.token_hex(6)}.bin"
    body = os.urandom(SIZE)
    link = Link(rate=8e6, delay=0.02, burst=256 << 10, slice=64 << 10)
    with seaweed.closing_client("s3") as s3:
        s3.put_object(Bucket=seaweed.bucket, Key=key, Body=body)
        try:
            with in_thread(seaweed.endpoint_url, link) as relay:
                # Signed for the relay's address: the Host header passes unchanged.
                url = f"http://127.0.0.1:{relay.port}"
                far = localaws.client(
                    "s3",
                    url,
                    seaweed.admin_access_key_id,
                    seaweed.admin_secret_access_key,
                    None,
                    seaweed.region,
                )
                with contextlib.closing(far):
                    got = far.get_object(Bucket=seaweed.bucket, Key=key)["Body"].read()
                conns = [c for c in relay.connections if c.bytes_down]
        finally:
            s3.delete_object(Bucket=seaweed.bucket, Key=key)

    assert got == body
    [conn] = conns
    assert conn.requests == 1
    assert conn.first_up is not None and conn.first_up - conn.opened >= 2 * link.delay
    assert conn.bytes_down > SIZE  # the body and the answer's head
    assert conn.max_ahead <= link.slice, "bytes went out faster than the pace"
    # Past its depth the bucket must have stopped upstream reading at least
    # once per burst's worth of bytes to hold the pace.
    assert conn.pauses >= (SIZE - link.burst) // link.burst
    assert conn.paced_s > 0
