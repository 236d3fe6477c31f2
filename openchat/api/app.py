"""The OpenAI-compatible FastAPI app: thin routes that validate, call the pipeline, frame.

Mounted on the BentoML service; `/v1/...` are OpenAI's paths, `/tokenize` and
`/detokenize` vLLM's. Each route is declared once, with its scopes (routing.py); every
error leaves in OpenAI's shape (errors.py); results are framed by streaming.py.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import FastAPI, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Match

from openchat.access.budget import TokenBudget
from openchat.access.keys import KeyStore, open_store
from openchat.access.ratelimit import shared_rate_limiter
from openchat.access.scopes import INFERENCE_SCOPE, has_scope
from openchat.api.admin import add_admin_routes
from openchat.api.batch_lines import line_executor
from openchat.api.batch_runner import BatchRunner
from openchat.api.batches import add_batch_routes
from openchat.api.documents import add_document_routes
from openchat.api.embeddings import create_embeddings
from openchat.api.errors import install_error_handlers, openapi_spec
from openchat.api.files import add_file_routes
from openchat.api.responses import add_response_routes
from openchat.api.routing import Router, RouteTable, caller_scopes
from openchat.api.streaming import respond
from openchat.config import Settings
from openchat.generation.pipeline import Pipeline
from openchat.protocol.errors import APIError
from openchat.protocol.requests import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    EmbeddingRequest,
    TokenizeRequest,
)
from openchat.storage.batches import open_batch_store
from openchat.storage.files import open_file_store
from openchat.storage.responses import open_response_store

INFERENCE = frozenset({INFERENCE_SCOPE})


def create_app(settings: Settings, routes: RouteTable,
               get_pipeline: Callable[[], Pipeline | None]) -> FastAPI:
    """The OpenAI app; `get_pipeline()` is the live Pipeline once the engine has started
    (None before, and while a dead engine's worker restarts: 503). The batch runner is
    `app.state.batch_runner`, for the service's lifecycle to start and stop."""
    app = FastAPI(title="OpenChat-3.5 OpenAI-compatible API", docs_url=None, redoc_url=None)
    install_error_handlers(app)
    router = Router(app, routes)
    routes.declare(app.openapi_url, {"GET", "HEAD"}, scopes=INFERENCE)  # FastAPI's own

    def pipeline() -> Pipeline:
        instance = get_pipeline()
        if instance is None:
            raise APIError("The service is starting.", status=503, code="not_ready")
        return instance

    @router.get("/v1/models", scopes=INFERENCE)
    async def list_models() -> dict:
        return {"object": "list", "data": pipeline().models()}

    @router.get("/v1/models/{model_id:path}", scopes=INFERENCE, label="/v1/models/{model}")
    async def retrieve_model(model_id: str) -> dict:
        return pipeline().model_card(model_id)

    @router.post("/v1/chat/completions", scopes=INFERENCE)
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        scopes = caller_scopes(request)
        return await respond(request, pipeline().chat(
            body, allowed=lambda tool: has_scope(scopes, tool.scope)))

    @router.post("/v1/completions", scopes=INFERENCE)
    async def completions(body: CompletionRequest, request: Request) -> Response:
        return await respond(request, pipeline().complete(body))

    @router.post("/v1/embeddings", scopes=INFERENCE)
    async def embeddings(body: EmbeddingRequest) -> dict:
        current = pipeline()
        if current.embedder is None:
            raise APIError("No embedding model is loaded.", status=503, code="unavailable")
        return await create_embeddings(current.embedder, settings.embeddings, body)

    add_document_routes(router, lambda: pipeline().document_store())
    add_response_routes(router, pipeline, lambda: open_response_store(
        settings.responses.store_url, settings.responses.max_age_days,
        settings.responses.max_per_key))
    add_admin_routes(router, lambda: _key_store(settings))
    batch = settings.batch

    def files():
        return open_file_store(batch.store_url, batch.files_dir)

    def batches():
        return open_batch_store(batch.store_url)

    def engine_ready() -> bool:
        try:
            current = get_pipeline()
        except APIError:  # the engine is restarting
            return False
        return current is not None and current.engine.is_healthy

    add_file_routes(router, files, batch)
    add_batch_routes(router, batches, files, batch)
    budget = None  # batch lines' tokens count against their key's tokens per minute
    if settings.auth.enabled:
        auth = settings.auth
        budget = TokenBudget(
            lambda: shared_rate_limiter(auth.rate_limit_storage, window=auth.rate_window_s),
            lambda key_id: open_store(auth.keys_url, auth.key_cache_s).get(key_id), auth)
    app.state.batch_runner = BatchRunner(batch, batches, files,
                                         line_executor(settings, pipeline), engine_ready,
                                         budget=budget,
                                         max_body_bytes=settings.auth.max_body_bytes)

    @router.get("/v1/server_tools", scopes=INFERENCE)
    async def list_server_tools() -> dict:
        return {"object": "list", "data": pipeline().server_tools()}

    @router.post("/tokenize", scopes=INFERENCE)
    async def tokenize(body: TokenizeRequest) -> dict:
        return pipeline().tokenize(body)

    @router.post("/detokenize", scopes=INFERENCE)
    async def detokenize(body: DetokenizeRequest) -> dict:
        return pipeline().detokenize(body)

    # Not an endpoint, so not in the OpenAPI spec: the 404/405 answer for everything else.
    @router.route({"GET", "POST", "PUT", "PATCH", "DELETE"}, "/v1/{path:path}",
                  scopes=INFERENCE, label="other", include_in_schema=False)
    async def unknown_endpoint(path: str, request: Request) -> JSONResponse:
        # This catch-all also receives known paths called with the wrong method.
        allowed = sorted({
            method for route in app.routes if route.name != "unknown_endpoint"
            and route.matches(request.scope)[0] == Match.PARTIAL
            for method in getattr(route, "methods", None) or ()
        })
        if allowed:
            raise APIError(f"Method {request.method} is not allowed for /v1/{path}.",
                           status=405, code="method_not_allowed",
                           headers={"Allow": ", ".join(allowed)})
        raise APIError(f"Unknown endpoint: {request.method} /v1/{path}", status=404,
                       code="unknown_url")

    app.openapi = lambda: openapi_spec(app)
    return app


def _key_store(settings: Settings) -> KeyStore | None:
    auth = settings.auth
    return open_store(auth.keys_url, auth.key_cache_s) if auth.enabled else None
