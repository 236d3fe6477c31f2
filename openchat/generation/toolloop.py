"""Server-side tools: generate -> run the service's own tool calls -> generate again.

A chat request opts in with `server_tools` (names from GET /v1/server_tools). Each step is
one ordinary chat generation (Preparer.chat) over the conversation so far, offered the
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

from openai.types.chat import ChatCompletion

from openchat.config import ToolSettings
from openchat.generation.answer import Answer
from openchat.generation.chat import chunks_for, new_request_id
from openchat.generation.engine import EngineClient, cached_tokens
from openchat.generation.events import (
    AnswerEvent,
    ArgumentsDelta,
    CallStart,
    TextDelta,
    ToolProgress,
    TraceEntry,
)
from openchat.generation.preparation import PreparedChat, Preparer
from openchat.generation.toolparser import ToolCall
from openchat.protocol import outputs
from openchat.protocol.errors import APIError, invalid_param
from openchat.protocol.requests import ChatCompletionRequest, ChatMessage
from openchat.telemetry import metrics
from tools.registry import Registry, Tool

logger = logging.getLogger(__name__)


@dataclass
class LoopState:
    """What the whole request has produced so far, across steps."""

    content: list[str] = field(default_factory=list)
    client_calls: list[ToolCall] = field(default_factory=list)
    trace: list[TraceEntry] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    finish_reason: str = "stop"


def select_server_tools(request: ChatCompletionRequest, registry: Registry,
                        settings: ToolSettings,
                        allowed: Callable[[Tool], bool] | None = None) -> list[Tool]:
    """The server tools the request asks for, after checking they exist and may run."""
    if not settings.enabled:
        raise invalid_param("server_tools", "Server-side tools are disabled on this service.")
    if request.n != 1:
        raise invalid_param("n", "server_tools work with n=1 only.")
    if request.logprobs:
        raise invalid_param("logprobs", "logprobs cannot be combined with server_tools.")
    if request.wants_structured_output:
        raise invalid_param("server_tools", "server_tools cannot be combined with "
                            "response_format or structured_outputs.")
    if request.max_tool_steps is not None and request.max_tool_steps > settings.max_steps:
        raise invalid_param("max_tool_steps", f"max_tool_steps must be at most "
                            f"{settings.max_steps}.")
    client_names = {t.get("function", {}).get("name") for t in request.tools or []
                    if isinstance(t, dict)}
    tools = []
    for i, name in enumerate(dict.fromkeys(request.server_tools or [])):
        tool = registry.get(name)
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


async def chat_with_server_tools(
    engine: EngineClient, preparer: Preparer, registry: Registry, settings: ToolSettings,
    request: ChatCompletionRequest, tools: list[Tool],
) -> ChatCompletion | AsyncIterator[dict[str, Any]]:
    """A ChatCompletion with a `server_tool_calls` trace, or chunk dicts when streaming."""
    loop = ToolLoop(engine, preparer, registry, settings, request, tools)
    first = loop.prepare(0, list(request.messages))  # the first step's errors are 400s
    events = loop.run(first)
    if request.stream:
        return _stream(request, loop, events)
    try:
        async for _ in events:
            pass
    finally:
        await events.aclose()  # a cancelled request aborts its engine step at once
    return _completion(request, loop)


class ToolLoop:
    """One request's generate -> run tools -> generate cycle; `state` fills in as the
    events of `run` go by."""

    def __init__(self, engine: EngineClient, preparer: Preparer, registry: Registry,
                 settings: ToolSettings, request: ChatCompletionRequest,
                 tools: list[Tool]) -> None:
        self.engine = engine
        self.preparer = preparer
        self.registry = registry
        self.settings = settings
        self.request = request
        self.tools = {t.name: t for t in tools}
        self.steps = request.max_tool_steps or settings.max_steps
        self.request_id = new_request_id()
        self.state = LoopState()
        self._messages: list[ChatMessage] = []

    def prepare(self, step: int, messages: list[ChatMessage]) -> PreparedChat:
        """Step `step`'s generation over `messages`; the last step offers no server tools."""
        self._messages = messages
        last = step == self.steps - 1
        client_tools = list(self.request.tools or [])
        offered = client_tools + ([] if last else [t.definition() for t in self.tools.values()])
        return self.preparer.chat(self.request.model_copy(update={
            "messages": messages, "tools": offered or None, "stream": False,
            "tool_choice": _choice_for(self.request.tool_choice, step, offered),
            "server_tools": None,
        }))

    async def run(self, first: PreparedChat) -> AsyncIterator[AnswerEvent | ToolProgress]:
        """Text and client tool-call events for the client, and ToolProgress as server
        tools run."""
        state, prepared = self.state, first
        for step in range(self.steps):
            if step:
                prepared = self.prepare(step, self._messages)
            answer = Answer(0, prepared.plan, None)
            held: set[int] = set()  # parser indexes of server calls: run here, not forwarded
            forwarded: dict[int, int] = {}  # parser index -> the client's tool-call index
            reason = "stop"
            step_cached = 0
            async for output in self.engine.generate(
                    prepared.prompt_ids, prepared.params, f"{self.request_id}-{step}"):
                step_cached = cached_tokens(output)
                choice = output.outputs[0]
                state.completion_tokens += len(choice.token_ids)
                events = answer.feed(choice.text)
                if choice.finish_reason is not None:
                    reason = answer.finish(choice.finish_reason)
                    events += answer.tail
                for event in self._client_events(events, held, forwarded):
                    yield event
            state.prompt_tokens += len(prepared.prompt_ids)
            state.cached_tokens += step_cached
            calls = answer.calls()
            server_calls = [c for c in calls if c.name in self.tools]
            if reason != "tool_calls" or len(server_calls) < len(calls):
                state.client_calls = [c for c in calls if c.name not in self.tools]
                state.finish_reason = "tool_calls" if state.client_calls else reason
                return
            entries = [TraceEntry(c.id, c.name, json.loads(c.arguments), step)
                       for c in server_calls]
            for entry in entries:
                state.trace.append(entry)
                yield ToolProgress(entry)
            await asyncio.gather(*(self._execute(e) for e in entries))
            for entry in entries:
                yield ToolProgress(entry)
            self._messages = self._messages + _step_messages(answer.content() or None,
                                                             server_calls,
                                                             entries)
        logger.warning("request %s: tool loop ended without an answer", self.request_id)

    def _client_events(self, events: list[AnswerEvent], held: set[int],
                       forwarded: dict[int, int]) -> list[AnswerEvent]:
        """The events the client sees: server calls are held back, client calls are
        renumbered among themselves."""
        out: list[AnswerEvent] = []
        for event in events:
            if isinstance(event, TextDelta):
                self.state.content.append(event.text)
                out.append(event)
            elif isinstance(event, CallStart):
                if event.name in self.tools:
                    held.add(event.index)
                    continue
                forwarded[event.index] = len(forwarded)
                out.append(CallStart(forwarded[event.index], event.id, event.name))
            elif isinstance(event, ArgumentsDelta) and event.index not in held:
                out.append(ArgumentsDelta(forwarded[event.index], event.text))
        return out

    async def _execute(self, entry: TraceEntry) -> None:
        result = await self.registry.run(entry.name, entry.arguments,
                                         timeout=self.settings.timeout_s,
                                         max_bytes=self.settings.max_result_bytes)
        entry.status = "ok" if result.ok else "error"
        metrics.TOOL_CALLS.labels(entry.name, entry.status).inc()
        metrics.TOOL_DURATION.labels(entry.name).observe(result.duration_ms / 1000)
        entry.result, entry.duration_ms = result.output, result.duration_ms
        entry.truncated = result.truncated
        logger.info("server tool %s (%s) %s in %.1f ms", entry.name, entry.id, entry.status,
                    entry.duration_ms)


