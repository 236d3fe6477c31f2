"""BentoML service for OpenChat-3.5: configuration, lifecycle and typed APIs.

The serving logic lives in `openchat/`; this file only declares the service, starts and
stops the in-process vLLM engine, mounts the OpenAI-compatible app and exposes typed APIs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from collections.abc import AsyncGenerator
from typing import Any

import bentoml
from pydantic import BaseModel, Field, ValidationError

from openchat.access.scopes import DOCUMENTS_SCOPE, INFERENCE_SCOPE
from openchat.api.app import create_app
from openchat.api.docs import DocsMiddleware, combined_spec
from openchat.api.drain import Drain
from openchat.api.middleware import AccessMiddleware
from openchat.api.routing import RouteTable, declare_bentoml_routes
from openchat.config import Condition, get_settings
from openchat.generation.engine import INTERACTIVE
from openchat.generation.pipeline import Pipeline
from openchat.generation.retrieval import AskResult
from openchat.protocol.errors import APIError
from openchat.protocol.requests import (
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
)
from openchat.telemetry import logs

SETTINGS = get_settings()
logger = logging.getLogger("openchat")

_pipeline: Pipeline | None = None  # set once the engine has started
_restarting = False  # the engine died; a new one is starting in this worker
DRAIN = Drain(SETTINGS.service.shutdown_grace_s)  # SIGTERM: finish what runs, then stop
# Every route with the scopes it needs: the OpenAI app's, BentoML's own, the typed APIs'.
ROUTES = RouteTable()


def _current_pipeline() -> Pipeline | None:
    if _restarting:
        raise APIError("The inference engine stopped and is restarting; retry shortly.",
                       status=503, code="engine_unavailable", headers={"Retry-After": "5"})
    return _pipeline


openai_app = create_app(SETTINGS, ROUTES, _current_pipeline)
declare_bentoml_routes(ROUTES, protect_metrics=SETTINGS.auth.protect_metrics,
                       protect_docs=SETTINGS.auth.protect_docs)
TYPED_API_SCOPES = {
    "chat": frozenset({INFERENCE_SCOPE}),
    "extract": frozenset({INFERENCE_SCOPE}),
    "ask": frozenset({INFERENCE_SCOPE, DOCUMENTS_SCOPE}),
    "generate": frozenset({INFERENCE_SCOPE}),
}
for _name, _scopes in TYPED_API_SCOPES.items():
    ROUTES.declare(f"/{_name}", {"POST"}, scopes=_scopes)


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatResult(BaseModel):
    """What the typed `chat` API returns."""

    text: str
    finish_reason: str
    model: str
    usage: Usage


def _bentoml_error(error: APIError | ValidationError) -> Exception:
    """APIError -> the BentoML exception that carries the same HTTP status."""
    from bentoml import exceptions

    if isinstance(error, ValidationError):
        return exceptions.InvalidArgument(str(error))
    by_status = {400: exceptions.InvalidArgument, 404: exceptions.NotFound,
                 503: exceptions.ServiceUnavailable}
    return by_status.get(error.status, exceptions.InternalServerError)(error.message)


def _stop_whole_server() -> None:
    """A missing model is a configuration error: stop the whole server, without a stack
    trace and without BentoML's process manager respawning this worker in a loop."""
    import signal

    import psutil

    parent = psutil.Process(os.getppid())
    if "circus" in " ".join(parent.cmdline()) or parent.name() == "circusd":
        parent.send_signal(signal.SIGTERM)
    sys.stderr.flush()
    os._exit(3)


def _restart_worker() -> None:
    """When no new engine starts in this worker: leave it the way a supervisor's SIGTERM
    would, and circus starts a fresh one. In a container BentoML does not respawn
    workers: stop the whole server instead, so its orchestrator restarts it."""
    import signal

    global _pipeline, _restarting
    _pipeline, _restarting = None, False  # new requests: 503 while the worker restarts
    loop = asyncio.get_running_loop()
    if "BENTOML_CONTAINERIZED" in os.environ:
        logger.critical("stopping the server so its supervisor restarts it")
        loop.call_later(1.0, _stop_whole_server)
    else:
        logger.critical("restarting this worker to get a working engine")
        DRAIN.server_stops = False  # the next worker listens on the same socket
        loop.call_later(1.0, os.kill, os.getpid(), signal.SIGTERM)


