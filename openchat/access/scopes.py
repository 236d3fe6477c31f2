"""Scopes: what an API key may do. The one list of their names, and how a key's scopes
are checked against what a route or a server tool needs (admin implies everything).
With authentication switched off there is no key and everything is allowed.
"""

from __future__ import annotations

from collections.abc import Iterable

from openchat.protocol.errors import APIError

INFERENCE_SCOPE = "inference"
SQL_SCOPE = "tools:sql"  # let the model run the SQL server tools
DOCUMENTS_SCOPE = "tools:documents"  # search documents (tools, routes, ask)
DOCUMENTS_WRITE_SCOPE = "documents:write"
BATCH_SCOPE = "batch"  # upload files, create and read batches (the Batch API)
ADMIN_SCOPE = "admin"
ALL_SCOPES = (INFERENCE_SCOPE, SQL_SCOPE, DOCUMENTS_SCOPE, DOCUMENTS_WRITE_SCOPE, BATCH_SCOPE,
              ADMIN_SCOPE)


def has_scope(scopes: Iterable[str] | None, scope: str) -> bool:
    return scopes is None or scope in scopes or ADMIN_SCOPE in scopes


def missing_scope(scopes: Iterable[str] | None, needed: Iterable[str]) -> str | None:
    """The first of `needed` the caller lacks, or None."""
    held = None if scopes is None else frozenset(scopes)
    return next((s for s in sorted(needed) if not has_scope(held, s)), None)


def forbidden(scope: str) -> APIError:
    return APIError(f"This API key lacks the {scope!r} scope.", status=403,
                    type="permission_error", code="insufficient_scope")
