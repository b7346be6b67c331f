"""daemon/openapi.yaml and the server agree: the same routes and methods.

Every answer of the functional tests is also checked against the document
(status documented, JSON body valid: harness.Harness.check)."""

from __future__ import annotations

from harness import OPENAPI, Harness


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
