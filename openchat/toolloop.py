"""Server-side tools: generate -> run the service's own tool calls -> generate again.

A chat request opts in with `server_tools` (names from GET /v1/server_tools). Each step is
one ordinary chat generation (chat.prepare) over the conversation so far, offered the
client's tools plus the server tools. When the model calls only server tools, the service
runs them (concurrently, each with a timeout; a failure is the tool's result), appends the
call and its results to the conversation and generates again. The last step offers no
server tools, so the answer always ends in text or in calls to the client's own tools,
which go back to the client as usual. A step that calls client tools ends the loop there;
server calls made in that same step are not run (the model can ask again next turn).

Both response shapes come from one event stream, so streamed and whole answers agree:
text and client tool-call deltas pass through, server tools show up as progress events
(`server_tool_call` chunks) and, in the final message, as a `server_tool_calls` trace.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from openchat import chat, metrics, responses
from openchat.answer import Answer
from openchat.errors import APIError, invalid_param
from openchat.protocol import ChatCompletionRequest, ChatMessage

logger = logging.getLogger(__name__)


@dataclass
class TraceEntry:
    """One server tool call, as the response reports it."""

    id: str
    name: str
    arguments: dict[str, Any]
    step: int
    status: str = "running"  # "running", then "ok" or "error"
    result: str | None = None  # a summary of what the model read
    duration_ms: float | None = None
    truncated: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass
class LoopState:
    """What the whole request has produced so far, across steps."""

    content: list[str] = field(default_factory=list)
    client_calls: list = field(default_factory=list)
    trace: list[TraceEntry] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "stop"


def check_request(server, request: ChatCompletionRequest,
                  allowed: Callable[[Any], bool] | None = None) -> list:
    """The server tools the request asks for, after checking they exist and may run."""
    settings = server.settings.tools
    if not settings.enabled:
        raise invalid_param("server_tools", "Server-side tools are disabled on this service.")
    if request.n != 1:
        raise invalid_param("n", "server_tools work with n=1 only.")
    if request.logprobs:
        raise invalid_param("logprobs", "logprobs cannot be combined with server_tools.")
    if request.response_format is not None and request.response_format.type != "text" or (
            request.structured_outputs is not None):
        raise invalid_param("server_tools", "server_tools cannot be combined with "
                            "response_format or structured_outputs.")
    if request.max_tool_steps is not None and request.max_tool_steps > settings.max_steps:
        raise invalid_param("max_tool_steps", f"max_tool_steps must be at most "
                            f"{settings.max_steps}.")
    client_names = {t.get("function", {}).get("name") for t in request.tools or []
                    if isinstance(t, dict)}
    tools = []
    for i, name in enumerate(dict.fromkeys(request.server_tools or [])):
        tool = server.tools.get(name)
        if tool is None:
            raise invalid_param(f"server_tools[{i}]", f"Unknown server tool {name!r}; GET "
                                "/v1/server_tools lists them.")
        if name in client_names:
            raise invalid_param(f"server_tools[{i}]", f"{name!r} is both a server tool and "
                                "one of the request's tools.")
        if allowed is not None and not allowed(tool):
            raise APIError(f"This API key may not use the server tool {name!r} (scope "
                           f"{tool.scope!r}).", status=403, type="permission_error",
                           param=f"server_tools[{i}]", code="insufficient_scope")
        tools.append(tool)
    if not tools:
        raise invalid_param("server_tools", "server_tools must name at least one tool.")
    return tools


async def chat_with_server_tools(server, request: ChatCompletionRequest, tools: list):
    """A ChatCompletion with a `server_tool_calls` trace, or chunk dicts when streaming."""
    request_id = chat.new_request_id()
    steps = request.max_tool_steps or server.settings.tools.max_steps
    events = _run(server, request, {t.name: t for t in tools}, request_id, steps)
    first = await anext(events)  # the first step's validation errors are 400s, not events
    if request.stream:
        return _stream(request, request_id, first, events)
    try:
        async for _ in events:
            pass
    finally:
        await events.aclose()  # a cancelled request aborts its engine step at once
    return _completion(request, request_id, first)


async def _run(server, request, tools: dict, request_id: str, steps: int) -> AsyncIterator:
    """Yield the LoopState first, then ("text", s) / ("call_start", i, id, name) /
    ("arguments", i, s) for the client, and ("tool", TraceEntry) as server tools run.
    The LoopState fills in as the events go by."""
    state = LoopState()
    messages = list(request.messages)
    client_tools = list(request.tools or [])
    for step in range(steps):
        last = step == steps - 1
        offered = client_tools + ([] if last else [t.definition() for t in tools.values()])
        step_request = request.model_copy(update={
            "messages": messages, "tools": offered or None, "stream": False,
            "tool_choice": _choice_for(request.tool_choice, step, offered, tools),
            "server_tools": None,
        })
        prepared = chat.prepare(server, step_request)
        if step == 0:
            yield state
        answer = Answer(0, prepared.plan, None)
        held: set[int] = set()  # parser indexes of server calls: run here, not forwarded
        forwarded: dict[int, int] = {}  # parser index -> the client's tool-call index
        reason = "stop"
        async for output in server.engine.generate(
                prepared.prompt_ids, prepared.params, f"{request_id}-{step}"):
            choice = output.outputs[0]
            state.completion_tokens += len(choice.token_ids)
            events = answer.feed(choice.text)
            if choice.finish_reason is not None:
                reason = answer.finish(choice.finish_reason)
                events += answer.tail
            for event in _client_events(events, tools, held, forwarded, state):
                yield event
        state.prompt_tokens += len(prepared.prompt_ids)
        calls = answer.calls()
        server_calls = [c for c in calls if c.name in tools]
        if reason != "tool_calls" or len(server_calls) < len(calls):
            state.client_calls = [c for c in calls if c.name not in tools]
            state.finish_reason = "tool_calls" if state.client_calls else reason
            return
        entries = [TraceEntry(c.id, c.name, json.loads(c.arguments), step)
                   for c in server_calls]
        for entry in entries:
            state.trace.append(entry)
            yield ("tool", entry)
        await asyncio.gather(*(_execute(server, e) for e in entries))
        for entry in entries:
            yield ("tool", entry)
        messages = messages + _step_messages(answer.content(), server_calls, entries)
    logger.warning("request %s: tool loop ended without an answer", request_id)


def _choice_for(choice, step: int, offered: list, tools: dict):
    """The request's tool_choice binds the first step; later steps choose freely."""
    if not offered:
        return None
    if step == 0 and choice is not None:
        named = choice.get("function", {}).get("name") if isinstance(choice, dict) else None
        offered_names = {t["function"]["name"] for t in offered}
        if named is None or named in offered_names:
            return choice
    return "auto"


