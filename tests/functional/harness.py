"""What functional tests drive the daemon with: a client that checks every
answer against daemon/openapi.yaml, and the request bodies they start from."""

from __future__ import annotations

import asyncio
import io
import os
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import yaml
from openapi_schema_validator import OAS30ReadValidator, oas30_format_checker
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4

from s3feed.daemon.service import Daemon
from tests.fakes.store import FakeObjectStore
from tests.fakes.sts import FakeSts
from tests.fakes.upload import FakeUploadStore

OPENAPI = yaml.safe_load((Path(__file__).parents[2] / "daemon" / "openapi.yaml").read_text())
ACME_ROLE = "arn:aws:iam::123456789012:role/acme-reader"
ACME_URI = "https://acme-media.s3.eu-west-1.amazonaws.com/sources/"


# The whole document as one resource, so the schemas' own `#/components/...`
# references resolve as any OpenAPI tool resolves them.
_DOC_URI = "urn:s3feed:openapi"
_REGISTRY: Registry[Any] = Registry().with_resource(
    _DOC_URI, Resource.from_contents(OPENAPI, default_specification=DRAFT4)
)


def _json_schema_pointer(template: str, method: str, status: str) -> str | None:
    """Where the JSON body's schema of this answer is in the document (after a
    response `$ref`), or None when the answer has no JSON body."""
    escaped = template.replace("~", "~0").replace("/", "~1")
    pointer = f"/paths/{escaped}/{method}/responses/{status}"
    response = OPENAPI["paths"][template][method]["responses"][status]
    if "$ref" in response:
        pointer = response["$ref"].removeprefix("#")
        response = OPENAPI
        for part in pointer.strip("/").split("/"):
            response = response[part]
    if "application/json" not in response.get("content", {}):
        return None
    return f"{pointer}/content/application~1json/schema"


def check_json(body: Any, template: str, method: str, status: str) -> None:
    """`body` against the answer's schema, by an OpenAPI 3.0 validator (nullable,
    formats, references as the document means them)."""
    pointer = _json_schema_pointer(template, method, status)
    if pointer is None:
        return
    validator = OAS30ReadValidator(
        {"$ref": f"{_DOC_URI}#{pointer}"},
        registry=_REGISTRY,
        format_checker=oas30_format_checker,
    )
    validator.validate(body)


def _template(path: str) -> str | None:
    parts = path.split("?")[0].strip("/").split("/")
    for template in OPENAPI["paths"]:
        tparts = template.strip("/").split("/")
        if tparts[-1] == "{Key}" and len(parts) >= len(tparts):
            parts_cmp = parts[: len(tparts) - 1]
            tcmp = tparts[:-1]
        elif len(tparts) == len(parts):
            parts_cmp, tcmp = parts, tparts
        else:
            continue
        if all(t.startswith("{") or t == p for t, p in zip(tcmp, parts_cmp, strict=True)):
            return template
    return None


@dataclass
class Answer:
    status: int
    headers: Any
    body: bytes

    @property
    def json(self) -> Any:
        return orjson.loads(self.body)

    @property
    def code(self) -> str:
        return str(self.json["Error"]["Code"])


@dataclass
class Harness:
    daemon: Daemon
    socket: str
    sts: FakeSts
    stores: dict[str, FakeObjectStore]
    session: aiohttp.ClientSession
    uploads: dict[str, FakeUploadStore] = field(default_factory=dict)  # by destination bucket
    seen: set[tuple[str, str, int]] = field(default_factory=set)

    def store(self, bucket: str = "acme-media") -> FakeObjectStore:
        return self.stores.setdefault(bucket, FakeObjectStore(bucket=bucket, endpoint="fake://s3"))

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Answer:
        data = raw if raw is not None else (orjson.dumps(body) if body is not None else None)
        payload = io.BytesIO(data) if data is not None else None
        async with self.session.request(method, path, data=payload, headers=headers) as resp:
            answer = Answer(resp.status, resp.headers, await resp.read())
        self.check(method, path, answer)
        return answer

    def check(self, method: str, path: str, answer: Answer) -> None:
        """Every route and status the server answers is in the OpenAPI document."""
        template = _template(path)
        assert template is not None, f"{path} is not in openapi.yaml"
        operation = OPENAPI["paths"][template].get(method.lower())
        if operation is None:
            assert answer.status == 405, (method, path, answer.status)
            return
        responses = operation["responses"]
        assert str(answer.status) in responses, f"{method} {template} answered {answer.status}"
        self.seen.add((method, template, answer.status))
        if _json_schema_pointer(template, method.lower(), str(answer.status)) is not None:
            check_json(answer.json, template, method.lower(), str(answer.status))

    async def create_job(
        self, job_id: str = "job-1", tenant: str = "acme-films", **source: Any
    ) -> Answer:
        src = {"Provider": "AmazonS3", "UriPath": ACME_URI, "RoleArnToAssume": ACME_ROLE}
        src.update(source)
        return await self.request(
            "POST", "/v1/jobs", {"JobId": job_id, "TenantName": tenant, "Source": src}
        )


# A client of another uid may not read a virtualenv under /root: the system
# interpreter is enough (the script uses the standard library only).
SYSTEM_PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable


async def request_as(
    socket: str,
    method: str,
    path: str,
    body: Any = None,
    *,
    uid: int | str = "nobody",
    gid: int | str = "nogroup",
    groups: tuple[int, ...] = (),
    tcp: str | None = None,
) -> tuple[int, Any]:
    """One request from a process of another uid (setpriv; needs root), with
    `groups` as its supplementary groups, on the Unix socket or, with `tcp`
    ("HOST:PORT"), on the URL listener. (status, JSON body or the bytes'
    length for a non-JSON answer)."""
    script = textwrap.dedent(
        f"""
        import http.client, json, socket
        class C(http.client.HTTPConnection):
            def connect(self):
                self.sock = socket.socket(socket.AF_UNIX)
                self.sock.connect({socket!r})
        c = http.client.HTTPConnection({tcp!r}) if {tcp!r} else C("localhost")
        body = {orjson.dumps(body).decode() if body is not None else None!r}
        c.request({method!r}, {path!r}, body=body,
                  headers={{"Content-Type": "application/json"}} if body else {{}})
        r = c.getresponse()
        data = r.read()
        try:
            out = json.loads(data or b"null")
        except ValueError:
            out = len(data)
        print(json.dumps([r.status, out]))
        """
    )
    groups_arg = f"--groups={','.join(map(str, groups))}" if groups else "--clear-groups"
    # The daemon runs on this test's event loop: the client must not block it.
    proc = await asyncio.create_subprocess_exec(
        "setpriv",
        f"--reuid={uid}",
        f"--regid={gid}",
        groups_arg,
        SYSTEM_PYTHON,
        "-I",
        "-c",
        script,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(30):
        out, err = await proc.communicate()
    assert proc.returncode == 0, err
    status, answer = orjson.loads(out)
    return int(status), answer
