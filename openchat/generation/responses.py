"""/v1/responses: a Responses API request -> chat generation(s) -> a Response object, or
its stream of typed events.

The request becomes a `ChatCompletionRequest` (instructions as the system message, input
items as turns, function tools, `text.format` as response_format), so presets,
validation, constraints and verification are exactly the chat path's. With `file_search`
or `server_tools` the chat request runs through the server-tool loop (toolloop.py), whose
calls become `file_search_call` and `mcp_call` items. Either way the events go through one
`ResponseAssembler` (response_items.py), so the whole and the streamed Response agree.
Storage and `previous_response_id` are the caller's: `items` starts with the history.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from openchat.generation.answer import Answer
from openchat.generation.engine import EngineClient, cached_tokens, engine_error
from openchat.generation.events import AnswerEvent, ToolProgress
from openchat.generation.file_search import FileSearch
from openchat.generation.preparation import PreparedChat
from openchat.generation.response_items import (
    FILE_SEARCH,
    Citations,
    ResponseAssembler,
    new_response_id,
    usage,
)
from openchat.generation.toolloop import ToolLoop
from openchat.protocol.errors import APIError, invalid_param
from openchat.protocol.requests import ChatCompletionRequest, ChatMessage
from openchat.protocol.responses import (
    FunctionCallItem,
    HostedToolChoice,
    Item,
    MessageItem,
    ResponseRequest,
    ServerCallItem,
)

# -- request -> chat ----------------------------------------------------------------------


def chat_request(request: ResponseRequest, items: Sequence[Item]) -> ChatCompletionRequest:
    """The chat generation that answers `items` (the history, then this input)."""
    messages: list[ChatMessage] = []
    if request.instructions:
        messages.append(ChatMessage(role="system", content=request.instructions))
    for item in items:
        if isinstance(item, MessageItem):
            messages.append(ChatMessage(role=item.role, content=item.text()))
        elif isinstance(item, FunctionCallItem):
            if item.status == "incomplete":
                continue  # a call cut off by the token limit was never made
            call = {"id": item.call_id, "type": "function",
                    "function": {"name": item.name, "arguments": item.arguments}}
            last = messages[-1] if messages else None
            if last is not None and last.role == "assistant" and last.tool_calls is not None:
                last.tool_calls.append(call)  # parallel calls: one assistant turn
            else:
                messages.append(ChatMessage(role="assistant", content=None, tool_calls=[call]))
        elif isinstance(item, ServerCallItem):
            continue  # its result already shaped the answer that followed it
        else:
            messages.append(ChatMessage(role="tool", tool_call_id=item.call_id,
                                        content=item.text()))
    fields: dict[str, Any] = dict(
        model=request.model, messages=messages, max_tokens=request.max_output_tokens,
        temperature=request.temperature, top_p=request.top_p, seed=request.seed,
        condition=request.condition, parallel_tool_calls=request.parallel_tool_calls,
        response_format=_response_format(request), max_tool_steps=request.max_tool_steps,
    )
    server_tools = list(request.server_tools or [])
    if request.file_search() is not None:
        server_tools.append(FILE_SEARCH)
    if server_tools and request.tool_choice != "none":
        fields["server_tools"] = server_tools
    functions = request.function_tools()
    if request.tool_choice == "required" and not (functions or server_tools):
        raise invalid_param("tool_choice", "tool_choice 'required' needs a tool the model "
                            "can call here: a function, file_search or server_tools (hosted "
                            "tools such as web_search are not available).")
    if (functions or server_tools) and request.tool_choice != "none":
        if functions:
            fields["tools"] = [tool.as_chat_tool() for tool in functions]
        choice = request.tool_choice
        if isinstance(choice, HostedToolChoice):
            choice = {"type": "function", "function": {"name": FILE_SEARCH}}
        elif choice is not None and not isinstance(choice, str):
            choice = {"type": "function", "function": {"name": choice.name}}
        fields["tool_choice"] = choice
    try:
        return ChatCompletionRequest(**fields)
    except ValueError as exc:  # a pydantic ValidationError: say which field, as FastAPI does
        raise APIError(f"Invalid request: {exc}", code="invalid_value") from None


def _response_format(request: ResponseRequest) -> dict[str, Any] | None:
    text_format = request.text_format
    if text_format is None or text_format.type == "text":
        return None
    if text_format.type == "json_object":
        return {"type": "json_object"}
    spec: dict[str, Any] = {"name": text_format.name, "schema": text_format.schema_}
    if text_format.description is not None:
        spec["description"] = text_format.description
    if text_format.strict is not None:
        spec["strict"] = text_format.strict
    return {"type": "json_schema", "json_schema": spec}


# -- where the events come from ---------------------------------------------------------

@dataclass
class Outcome:
    """How the generation(s) ended, filled in as the events go by."""

    reason: str = "stop"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    complete_call_ids: set[str] = field(default_factory=set)


@dataclass
class Generation:
    """One prepared generation (no server tools)."""

    engine: EngineClient
    prepared: PreparedChat

    async def events(self, request_id: str, outcome: Outcome) -> AsyncIterator[AnswerEvent]:
        prepared = self.prepared
        answer = Answer(0, prepared.plan, prepared.constraint)
        outcome.prompt_tokens = len(prepared.prompt_ids)
        async for output in self.engine.generate(prepared.prompt_ids, prepared.params,
                                                 request_id):
            outcome.cached_tokens = max(outcome.cached_tokens, cached_tokens(output))
            choice = output.outputs[0]
            outcome.completion_tokens += len(choice.token_ids)
            events = answer.feed(choice.text)
            if choice.finish_reason is not None:
                outcome.reason = answer.finish(choice.finish_reason)
                events += answer.tail
            for event in events:
                yield event
        outcome.complete_call_ids = {c.id for c in answer.calls()}


@dataclass
class ServerToolRun:
    """The server-tool loop over a prepared first step (file_search, server_tools)."""

    loop: ToolLoop
    first: PreparedChat
    file_search: FileSearch | None = None

    async def events(self, request_id: str,
                     outcome: Outcome) -> AsyncIterator[AnswerEvent | ToolProgress]:
        state = self.loop.state
        async for event in self.loop.run(self.first):
            yield event
        outcome.reason = state.finish_reason
        outcome.prompt_tokens, outcome.completion_tokens = (state.prompt_tokens,
                                                            state.completion_tokens)
        outcome.cached_tokens = state.cached_tokens
        outcome.complete_call_ids = {c.id for c in state.client_calls}


Source = Generation | ServerToolRun


def _citations(source: Source) -> Citations | None:
    if isinstance(source, ServerToolRun) and source.file_search is not None:
        return source.file_search.citations
    return None


# -- the flow -------------------------------------------------------------------------------

async def stream_response(request: ResponseRequest, source: Source,
                          response_id: str | None = None) -> AsyncIterator[dict[str, Any]]:
    """The Response's events, ending with response.completed or response.incomplete; an
    error on the way is an `error` event and response.failed, never a stream that stops."""
    assembler = ResponseAssembler(request, response_id or new_response_id(),
                                  _citations(source))
    try:
        async for event in _events(source, assembler):
            yield event
    except Exception as exc:
        error = exc if isinstance(exc, APIError) else engine_error(exc)
        if error is None:
            raise  # a bug: the HTTP layer logs it and ends the stream with an error event
        yield assembler.event("error", code=error.code, message=error.message,
                              param=error.param)
        # The Response's error code is one of OpenAI's few; the event above has ours.
        code = "rate_limit_exceeded" if error.status == 429 else "server_error"
        failed = assembler.response(status="failed", error={
            "code": code, "message": f"{error.message} ({error.code})"})
        yield assembler.event("response.failed", response=failed)


async def create_response(request: ResponseRequest, source: Source,
                          response_id: str | None = None) -> dict[str, Any]:
    """The whole Response: the same events run to the end; errors raise as they are."""
    assembler = ResponseAssembler(request, response_id or new_response_id(),
                                  _citations(source))
    final: dict[str, Any] = {}
    events = _events(source, assembler)
    try:
        async for event in events:
            final = event.get("response", final)
    finally:
        await events.aclose()  # a cancelled request aborts its engine request at once
    return final


async def _events(source: Source,
                  assembler: ResponseAssembler) -> AsyncIterator[dict[str, Any]]:
    for event in assembler.start():
        yield event
    outcome = Outcome()
    async for event in source.events(assembler.id, outcome):
        out = (assembler.server_call(event.entry) if isinstance(event, ToolProgress)
               else assembler.feed([event]))
        for item_event in out:
            yield item_event
    for event in assembler.finish(outcome.reason, outcome.complete_call_ids):
        yield event
    status = "incomplete" if outcome.reason == "length" else "completed"
    final = assembler.response(status=status, reason=outcome.reason, usage=usage(
        outcome.prompt_tokens, outcome.completion_tokens, outcome.cached_tokens))
    yield assembler.event(f"response.{status}", response=final)
