"""The request pipeline: validated request -> preparation (preset, prompt ids, constraints,
sampling) -> a flow over the engine -> an OpenAI response object or its chunks.

`Pipeline` is what the HTTP routes and the typed BentoML APIs call. It holds the engine
client, the `Preparer` and the data sources, and hands each flow (chat.py,
completions.py, toolloop.py, retrieval.py) exactly what it needs. It never touches HTTP:
results are response objects (whole) or async iterators of chunk dicts (streamed).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

from openai.types import Completion
from openai.types.chat import ChatCompletion

from openchat.config import Settings
from openchat.generation import chat, completions, responses, retrieval, toolloop
from openchat.generation.engine import EngineClient
from openchat.generation.file_search import FileSearch
from openchat.generation.preparation import Preparer
from openchat.generation.response_items import FILE_SEARCH
from openchat.generation.template import OpenChatTemplate
from openchat.protocol.errors import APIError, engine_unavailable, invalid_param
from openchat.protocol.requests import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    TokenizeRequest,
)
from openchat.protocol.responses import INPUT_ITEM, ResponseRequest
from tools.documents import DocumentStore
from tools.embeddings import Embedder
from tools.registry import Registry, Tool

ChatResult = ChatCompletion | AsyncIterator[dict[str, Any]]
CompletionResult = Completion | AsyncIterator[dict[str, Any]]
ResponseResult = dict[str, Any] | AsyncIterator[dict[str, Any]]


class Pipeline:
    def __init__(self, settings: Settings, engine: EngineClient, template: OpenChatTemplate,
                 tools: Registry | None = None, documents: DocumentStore | None = None,
                 embedder: Embedder | None = None) -> None:
        self.settings = settings
        self.engine = engine
        self.template = template
        self.tokenizer = template.tokenizer
        self.preparer = Preparer(settings, template, engine.max_model_len)
        self.tools = tools if tools is not None else Registry()
        self.documents = documents  # for ask and /v1/collections
        self.embedder = embedder  # for /v1/embeddings

    async def chat(self, request: ChatCompletionRequest,
                   allowed: Callable[[Tool], bool] | None = None) -> ChatResult:
        """A ChatCompletion, or an async iterator of chunk dicts when streaming.
        `allowed(tool)` says whether the caller may use a server tool (default: all)."""
        if request.server_tools is not None:
            tools = toolloop.select_server_tools(request, self.tools, self.settings.tools,
                                                 allowed)
            self._check_engine()
            return await toolloop.chat_with_server_tools(
                self.engine, self.preparer, self.tools, self.settings.tools, request, tools)
        prepared = self.preparer.chat(request)
        self._check_engine()
        if request.stream:
            return chat.stream_chat(self.engine, self.tokenizer.decode, request, prepared)
        return await chat.chat_completion(self.engine, self.tokenizer.decode, request,
                                          prepared)

    async def complete(self, request: CompletionRequest) -> CompletionResult:
        """A Completion, or an async iterator of chunk dicts when streaming."""
        prepared = self.preparer.completion(request)
        self._check_engine()
        if request.stream:
            return completions.stream_completion(self.engine, self.tokenizer.decode, request,
                                                 prepared)
        return await completions.text_completion(self.engine, self.tokenizer.decode,
                                                 request, prepared)

    async def respond(self, request: ResponseRequest, history: list[dict[str, Any]],
                      response_id: str,
                      allowed: Callable[[Tool], bool] | None = None) -> ResponseResult:
        """A Response (a dict of the `openai` type's shape), or its events when streaming.
        `history`: the stored conversation `previous_response_id` continues; `allowed` as
        on chat, for server tools and file_search."""
        items = [INPUT_ITEM.validate_python(item) for item in history]
        chat_request = responses.chat_request(request, items + request.input_items())
        source: responses.Source
        if chat_request.server_tools is not None:
            source = await self._server_tool_run(request, chat_request, allowed)
        else:
            source = responses.Generation(self.engine, self.preparer.chat(chat_request))
        self._check_engine()
        if request.stream:
            return responses.stream_response(request, source, response_id)
        return await responses.create_response(request, source, response_id)

    async def _server_tool_run(self, request: ResponseRequest,
                               chat_request: ChatCompletionRequest,
                               allowed: Callable[[Tool], bool] | None,
                               ) -> responses.ServerToolRun:
        """The tool loop for a response with server tools; its file_search, if any, is a
        tool of this request only."""
        registry, search = self.tools, None
        spec = request.file_search()
        if spec is not None:
            search = FileSearch(self.document_store(), spec)
            await asyncio.to_thread(search.check)  # Chroma may be a server: off the loop
            registry = Registry({**self.tools.tools, FILE_SEARCH: search.tool()})
        tools = toolloop.select_server_tools(chat_request, registry, self.settings.tools,
                                             allowed)
        loop = toolloop.ToolLoop(self.engine, self.preparer, registry, self.settings.tools,
                                 chat_request, tools)
        first = loop.prepare(0, list(chat_request.messages))  # the first step's errors: 4xx
        return responses.ServerToolRun(loop, first, search)

    async def ask(self, question: str, collection: str, top_k: int, *, model: str,
                  max_tokens: int | None = None,
                  seed: int | None = None) -> retrieval.AskResult:
        """An answer from `collection`'s most relevant chunks, with citations."""
        return await retrieval.ask(self.chat, self.document_store(), question, collection,
                                   top_k, model=model, max_tokens=max_tokens, seed=seed)

    def document_store(self) -> DocumentStore:
        if self.documents is None:
            raise APIError("No document store is configured.", status=503, code="unavailable")
        return self.documents

    def _check_engine(self) -> None:
        if not self.engine.is_healthy:
            raise engine_unavailable()

    # -- models and tokens --------------------------------------------------------------

    def server_tools(self) -> list[dict[str, Any]]:
        return [{**t.definition(), "scope": t.scope} for t in self.tools]

    def models(self) -> list[dict[str, Any]]:
        return [self.model_card(p.model_id) for p in self.settings.presets.values()]

    def model_card(self, model_id: str) -> dict[str, Any]:
        """The model object for a preset's id (404 for an unknown one)."""
        preset = self.preparer.preset(model_id)
        return {
            "id": preset.model_id,
            "object": "model",
            "created": 0,
            "owned_by": "openchat",
            "root": self.settings.model,
            "max_model_len": self.engine.max_model_len,
            "description": preset.description,
        }

    def tokenize(self, request: TokenizeRequest) -> dict[str, Any]:
        preset = self.preparer.preset(request.model)
        if request.messages is not None:
            ids = self.preparer.chat_prompt(request.messages, preset, request.condition)
        elif request.add_special_tokens:
            ids = self.template.render_text(request.prompt)
        else:
            ids = self.tokenizer.encode(request.prompt)
        return {"tokens": ids, "count": len(ids), "max_model_len": self.engine.max_model_len}

    def detokenize(self, request: DetokenizeRequest) -> dict[str, Any]:
        self.preparer.preset(request.model)
        bad = [t for t in request.tokens if not self.tokenizer.is_valid_id(t)]
        if bad:
            raise invalid_param("tokens", f"token id {bad[0]} is outside the vocabulary.")
        return {"prompt": self.tokenizer.decode(request.tokens, skip_special_tokens=False)}
