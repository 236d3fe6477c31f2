"""Key management over HTTP, for holders of the admin scope (the CLI does the same locally).

    GET    /v1/admin/keys          keys (never secrets or hashes)
    POST   /v1/admin/keys          create one; the secret is in this response only
    DELETE /v1/admin/keys/{id}     revoke one

Each route is declared with the admin scope, which the access middleware requires.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from pydantic import Field
from starlette.responses import JSONResponse

from openchat.access.keys import APIKey, KeyStore
from openchat.access.scopes import ADMIN_SCOPE, INFERENCE_SCOPE
from openchat.api.routing import Router
from openchat.protocol.errors import APIError
from openchat.protocol.requests import StrictModel


class KeyIn(StrictModel):
    name: str = Field(min_length=1, max_length=200)
    scopes: list[str] = Field(default_factory=lambda: [INFERENCE_SCOPE], min_length=1)
    rpm: int | None = Field(None, ge=1)
    tpm: int | None = Field(None, ge=1)
    max_concurrency: int | None = Field(None, ge=1)


def key_view(key: APIKey) -> dict[str, Any]:
    return {"object": "api_key", "id": key.id, "name": key.name, "prefix": key.prefix,
            "scopes": sorted(key.scope_set), "rpm": key.rpm, "tpm": key.tpm,
            "max_concurrency": key.max_concurrency,
            "created_at": key.created_at.isoformat(),
            "revoked_at": key.revoked_at.isoformat() if key.revoked_at else None}


ADMIN = frozenset({ADMIN_SCOPE})


def add_admin_routes(router: Router, keys: Callable[[], KeyStore | None]) -> None:
    """`keys()` returns the KeyStore, or None when authentication is off."""

    def store():
        found = keys()
        if found is None:
            raise APIError("Authentication is off: there are no keys to manage.",
                           status=404, code="auth_disabled")
        return found

    @router.get("/v1/admin/keys", scopes=ADMIN)
    async def list_keys(include_revoked: bool = False) -> dict:
        found = await asyncio.to_thread(store().list, include_revoked)
        return {"object": "list", "data": [key_view(k) for k in found]}

    @router.post("/v1/admin/keys", scopes=ADMIN)
    async def create_key(body: KeyIn) -> JSONResponse:
        try:
            key, secret = await asyncio.to_thread(
                store().create, body.name, body.scopes, rpm=body.rpm, tpm=body.tpm,
                max_concurrency=body.max_concurrency)
        except ValueError as exc:
            raise APIError(str(exc), param="scopes") from None
        return JSONResponse({**key_view(key), "secret": secret}, status_code=201)

    @router.delete("/v1/admin/keys/{key_id}", scopes=ADMIN, label="/v1/admin/keys/{id}")
    async def revoke_key(key_id: str) -> dict:
        if not await asyncio.to_thread(store().revoke, key_id):
            raise APIError(f"No active key {key_id!r}.", status=404, code="not_found")
        return {"object": "api_key.revoked", "id": key_id, "revoked": True}
