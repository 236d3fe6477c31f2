"""Who may do what: scopes carried by the caller's API key.

The authentication middleware puts the caller's key into the ASGI scope; routes and the
tool loop ask `allowed(scope)`. With authentication switched off there is no key and
everything is allowed (the service warns about that at every start).
"""

from __future__ import annotations

from fastapi import Request

from openchat.errors import APIError

INFERENCE_SCOPE = "inference"
DOCUMENTS_WRITE_SCOPE = "documents:write"
ADMIN_SCOPE = "admin"
KEY_SCOPE_ITEM = "openchat.key"  # where the middleware leaves the authenticated key


def caller_scopes(request: Request) -> set[str] | None:
    """The caller's scopes, or None when authentication is off (everything allowed)."""
    key = request.scope.get(KEY_SCOPE_ITEM)
    return None if key is None else set(key.scopes)


def has_scope(scopes: set[str] | None, scope: str) -> bool:
    return scopes is None or scope in scopes or ADMIN_SCOPE in scopes


def require_scope(scope: str):
    """A FastAPI dependency that refuses callers whose key lacks `scope` (403)."""

    async def check(request: Request) -> None:
        if not has_scope(caller_scopes(request), scope):
            raise APIError(f"This API key lacks the {scope!r} scope.", status=403,
                           type="permission_error", code="insufficient_scope")

    return check
