"""BentoML's /docs.json (its Swagger UI at / reads it), made true.

BentoML builds that document as OpenAPI 3.0.2 from FastAPI's raw spec of the mounted app,
whose schemas use 3.1 constructs (`"type": "null"`) and whose errors are FastAPI's 422,
and it lists its typed APIs' errors in BentoML's own shapes. Clients generated from it
were wrong in both places. This serves one OpenAPI 3.1.0 document instead: the OpenAI
app's own spec (api/errors.openapi_spec: every error as `ErrorBody`), plus BentoML's typed
APIs and probes, whose error answers are in OpenAI's shape too (the access middleware
rewrites BentoML's bodies), as the route table declares them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from starlette.responses import JSONResponse

from openchat.api.routing import RouteTable, error_responses

OPENAPI_VERSION = "3.1.0"
ERROR_SCHEMA = {"$ref": "#/components/schemas/ErrorBody"}


def combined_spec(service_spec: dict[str, Any], app_spec: dict[str, Any],
                  routes: RouteTable) -> dict[str, Any]:
    """`app_spec` with BentoML's own paths added (`service_spec`'s), declared as 3.1.0."""
    # Copies, with JSON's string keys (status codes are ints in both).
    spec, service_spec = json.loads(json.dumps(app_spec)), json.loads(json.dumps(service_spec))
    spec["openapi"] = OPENAPI_VERSION
    own = {path: _with_openai_errors(path, item, routes)
           for path, item in service_spec.get("paths", {}).items()
           if path not in spec.get("paths", {})}
    spec["paths"] = {**own, **spec.get("paths", {})}
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    for name, schema in service_spec.get("components", {}).get("schemas", {}).items():
        schemas.setdefault(name, schema)
    _drop_unused(spec)
    return spec


def _with_openai_errors(path: str, item: dict[str, Any], routes: RouteTable) -> dict:
    for method, operation in item.items():
        if not isinstance(operation, dict) or "responses" not in operation:
            continue
        spec = routes.find(method.upper(), path)
        if not spec.path:  # not a declared route (BentoML's own, e.g. /schema.json)
            continue
        kept = {code: answer for code, answer in operation["responses"].items()
                if str(code).startswith(("1", "2", "3"))}
        errors = error_responses({method.upper()}, path, spec.scopes)
        operation["responses"] = {**kept, **{
            str(status): {"description": entry["description"],
                          "content": {"application/json": {"schema": ERROR_SCHEMA}}}
            for status, entry in errors.items()}}
    return item


def _drop_unused(spec: dict[str, Any]) -> None:
    """Remove component schemas nothing refers to any more (BentoML's error shapes)."""
    schemas = spec["components"]["schemas"]
    while True:
        text = repr({k: v for k, v in spec.items() if k != "components"}) + repr(
            [schema for schema in schemas.values()])
        unused = [name for name in schemas if f"#/components/schemas/{name}'" not in text]
        if not unused:
            return
        for name in unused:
            del schemas[name]


class DocsMiddleware:
    """Answers GET /docs.json with `build()`'s document, built once, before BentoML's
    own route sees the request. Inside the access middleware: the docs' scopes apply."""

    def __init__(self, app, build: Callable[[], dict[str, Any]]) -> None:
        self.app = app
        self.build = build
        self._spec: dict[str, Any] | None = None

    async def __call__(self, scope, receive, send) -> None:
        if (scope["type"] == "http" and scope["path"] == "/docs.json"
                and scope["method"] in ("GET", "HEAD")):
            if self._spec is None:
                self._spec = self.build()
            await JSONResponse(self._spec)(scope, receive, send)
            return
        await self.app(scope, receive, send)
