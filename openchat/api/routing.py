"""Every HTTP route of the service, declared once: methods, path template, the scopes a
caller's key needs, and the label its metrics carry.

Route families register through a `Router`, whose `get`/`post`/`delete` take `scopes=` as
a required argument, so a route without a declared scope cannot be written; BentoML's own
routes (typed APIs, probes, /metrics, docs) are declared in the same `RouteTable` by
service.py. The access middleware reads the table to authorise a request before the app
sees it, and labels metrics by the template, never the raw path. A path no route matches
still needs a valid key (`UNKNOWN`), so the API cannot be probed anonymously.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from starlette.routing import compile_path

from openchat.access.scopes import ADMIN_SCOPE, INFERENCE_SCOPE, forbidden, has_scope
from openchat.protocol.errors import ErrorBody

KEY_SCOPE_ITEM = "openchat.key"  # where the middleware leaves the authenticated key
OPEN: frozenset[str] | None = None  # scopes of a route anyone may call, without a key
PROBES = frozenset({"/livez", "/readyz", "/healthz"})


@dataclass(frozen=True)
class RouteSpec:
    path: str  # the template, e.g. /v1/collections/{collection}/search
    methods: frozenset[str]
    scopes: frozenset[str] | None  # None: open without a key
    label: str
    pattern: re.Pattern[str]
    max_body: int | None = None  # this route's body limit, instead of auth.max_body_bytes

    def matches(self, method: str, path: str) -> bool:
        return method in self.methods and self.pattern.match(path) is not None


UNKNOWN = RouteSpec("", frozenset(), frozenset({INFERENCE_SCOPE}), "other", re.compile("$^"))


class RouteTable:
    """The routes in declaration order; the first that matches a request wins."""

    def __init__(self) -> None:
        self._specs: list[RouteSpec] = []

    def declare(self, path: str, methods: set[str] | frozenset[str], *,
                scopes: frozenset[str] | None, label: str | None = None,
                prefix: bool = False, max_body: int | None = None) -> RouteSpec:
        """`prefix`: the route serves everything under `path` too (static files);
        `max_body`: its body limit in bytes (file uploads), instead of the default."""
        regex, _, _ = compile_path(path)
        pattern = re.compile(regex.pattern.rstrip("$") + "(/.*)?$") if prefix else regex
        spec = RouteSpec(path, frozenset(m.upper() for m in methods),
                         None if scopes is None else frozenset(scopes), label or path, pattern,
                         max_body)
        self._specs.append(spec)
        return spec

    def find(self, method: str, path: str) -> RouteSpec:
        for spec in self._specs:
            if spec.matches(method, path):
                return spec
        return UNKNOWN

    def __iter__(self) -> Iterator[RouteSpec]:
        return iter(self._specs)


_ERRORS = {
    400: "Invalid request: a parameter is missing, of the wrong type or out of range "
         "(`param` names it), or the JSON is malformed.",
    401: "No API key, or an unknown or revoked one.",
    403: "The key lacks a scope this route or a requested server tool needs.",
    404: "No such model, resource or endpoint (or it belongs to another key).",
    413: "The request body is over the configured limit.",
    429: "A per-key limit (requests, tokens or concurrency) was reached; see Retry-After "
         "and the x-ratelimit-* headers.",
    500: "The server failed (a verification of the model's output included).",
    503: "The engine is starting, restarting or stopping; retry shortly.",
    504: "No response started within the service's timeout (service.traffic.timeout).",
}


def error_responses(methods: set[str], path: str,
                    scopes: frozenset[str] | None) -> dict[int | str, dict[str, Any]]:
    """The error statuses a route can answer, each in OpenAI's error shape."""
    statuses = {400, 500, 503}
    if scopes is not None:
        statuses |= {401, 403, 429, 504}
    if "{" in path or methods & {"POST", "DELETE"}:
        statuses.add(404)
    if methods & {"POST", "PUT", "PATCH"}:
        statuses.add(413)
    return {status: {"model": ErrorBody, "description": _ERRORS[status]}
            for status in sorted(statuses)}


class Router:
    """Registers a route family's endpoints on the FastAPI app and in the table at once;
    each route's OpenAPI entry lists the errors it can answer."""

    def __init__(self, app: FastAPI, table: RouteTable) -> None:
        self.app = app
        self.table = table

    def route(self, methods: set[str], path: str, *, scopes: frozenset[str] | None,
              label: str | None = None, max_body: int | None = None,
              **kwargs: Any) -> Callable:
        kwargs.setdefault("responses", error_responses(methods, path, scopes))

        def register(endpoint: Callable) -> Callable:
            self.app.add_api_route(path, endpoint, methods=sorted(methods), **kwargs)
            self.table.declare(path, methods, scopes=scopes, label=label, max_body=max_body)
            return endpoint

        return register

    def get(self, path: str, *, scopes: frozenset[str] | None, **kwargs: Any) -> Callable:
        return self.route({"GET"}, path, scopes=scopes, **kwargs)

    def post(self, path: str, *, scopes: frozenset[str] | None, **kwargs: Any) -> Callable:
        return self.route({"POST"}, path, scopes=scopes, **kwargs)

    def delete(self, path: str, *, scopes: frozenset[str] | None, **kwargs: Any) -> Callable:
        return self.route({"DELETE"}, path, scopes=scopes, **kwargs)


def declare_bentoml_routes(table: RouteTable, *, protect_metrics: bool,
                           protect_docs: bool) -> None:
    """BentoML's own routes beside ours: probes, /metrics and the docs pages."""
    for probe in sorted(PROBES):
        table.declare(probe, {"GET", "HEAD"}, scopes=OPEN)
    table.declare("/metrics", {"GET"},
                  scopes=frozenset({ADMIN_SCOPE}) if protect_metrics else OPEN)
    docs = frozenset({INFERENCE_SCOPE}) if protect_docs else OPEN
    for path in ("/", "/docs", "/docs.json", "/schema.json"):
        table.declare(path, {"GET", "HEAD"}, scopes=docs)
    table.declare("/static_content", {"GET", "HEAD"}, scopes=docs, prefix=True)


def caller_key_id(request: Request) -> str | None:
    """The calling key's id, the owner of what it stores; None with authentication off
    (everything is everyone's)."""
    key = request.scope.get(KEY_SCOPE_ITEM)
    return None if key is None else key.id


def caller_scopes(request: Request) -> set[str] | None:
    """The caller's scopes, or None when authentication is off (everything allowed)."""
    key = request.scope.get(KEY_SCOPE_ITEM)
    return None if key is None else set(key.scope_set)


def require_scope(request: Request, scope: str) -> None:
    """Refuse (403) a caller whose key lacks `scope`, for decisions finer than a route."""
    if not has_scope(caller_scopes(request), scope):
        raise forbidden(scope)