def _choice_for(choice: str | dict[str, Any] | None, step: int,
                offered: list[dict[str, Any]]) -> str | dict[str, Any] | None:
    """The request's tool_choice binds the first step; later steps choose freely."""
    if not offered:
        return None
    if step == 0 and choice is not None:
        named = choice.get("function", {}).get("name") if isinstance(choice, dict) else None
        offered_names = {t["function"]["name"] for t in offered}
        if named is None or named in offered_names:
            return choice
    return "auto"


def _step_messages(content: str | None, calls: list[ToolCall],
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


def _completion(request: ChatCompletionRequest, loop: ToolLoop) -> ChatCompletion:
    state = loop.state
    choice = outputs.ChoiceState(index=0)
    choice.text = "".join(state.content)
    choice.content = choice.text or None
    choice.tool_calls = state.client_calls
    choice.finish_reason = state.finish_reason
    completion = outputs.chat_completion(loop.request_id, request.model, [choice], 0, None,
                                         None)
    completion.usage = outputs.usage(state.prompt_tokens, state.completion_tokens,
                                     state.cached_tokens)
    completion.server_tool_calls = [_summary(e) for e in state.trace]
    return completion


async def _stream(request: ChatCompletionRequest, loop: ToolLoop,
                  events: AsyncIterator[AnswerEvent | ToolProgress],
                  ) -> AsyncIterator[dict[str, Any]]:
    chunker = outputs.ChatChunker(loop.request_id, request.model,
                                  request.include_usage_in_stream)
    yield chunker.role(0)
    async for event in events:
        if isinstance(event, ToolProgress):
            yield chunker.server_tool_call(_summary(event.entry))
        else:
            for chunk in chunks_for(chunker, 0, [event], None):
                yield chunk
    yield chunker.finish(0, loop.state.finish_reason)
    if request.include_usage_in_stream:
        yield chunker.usage(loop.state.prompt_tokens, loop.state.completion_tokens,
                            loop.state.cached_tokens)