@bentoml.service(
    name=SETTINGS.service.name,
    resources=SETTINGS.service.resources,
    # The access middleware enforces timeout and max_concurrency itself, answering in
    # OpenAI's error shape; BentoML's own (outside it) only backs the timeout up.
    traffic={"timeout": SETTINGS.service.traffic.timeout + 30},
    http={"port": SETTINGS.service.port},
    # Without an exporter BentoML's spans go nowhere, yet cost CPU on every request and
    # streamed chunk: skip them unless tracing is wanted (service.tracing).
    **({} if SETTINGS.service.tracing else {"tracing": {"excluded_urls": [".*"]}}),
    # One log line per request is enough: the audit line (openchat.audit) has it all.
    logging={"access": {"enabled": SETTINGS.service.access_log}},
)
@bentoml.asgi_app(openai_app, path="/")
class OpenChat:
    def __init__(self) -> None:
        from openchat.generation.engine import ModelNotFoundError, VLLMEngine
        from openchat.generation.template import (
            OpenChatTemplate,
            OpenChatTokenizer,
            find_tokenizer_model,
        )
        from tools import DataSources

        logs.configure(os.environ.get("OPENCHAT_LOG_LEVEL", "INFO"))
        try:
            engine = VLLMEngine(SETTINGS)
        except ModelNotFoundError as exc:
            logger.critical("cannot start: %s", exc)
            _stop_whole_server()
        tokenizer = OpenChatTokenizer(find_tokenizer_model(SETTINGS.tokenizer or SETTINGS.model))
        self.template = OpenChatTemplate(tokenizer)
        self.sources = DataSources.open(SETTINGS)
        self._watchdog: asyncio.Task[None] | None = None  # started with the server
        self._serve_with(engine)
        logger.info("serving %s as %s", SETTINGS.model,
                    ", ".join(p.model_id for p in SETTINGS.presets.values()))

    def _serve_with(self, engine) -> None:
        global _pipeline, _restarting
        self.engine = engine
        self.pipeline = Pipeline(SETTINGS, engine, self.template, self.sources.registry,
                                 self.sources.documents, self.sources.embedder)
        _pipeline, _restarting = self.pipeline, False

    def __is_ready__(self) -> bool:
        return self.engine.is_healthy and not DRAIN.draining

    def __is_alive__(self) -> bool:
        # A dead engine the watchdog has yet to notice (it polls) or that is being
        # replaced is a worker recovering; only a failed recovery is not alive.
        watching = self._watchdog is not None and not self._watchdog.done()
        return self.engine.is_healthy or _restarting or watching

    @bentoml.on_startup
    async def watch_engine(self) -> None:
        """If the engine dies, start a new one in this worker; meanwhile readiness fails
        and requests get 503 at once (the port keeps answering). Start the batch runner
        (openchat/api/batch_runner.py); it claims no new line while the worker drains or
        while interactive requests are in flight (batch.yield_to_interactive), and hands
        back the lines it runs when one reaches the engine (batch.preempt_for_interactive)."""
        self._watchdog = asyncio.create_task(self.engine.watch(self._on_engine_death))
        DRAIN.install(on_expired=lambda: self.engine.abort_all())
        yielding = SETTINGS.batch.yield_to_interactive
        runner = openai_app.state.batch_runner
        runner.start(hold=lambda: DRAIN.draining or (yielding and INTERACTIVE.in_flight > 0))
        INTERACTIVE.listen(runner.preempt)

    def _on_engine_death(self) -> None:
        global _restarting
        if DRAIN.draining:  # the engine ended its own drain after SIGTERM: nothing is wrong
            return
        _restarting = True  # now, not when the task first runs: liveness must not blink
        self._restart = asyncio.create_task(self._restart_engine())

    async def _restart_engine(self) -> None:
        from openchat.generation.engine import VLLMEngine

        logger.critical("starting a new vLLM engine in this worker")
        try:
            await asyncio.to_thread(self.engine.shutdown)
            engine = await asyncio.to_thread(VLLMEngine, SETTINGS)
        except Exception:
            logger.exception("the new engine did not start")
            _restart_worker()
            return
        if DRAIN.draining:  # SIGTERM came meanwhile: nothing is in flight to serve
            engine.shutdown()
            return
        self._serve_with(engine)
        self._watchdog = asyncio.create_task(self.engine.watch(self._on_engine_death))
        logger.info("the new vLLM engine serves")

    @bentoml.on_shutdown
    def stop_engine(self) -> None:
        global _pipeline
        _pipeline = None
        openai_app.state.batch_runner.stop()  # its lines in flight go back to the queue
        self.engine.shutdown()
        self.sources.close()

    @bentoml.api
    async def chat(
        self,
        messages: list[ChatMessage],
        model: str = SETTINGS.served_model_name,
        max_tokens: int | None = Field(None, ge=1),
        temperature: float | None = Field(None, ge=0, le=2),
        top_p: float | None = Field(None, gt=0, le=1),
        stop: list[str] | None = None,
        seed: int | None = None,
        condition: Condition | None = None,
    ) -> ChatResult:
        """One chat turn: OpenAI-style messages in, the assistant's text and usage out."""
        try:
            request = ChatCompletionRequest(
                model=model, messages=messages, max_tokens=max_tokens,
                temperature=temperature, top_p=top_p, stop=stop, seed=seed, condition=condition,
            )
            completion = await self.pipeline.chat(request)
        except (APIError, ValidationError) as error:
            raise _bentoml_error(error) from None
        choice = completion.choices[0]
        return ChatResult(
            text=choice.message.content or "",
            finish_reason=choice.finish_reason,
            model=completion.model,
            usage=Usage(**completion.usage.model_dump(include=set(Usage.model_fields))),
        )

    @bentoml.api
    async def extract(
        self,
        text: str,
        json_schema: dict[str, Any],
        model: str | None = None,
        max_tokens: int = Field(1024, ge=1),
        seed: int | None = None,
    ) -> dict[str, Any]:
        """Pull data out of `text` as an object that validates against `json_schema`.

        Uses the `extraction` preset unless `model` names another one.
        """
        if model is None:
            extraction = SETTINGS.presets.get("extraction")
            model = extraction.model_id if extraction else SETTINGS.served_model_name
        try:
            request = ChatCompletionRequest(
                model=model, messages=[{"role": "user", "content": text}],
                max_tokens=max_tokens, seed=seed,
                response_format={"type": "json_schema",
                                 "json_schema": {"name": "extraction", "schema": json_schema}},
            )
            completion = await self.pipeline.chat(request)
        except (APIError, ValidationError) as error:
            raise _bentoml_error(error) from None
        choice = completion.choices[0]
        if choice.finish_reason != "stop":
            raise _bentoml_error(APIError(
                f"The answer was cut off at max_tokens={max_tokens} before the object was "
                "complete; raise max_tokens.", code="max_tokens_reached"))
        return json.loads(choice.message.content)

    @bentoml.api
    async def ask(
        self,
        question: str = Field(min_length=1, max_length=8192),
        collection: str = SETTINGS.documents.default_collection,
        top_k: int = Field(5, ge=1),
        model: str = SETTINGS.served_model_name,
        max_tokens: int | None = Field(512, ge=1),
        seed: int | None = None,
    ) -> AskResult:
        """Answer `question` from the `top_k` most relevant chunks of `collection`, with
        citations (document id, source, text, score) in the order the answer numbers them."""
        try:
            return await self.pipeline.ask(question, collection, top_k, model=model,
                             max_tokens=max_tokens, seed=seed)
        except (APIError, ValidationError) as error:
            raise _bentoml_error(error) from None

    @bentoml.api
    async def generate(
        self,
        prompt: str,
        model: str = SETTINGS.served_model_name,
        max_tokens: int = Field(256, ge=1),
        temperature: float | None = Field(None, ge=0, le=2),
        stop: list[str] | None = None,
        seed: int | None = None,
    ) -> AsyncGenerator[str, None]:
        """Stream the continuation of a raw prompt as text pieces."""
        try:
            request = CompletionRequest(
                model=model, prompt=prompt, max_tokens=max_tokens, temperature=temperature,
                stop=stop, seed=seed, stream=True,
            )
            chunks = await self.pipeline.complete(request)
        except (APIError, ValidationError) as error:
            raise _bentoml_error(error) from None
        async for chunk in chunks:
            for choice in chunk["choices"]:
                if choice.get("text"):
                    yield choice["text"]


# Keys, scopes, rate limits, body limit, request ids and the audit log for every route:
# the OpenAI app, the typed APIs, the probes and /metrics (openchat/api/middleware.py).
OpenChat.add_asgi_middleware(AccessMiddleware, settings=SETTINGS, routes=ROUTES, drain=DRAIN)
# /docs.json as one true OpenAPI 3.1 document: the OpenAI app's spec and the typed APIs'.
OpenChat.add_asgi_middleware(DocsMiddleware, build=lambda: combined_spec(
    OpenChat.openapi_spec.asdict(), openai_app.openapi(), ROUTES))
