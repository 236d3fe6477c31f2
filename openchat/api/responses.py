"""The Responses API routes: create (whole or streamed), retrieve, delete, input items.

    POST   /v1/responses                         a Response, or its event stream
    GET    /v1/responses/{id}                    a stored response
    DELETE /v1/responses/{id}                    forget it
    GET    /v1/responses/{id}/input_items        its input items, paged as OpenAI pages

Generation is the pipeline's (generation/responses.py); storage is here, around it:
`previous_response_id` loads the stored conversation first (404 if it is not the caller's),
and with `store` (the default) the finished response is saved before it is returned, or
as its stream ends. Every stored response belongs to the calling key.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import Depends, Request
from starlette.responses import Response

from openchat.access.scopes import INFERENCE_SCOPE, has_scope
from openchat.api.routing import KEY_SCOPE_ITEM, Router, caller_scopes
from openchat.api.streaming import respond, sse_events
from openchat.generation.pipeline import Pipeline
from openchat.generation.response_items import (
    conversation_after,
    input_item_objects,
    new_response_id,
)
from openchat.protocol.errors import APIError
from openchat.protocol.responses import InputItemsQuery, ResponseRequest
from openchat.storage.responses import ResponseStore, StoredResponse, page

INFERENCE = frozenset({INFERENCE_SCOPE})


def add_response_routes(router: Router, pipeline: Callable[[], Pipeline],
                        store: Callable[[], ResponseStore]) -> None:
    @router.post("/v1/responses", scopes=INFERENCE)
    async def create_response(body: ResponseRequest, request: Request) -> Response:
        owner = _owner(request)
        scopes = caller_scopes(request)
        history: list[dict[str, Any]] = []
        if body.previous_response_id is not None:
            previous = await _stored(store(), body.previous_response_id, owner,
                                     param="previous_response_id")
            history = previous.conversation_items()
        inputs = input_item_objects(body.input_items())
        response_id = new_response_id()

        async def save(response: dict[str, Any]) -> None:
            conversation = conversation_after(history, inputs, response)
            await asyncio.to_thread(store().save, response, inputs, conversation, owner)

        async def run() -> dict[str, Any] | AsyncIterator[dict[str, Any]]:
            result = await pipeline().respond(
                body, history, response_id,
                allowed=lambda tool: has_scope(scopes, tool.scope))
            if isinstance(result, dict):
                if body.store:
                    await save(result)
                return result
            return _saving(result, save) if body.store else result

        return await respond(request, run(), framing=sse_events)

    @router.get("/v1/responses/{response_id}", scopes=INFERENCE,
                label="/v1/responses/{id}")
    async def retrieve_response(response_id: str, request: Request) -> dict:
        return (await _stored(store(), response_id, _owner(request))).as_object()

    @router.delete("/v1/responses/{response_id}", scopes=INFERENCE,
                   label="/v1/responses/{id}")
    async def delete_response(response_id: str, request: Request) -> dict:
        if not await asyncio.to_thread(store().delete, response_id, _owner(request)):
            raise _not_found(response_id)
        return {"id": response_id, "object": "response", "deleted": True}

    @router.get("/v1/responses/{response_id}/input_items", scopes=INFERENCE,
                label="/v1/responses/{id}/input_items")
    async def list_input_items(response_id: str, request: Request,
                               query: InputItemsQuery = Depends()) -> dict:
        stored = await _stored(store(), response_id, _owner(request))
        return page(stored.input_item_list(), limit=query.limit, order=query.order,
                    after=query.after, before=query.before)


async def _saving(events: AsyncIterator[dict[str, Any]],
                  save: Callable[[dict[str, Any]], Any]) -> AsyncIterator[dict[str, Any]]:
    """Pass the events on; the finished response is stored before its last event goes."""
    async for event in events:
        if event["type"] in ("response.completed", "response.incomplete"):
            await save(event["response"])
        yield event


async def _stored(store: ResponseStore, response_id: str, owner: str | None,
                  param: str | None = None) -> StoredResponse:
    found = await asyncio.to_thread(store.get, response_id, owner)
    if found is None:
        raise _not_found(response_id, param)
    return found


def _not_found(response_id: str, param: str | None = None) -> APIError:
    return APIError(f"Response with id '{response_id}' not found.", status=404, param=param,
                    code="not_found")


def _owner(request: Request) -> str | None:
    """The calling key's id; None with authentication off (everything is everyone's)."""
    key = request.scope.get(KEY_SCOPE_ITEM)
    return None if key is None else key.id
