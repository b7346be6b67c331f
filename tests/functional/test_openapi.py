"""daemon/openapi.yaml and the server agree: the same routes and methods.

Every answer of the functional tests is also checked against the document
(status documented, JSON body valid by an OpenAPI 3.0 validator:
harness.Harness.check). The document itself is valid OpenAPI 3.0
(openapi-spec-validator, also in `make lint`)."""

from __future__ import annotations

import pytest
from harness import OPENAPI, Harness, check_json
from jsonschema.exceptions import ValidationError
from openapi_spec_validator import validate as validate_spec


def test_the_document_is_valid_openapi() -> None:
    validate_spec(OPENAPI)


def test_answers_are_checked_as_openapi_means_them() -> None:
    """The check is a real validator: references, nullable, formats, enums."""
    health = {
        "Status": "ok",
        "Problems": [],
        "Principal": None,  # nullable
        "Jobs": 0,
        "Transfers": 0,
        "CacheSizeBytes": 0,
        "CacheCapacityBytes": 1,
        "HttpListen": None,
    }
    check_json(health, "/healthz", "get", "200")
    with pytest.raises(ValidationError):
        check_json({**health, "Jobs": None}, "/healthz", "get", "200")  # not nullable
    with pytest.raises(ValidationError):  # an enum
        check_json({**health, "Status": "fine"}, "/healthz", "get", "200")
    check_json({"Error": {"Code": "NoSuchJob", "Message": "m"}}, "/v1/jobs/{JobId}", "get", "404")
    with pytest.raises(ValidationError):  # through $ref to responses, then to schemas
        check_json({"Error": {"Code": "Nope", "Message": "m"}}, "/v1/jobs/{JobId}", "get", "404")
    obj = {"Key": "a", "Size": 1, "ETag": '"e"', "LastModified": "2026-11-28T13:00:00Z"}
    check_json({"Objects": [obj]}, "/v1/jobs/{JobId}/objects", "get", "200")
    with pytest.raises(ValidationError):  # format: date-time
        check_json(
            {"Objects": [{**obj, "LastModified": "yesterday"}]},
            "/v1/jobs/{JobId}/objects",
            "get",
            "200",
        )


async def test_every_route_is_documented_and_every_documented_route_exists(
    harness: Harness,
) -> None:
    served: set[tuple[str, str]] = set()
    for route in harness.daemon.api.app().router.routes():
        info = route.resource.get_info() if route.resource else {}
        path = info.get("path") or info.get("formatter")
        if route.method == "HEAD":
            continue  # aiohttp adds HEAD to every GET
        served.add((route.method, str(path).replace("{Key:.+}", "{Key}")))
    documented = {
        (method.upper(), path)
        for path, operations in OPENAPI["paths"].items()
        for method in operations
        if method in ("get", "post", "delete", "put")
    }
    assert served == documented


async def test_unknown_routes_and_methods_answer_json_errors(harness: Harness) -> None:
    missing = await harness.session.get("/v2/jobs")
    assert missing.status == 404
    assert (await missing.json())["Error"]["Code"] == "NotFound"
    wrong = await harness.request("PUT", "/v1/jobs")
    assert (wrong.status, wrong.code) == (405, "MethodNotAllowed")