def _client_events(events, tools, held: set, forwarded: dict, state: LoopState):
    for event in events:
        if event[0] == "text":
            state.content.append(event[1])
            yield event
        elif event[0] == "call_start":
            if event[3] in tools:
                held.add(event[1])
                continue
            forwarded[event[1]] = len(forwarded)
            yield ("call_start", forwarded[event[1]], event[2], event[3])
        elif event[1] not in held:
            yield ("arguments", forwarded[event[1]], event[2])


async def _execute(server, entry: TraceEntry) -> None:
    limits = server.settings.tools
    result = await server.tools.run(entry.name, entry.arguments, timeout=limits.timeout_s,
                                    max_bytes=limits.max_result_bytes)
    entry.status = "ok" if result.ok else "error"
    metrics.TOOL_CALLS.labels(entry.name, entry.status).inc()
    metrics.TOOL_DURATION.labels(entry.name).observe(result.duration_ms / 1000)
    entry.result, entry.duration_ms = result.output, result.duration_ms
    entry.truncated = result.truncated
    logger.info("server tool %s (%s) %s in %.1f ms", entry.name, entry.id, entry.status,
                entry.duration_ms)


def _step_messages(content: str | None, calls,
                   entries: list[TraceEntry]) -> list[ChatMessage]:
    """The assistant's calls and the tools' results, as the next step's history."""
    assistant = ChatMessage(role="assistant", content=content, tool_calls=[
        {"id": c.id, "type": "function",
         "function": {"name": c.name, "arguments": c.arguments}} for c in calls
    ])
    results = [ChatMessage(role="tool", tool_call_id=e.id, content=e.result or "")
               for e in entries]
    return [assistant, *results]


def _summary(entry: TraceEntry, limit: int = 500) -> dict[str, Any]:
    data = entry.as_dict()
    if entry.result is not None and len(entry.result) > limit:
        data["result"] = entry.result[: limit - 1] + "…"
    return data


def _completion(request, request_id: str, state: LoopState):
    choice = responses.ChoiceState(index=0)
    choice.text = "".join(state.content)
    choice.content = choice.text or None
    choice.tool_calls = state.client_calls
    choice.finish_reason = state.finish_reason
    completion = responses.chat_completion(request_id, request.model, [choice], 0, None, None)
    completion.usage = responses.usage(state.prompt_tokens, state.completion_tokens)
    completion.server_tool_calls = [_summary(e) for e in state.trace]
    return completion


async def _stream(request, request_id: str, state: LoopState,
                  events: AsyncIterator) -> AsyncIterator[dict]:
    chunker = responses.ChatChunker(request_id, request.model,
                                    request.include_usage_in_stream)
    yield chunker.role(0)
    async for event in events:
        if event[0] == "tool":
            yield chunker.server_tool_call(_summary(event[1]))
        else:
            for chunk in chat.chunks_for(chunker, 0, [event], None):
                yield chunk
    yield chunker.finish(0, state.finish_reason)
    if request.include_usage_in_stream:
        yield chunker.usage(state.prompt_tokens, state.completion_tokens)
