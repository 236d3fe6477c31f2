"""Who may do what: the scopes a route needs, and the caller's scopes.

The access middleware (middleware.py) authenticates the caller and puts the key into the
ASGI scope; `required_scopes` is the one table of what each route needs, and routes that
decide more finely (document writes, server tools) ask `has_scope`. With authentication
switched off there is no key and everything is allowed (the service warns at every start).
"""

from __future__ import annotations

import re

from fastapi import Request

from openchat.errors import APIError
from tools.registry import DOCUMENTS_SCOPE, SQL_SCOPE

INFERENCE_SCOPE = "inference"
DOCUMENTS_WRITE_SCOPE = "documents:write"
ADMIN_SCOPE = "admin"
ALL_SCOPES = (INFERENCE_SCOPE, SQL_SCOPE, DOCUMENTS_SCOPE, DOCUMENTS_WRITE_SCOPE, ADMIN_SCOPE)
KEY_SCOPE_ITEM = "openchat.key"  # where the middleware leaves the authenticated key

PROBES = frozenset({"/livez", "/readyz", "/healthz"})
DOCS = ("/docs", "/docs.json", "/schema.json", "/static_content")
_DOCUMENT_WRITE = re.compile(r"^/v1/collections/[^/]+/documents(/[^/]+)?$")


def required_scopes(method: str, path: str, *, protect_metrics: bool,
                    protect_docs: bool) -> frozenset[str] | None:
    """The scopes a request needs; None for what stays open without a key. Unknown paths
    need a valid key too (inference), so they cannot be probed anonymously."""
    if path in PROBES:
        return None
    if path == "/metrics":
        return frozenset({ADMIN_SCOPE}) if protect_metrics else None
    if path == "/" or path.startswith(DOCS):
        return frozenset({INFERENCE_SCOPE}) if protect_docs else None
    if path.startswith("/v1/admin/"):
        return frozenset({ADMIN_SCOPE})
    if path.startswith("/v1/collections"):
        if method in ("POST", "DELETE") and _DOCUMENT_WRITE.match(path):
            return frozenset({DOCUMENTS_WRITE_SCOPE})
        return frozenset({DOCUMENTS_SCOPE})
    if path == "/ask":
        return frozenset({INFERENCE_SCOPE, DOCUMENTS_SCOPE})
    return frozenset({INFERENCE_SCOPE})


def caller_scopes(request: Request) -> set[str] | None:
    """The caller's scopes, or None when authentication is off (everything allowed)."""
    key = request.scope.get(KEY_SCOPE_ITEM)
    return None if key is None else set(key.scope_set)


def has_scope(scopes: set[str] | frozenset[str] | None, scope: str) -> bool:
    return scopes is None or scope in scopes or ADMIN_SCOPE in scopes


def missing_scope(scopes, needed) -> str | None:
    """The first of `needed` the caller lacks, or None."""
    return next((s for s in sorted(needed) if not has_scope(scopes, s)), None)


def forbidden(scope: str) -> APIError:
    return APIError(f"This API key lacks the {scope!r} scope.", status=403,
                    type="permission_error", code="insufficient_scope")


def require_scope(scope: str):
    """A FastAPI dependency that refuses callers whose key lacks `scope` (403)."""

    async def check(request: Request) -> None:
        if not has_scope(caller_scopes(request), scope):
            raise forbidden(scope)

    return check
