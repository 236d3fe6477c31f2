"""The Batch API routes: create a batch from an uploaded file, retrieve, list, cancel.

    POST /v1/batches                  input_file_id, endpoint, completion_window "24h"
    GET  /v1/batches/{id}             a Batch, with live request_counts while it runs
    GET  /v1/batches                  the caller's batches, newest first (after, limit)
    POST /v1/batches/{id}/cancel      stop it: pending lines are dropped, then cancelled

A new batch is `validating`: the batch runner (batch_runner.py) checks its input file and
copies its lines into the batch store (or fails it with `errors`), then runs them in the
background; results come back as files (files.py). Creating a batch runs inference, so it
needs the `inference` scope beside `batch`. Every batch belongs to the calling key:
another key's is not found.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from fastapi import Depends, Request

from openchat.access.scopes import BATCH_SCOPE, INFERENCE_SCOPE
from openchat.api.routing import Router, caller_key_id, caller_scopes, error_responses
from openchat.config import BatchSettings
from openchat.protocol.batches import BatchCreateRequest, BatchListQuery
from openchat.protocol.errors import APIError, ErrorBody
from openchat.storage.batches import BatchStore, StoredBatch
from openchat.storage.files import FileStore

BATCH = frozenset({BATCH_SCOPE})
ENDED = ("completed", "failed", "expired")


def add_batch_routes(router: Router, batches: Callable[[], BatchStore],
                     files: Callable[[], FileStore], settings: BatchSettings) -> None:
    @router.post("/v1/batches", scopes=frozenset({BATCH_SCOPE, INFERENCE_SCOPE}))
    async def create_batch(body: BatchCreateRequest, request: Request) -> dict:
        owner = caller_key_id(request)
        store = files()
        found = await asyncio.to_thread(store.get, body.input_file_id, owner)
        if found is None:
            raise APIError(f"No such File object: {body.input_file_id}", status=404,
                           param="input_file_id", code="not_found")
        if found.purpose != "batch":
            raise APIError(f"File {found.id} has purpose {found.purpose!r}; a batch's input "
                           "file has purpose 'batch'.", param="input_file_id",
                           code="invalid_file")
        scopes = caller_scopes(request)
        expiry = body.output_expires_after
        batch = await asyncio.to_thread(
            batches().create, owner=owner, scopes=None if scopes is None else list(scopes),
            endpoint=body.endpoint, input_file_id=found.id, metadata=body.metadata,
            output_expires_s=None if expiry is None else expiry.seconds)
        return await asyncio.to_thread(batches().view, batch)

    @router.get("/v1/batches/{batch_id}", scopes=BATCH, label="/v1/batches/{id}")
    async def retrieve_batch(batch_id: str, request: Request) -> dict:
        batch = await _stored(batches(), batch_id, caller_key_id(request))
        return await asyncio.to_thread(batches().view, batch)

    @router.get("/v1/batches", scopes=BATCH)
    async def list_batches(request: Request, query: BatchListQuery = Depends()) -> dict:
        store = batches()

        def page() -> dict:
            found = store.list(caller_key_id(request), limit=query.limit + 1,
                               after=query.after)
            data = [store.view(batch) for batch in found[:query.limit]]
            return {"object": "list", "data": data,
                    "first_id": data[0]["id"] if data else None,
                    "last_id": data[-1]["id"] if data else None,
                    "has_more": len(found) > query.limit}

        return await asyncio.to_thread(page)

    cancel_path = "/v1/batches/{batch_id}/cancel"

    @router.post(cancel_path, scopes=BATCH, label="/v1/batches/{id}/cancel", responses={
        **error_responses({"POST"}, cancel_path, BATCH),
        409: {"model": ErrorBody, "description": "The batch has ended (completed, failed "
              "or expired): there is nothing to cancel."}})
    async def cancel_batch(batch_id: str, request: Request) -> dict:
        owner = caller_key_id(request)
        batch = await _stored(batches(), batch_id, owner)
        if batch.status in ENDED:
            raise APIError(f"Cannot cancel a batch with status {batch.status!r}.",
                           status=409, type="invalid_request_error",
                           code="batch_not_cancellable")
        cancelled = await asyncio.to_thread(batches().cancel, batch_id, owner)
        return await asyncio.to_thread(batches().view, cancelled or batch)


async def _stored(store: BatchStore, batch_id: str, owner: str | None) -> StoredBatch:
    found = await asyncio.to_thread(store.get, batch_id, owner)
    if found is None:
        raise APIError(f"No such Batch object: {batch_id}", status=404, param="id",
                       code="not_found")
    return found
