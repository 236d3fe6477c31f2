"""How one batch line runs: its body is parsed by the live route's own request model and
handed to the same Pipeline method (or embeddings function), so presets, validation,
constraints and verification are exactly the live route's. Whatever goes wrong becomes
the line's status code and error body in OpenAI's shape; it never fails the batch.

Not streamed: a line with `stream: true` is a 400. A `/v1/responses` line is not stored
(a batch's results are its output file), so `previous_response_id` cannot be used.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from openchat.access.scopes import has_scope
from openchat.api.embeddings import create_embeddings
from openchat.api.errors import validation_error
from openchat.config import Settings
from openchat.generation.engine import engine_error
from openchat.generation.pipeline import Pipeline
from openchat.generation.response_items import new_response_id
from openchat.protocol.errors import APIError, error_body, invalid_param
from openchat.protocol.outputs import as_json
from openchat.protocol.requests import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
)
from openchat.protocol.responses import ResponseRequest

logger = logging.getLogger(__name__)

# (url, body as JSON, the batch owner's scopes) -> (status code, response or error body)
LineExecutor = Callable[[str, str, list[str] | None], Awaitable[tuple[int, dict[str, Any]]]]


def line_executor(settings: Settings, pipeline: Callable[[], Pipeline]) -> LineExecutor:
    async def execute(url: str, body: str, scopes: list[str] | None,
                      ) -> tuple[int, dict[str, Any]]:
        try:
            return 200, await _run(settings, pipeline(), url, json.loads(body), scopes)
        except ValidationError as exc:
            error = validation_error(RequestValidationError(exc.errors()))
        except APIError as exc:
            error = exc
        except Exception as exc:
            found = engine_error(exc)
            if found is None:
                logger.exception("batch line failed")
                return 500, error_body("The server had an error processing this request.",
                                       "server_error")
            error = found
        return error.status, error.body()

    return execute


def _not_streamed(stream: bool) -> None:
    if stream:
        raise invalid_param("stream", "stream is not supported in a batch: each line's "
                            "whole response goes into the output file.")


async def _run(settings: Settings, pipeline: Pipeline, url: str, body: dict[str, Any],
               scopes: list[str] | None) -> dict[str, Any]:
    def allowed(tool) -> bool:
        return has_scope(scopes, tool.scope)

    if url == "/v1/chat/completions":
        chat = ChatCompletionRequest.model_validate(body)
        _not_streamed(chat.stream)
        return as_json(await pipeline.chat(chat, allowed=allowed))
    if url == "/v1/completions":
        completion = CompletionRequest.model_validate(body)
        _not_streamed(completion.stream)
        return as_json(await pipeline.complete(completion))
    if url == "/v1/embeddings":
        embedding = EmbeddingRequest.model_validate(body)
        if pipeline.embedder is None:
            raise APIError("No embedding model is loaded.", status=503, code="unavailable")
        return await create_embeddings(pipeline.embedder, settings.embeddings, embedding)
    if url == "/v1/responses":
        request = ResponseRequest.model_validate(body)
        _not_streamed(request.stream)
        if request.previous_response_id is not None:
            raise invalid_param("previous_response_id", "previous_response_id is not "
                                "supported in a batch: its responses are not stored.")
        response = await pipeline.respond(request, [], new_response_id(), allowed=allowed)
        assert isinstance(response, dict)
        return {**response, "store": False}
    raise invalid_param("url", f"{url} is not a batch endpoint.")
