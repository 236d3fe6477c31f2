"""The OpenAI-compatible HTTP layer: thin routes that validate, call the server, and frame.

Mounted on the BentoML service; `/v1/...` are OpenAI's paths, `/tokenize` and
`/detokenize` vLLM's. Every error leaves in OpenAI's shape (see errors.py); mid-stream
errors become one `data: {"error": ...}` event followed by `data: [DONE]`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Match

from openchat import metrics
from openchat.admin import add_admin_routes
from openchat.embeddings import EmbeddingRequest, create_embeddings
from openchat.errors import APIError, error_body, install_error_handlers
from openchat.library import add_library_routes
from openchat.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    TokenizeRequest,
)
from openchat.responses import as_json
from openchat.security import DOCUMENTS_WRITE_SCOPE, caller_scopes, has_scope, require_scope
from tools.registry import DOCUMENTS_SCOPE

logger = logging.getLogger(__name__)

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def engine_error(exc: BaseException) -> APIError | None:
    """Map the engine's exceptions to client-facing errors (None: not an engine error)."""
    from vllm.exceptions import VLLMClientError
    from vllm.v1.engine.exceptions import EngineDeadError

    if isinstance(exc, EngineDeadError):
        return APIError("The inference engine stopped; retry shortly.", status=503,
                        code="engine_unavailable")
    if isinstance(exc, VLLMClientError):
        return APIError(str(exc), code="invalid_request")
    return None


def _sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, separators=(',', ':'), ensure_ascii=False)}\n\n"


async def sse_stream(chunks: AsyncIterator[dict[str, Any]]) -> AsyncIterator[str]:
    metrics.OPEN_STREAMS.inc()
    try:
        async for chunk in chunks:
            yield _sse(chunk)
    except Exception as exc:  # the status line is gone: report in-band, then end cleanly
        error = exc if isinstance(exc, APIError) else engine_error(exc)
        if error is None:
            logger.exception("error while streaming")
            yield _sse(error_body("The server had an error while streaming.", "server_error"))
        else:
            yield _sse(error.body())
    finally:
        metrics.OPEN_STREAMS.dec()
    yield "data: [DONE]\n\n"


async def cancel_on_disconnect(request: Request, work: Awaitable[Any]) -> Any:
    """Run `work`, cancelling it (and so aborting its engine requests) if the client
    goes away first; returns None in that case."""
    task = asyncio.ensure_future(work)

    async def wait_for_disconnect() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(wait_for_disconnect())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            # Let the cancellation land (the engine request is aborted on the way out).
            await asyncio.wait({task})
    if task.cancelled():
        logger.info("client disconnected from %s; request aborted", request.url.path)
        return None
    return task.result()


async def _respond(request: Request, work: Awaitable[Any]) -> Response:
    try:
        result = await cancel_on_disconnect(request, work)
    except APIError:
        raise
    except Exception as exc:
        error = engine_error(exc)
        if error is None:
            raise
        raise error from None
    if result is None:
        return Response(status_code=499)
    if isinstance(result, dict):
        return JSONResponse(result)
    if hasattr(result, "__aiter__"):
        return StreamingResponse(
            sse_stream(result), media_type="text/event-stream", headers=SSE_HEADERS
        )
    return JSONResponse(as_json(result))


def _key_store():
    from openchat.config import get_settings
    from openchat.keys import open_store

    auth = get_settings().auth
    return open_store(auth.keys_url) if auth.enabled else None


def _documents(server):
    if server.documents is None:
        raise APIError("No document store is configured.", status=503, code="unavailable")
    return server.documents


def create_app(get_server: Callable[[], Any]) -> FastAPI:
    """The OpenAI app; `get_server` returns the live OpenChatServer once it has started."""
    app = FastAPI(title="OpenChat-3.5 OpenAI-compatible API", docs_url=None, redoc_url=None)
    install_error_handlers(app)

    def server():
        instance = get_server()
        if instance is None:
            raise APIError("The service is starting.", status=503, code="not_ready")
        return instance

    @app.get("/v1/models")
    async def list_models() -> dict:
        return {"object": "list", "data": server().models()}

    @app.get("/v1/models/{model_id:path}")
    async def retrieve_model(model_id: str) -> dict:
        srv = server()
        return srv.model_card(srv.preset(model_id))

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        scopes = caller_scopes(request)
        return await _respond(request, server().chat(
            body, allowed=lambda tool: has_scope(scopes, tool.scope)))

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Response:
        return await _respond(request, server().complete(body))

    @app.post("/v1/embeddings")
    async def embeddings(body: EmbeddingRequest) -> dict:
        srv = server()
        if srv.embedder is None:
            raise APIError("No embedding model is loaded.", status=503, code="unavailable")
        return await create_embeddings(srv.embedder, srv.settings.embeddings, body)

    add_library_routes(app, lambda: _documents(server()), require_scope(DOCUMENTS_SCOPE),
                       require_scope(DOCUMENTS_WRITE_SCOPE))

    add_admin_routes(app, _key_store)

    @app.get("/v1/server_tools")
    async def list_server_tools() -> dict:
        return {"object": "list", "data": server().server_tools()}

    @app.post("/tokenize")
    async def tokenize(body: TokenizeRequest) -> dict:
        return server().tokenize(body)

    @app.post("/detokenize")
    async def detokenize(body: DetokenizeRequest) -> dict:
        return server().detokenize(body)

    @app.api_route("/v1/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
    async def unknown_endpoint(path: str, request: Request) -> JSONResponse:
        # This catch-all also receives known paths called with the wrong method.
        known = any(
            route.matches(request.scope)[0] == Match.PARTIAL
            for route in app.routes if route.name != "unknown_endpoint"
        )
        if known:
            raise APIError(f"Method {request.method} is not allowed for /v1/{path}.",
                           status=405, code="method_not_allowed")
        raise APIError(f"Unknown endpoint: {request.method} /v1/{path}", status=404,
                       code="unknown_url")

    return app
