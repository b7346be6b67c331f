"""The clients' typed answers (client/documents.py): their fields are
daemon/openapi.yaml's, and the typed usage examples (client_examples.py, which
`make lint` runs mypy on) work against the in-process daemon."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest
from client_examples import async_example, blocking_example
from harness import ACME_ROLE, ACME_URI, OPENAPI, Harness

from s3feed.client import (
    Delivery,
    ErrorDetail,
    Health,
    Job,
    JobDestination,
    ObjectInfo,
    ObjectPage,
    Problem,
    Transfer,
    Upload,
)

OUT_URI = "https://acme-out.s3.eu-west-1.amazonaws.com/renditions/"


def _at(pointer: str) -> Any:
    node: Any = OPENAPI
    for part in pointer.strip("/").split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


SCHEMAS = {
    Job: "/components/schemas/Job",
    JobDestination: "/components/schemas/Job/properties/Destination",
    Transfer: "/components/schemas/Transfer",
    ObjectInfo: "/components/schemas/Object",
    Upload: "/components/schemas/Output",
    ErrorDetail: "/components/schemas/ErrorDetail",
    ObjectPage: "/paths/~1v1~1jobs~1{JobId}~1objects/get/responses/200/content/"
    "application~1json/schema",
    Delivery: "/paths/~1v1~1jobs~1{JobId}~1objects~1{Key}/post/responses/200/content/"
    "application~1json/schema",
    Health: "/paths/~1healthz/get/responses/200/content/application~1json/schema",
    Problem: "/paths/~1healthz/get/responses/200/content/application~1json/schema/"
    "properties/Problems/items",
}


@pytest.mark.parametrize("typed", list(SCHEMAS), ids=lambda t: t.__name__)
def test_each_typed_answer_has_the_documents_fields(typed: Any) -> None:
    schema = _at(SCHEMAS[typed])
    assert set(typed.__annotations__) == set(schema["properties"])
    assert typed.__required_keys__ == set(schema.get("required", []))


async def test_the_typed_examples_run_against_the_daemon(harness: Harness) -> None:
    harness.store().put("sources/a.ts", b"0123456789")
    harness.store().put("sources/b.ts", b"x")
    seen = await asyncio.to_thread(blocking_example, harness.socket, ACME_URI, ACME_ROLE, OUT_URI)
    assert seen == [
        "job typed-1 expires soon",
        "outputs to s3://acme-out/renditions/",
        "first page: 1, more: True",
        "a.ts 10",
        "b.ts 1",
        "fetched 10 bytes, verified ['MD5']",
        "streamed b'0123'",
        "uploaded renditions/out/a.m3u8 8 ['CRC32C']",
        "error 404 NoSuchJob",
        "jobs now 0",
    ]
    stored = harness.uploads["acme-out"].objects["renditions/out/a.m3u8"]
    assert stored.headers["x-amz-server-side-encryption"] == "AES256"
    seen = await async_example(harness.socket, ACME_URI, ACME_ROLE)
    assert seen == [
        "job typed-2 acme-media",
        "keys ['a.ts', 'b.ts']",
        "fetch done 10",
        "jobs ['typed-2']",
    ]


async def test_create_job_sends_destination_and_encoder_uids(harness: Harness) -> None:
    from s3feed.client import AsyncClient, Destination

    async with AsyncClient(harness.socket) as client:
        job = await client.create_job(
            "typed-3",
            "acme-films",
            ACME_URI,
            ACME_ROLE,
            destination=Destination(
                OUT_URI, server_side_encryption="aws:kms", kms_key_id="alias/out"
            ),
            encoder_uids=[4242, 4242, os.getuid() + 1],
        )
        assert job["EncoderUids"] == sorted({4242, os.getuid() + 1})
        assert job["Destination"]["SSEKMSKeyId"] == "alias/out"
        # Before 0.3 the fields were given as they are: still so.
        old = await client.create_job("typed-4", "acme-films", ACME_URI, ACME_ROLE, EncoderUids=[7])
        assert old["EncoderUids"] == [7] and "Destination" not in old
        with pytest.raises(TypeError, match="EncoderUids given twice"):
            await client.create_job(
                "typed-5", "acme-films", ACME_URI, ACME_ROLE, encoder_uids=[1], EncoderUids=[2]
            )
