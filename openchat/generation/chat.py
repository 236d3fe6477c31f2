"""/v1/chat/completions: a prepared chat generation -> the engine -> a ChatCompletion or
its stream of chunks.

Each choice's text goes through an `Answer` (answer.py): plain text, or content and tool
calls, verified before it leaves. Streamed and whole answers come from the same events.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

from openai.types.chat import ChatCompletion
from openai.types.chat.chat_completion import ChoiceLogprobs

from openchat.generation.answer import Answer
from openchat.generation.engine import EngineClient, cached_tokens
from openchat.generation.events import AnswerEvent, ArgumentsDelta, CallStart, TextDelta
from openchat.generation.preparation import PreparedChat
from openchat.generation.streams import collect
from openchat.protocol import outputs
from openchat.protocol.requests import ChatCompletionRequest

Decode = Callable[[Sequence[int]], str]


def new_request_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


async def chat_completion(engine: EngineClient, decode: Decode,
                          request: ChatCompletionRequest,
                          prepared: PreparedChat) -> ChatCompletion:
    """Run one prepared generation to the end: the whole ChatCompletion."""
    request_id = new_request_id()
    collected = await collect(engine, prepared.prompt_ids, prepared.params, request_id,
                              request.n)
    states = collected.states
    for state in states:
        answer = Answer(state.index, prepared.plan, prepared.constraint)
        answer.feed(state.text)
        state.finish_reason = answer.finish(state.finish_reason)
        state.content, state.tool_calls = answer.content(), answer.calls()
    return outputs.chat_completion(
        request_id, request.model, states, len(prepared.prompt_ids),
        request.logprobs_count(), decode, collected.cached_tokens,
    )


async def stream_chat(engine: EngineClient, decode: Decode, request: ChatCompletionRequest,
                      prepared: PreparedChat) -> AsyncIterator[dict[str, Any]]:
    """The same generation as chunk dicts, in OpenAI's order."""
    request_id = new_request_id()
    chunker = outputs.ChatChunker(request_id, request.model, request.include_usage_in_stream)
    top = request.logprobs_count()
    answers = [Answer(i, prepared.plan, prepared.constraint) for i in range(request.n)]
    for index in range(request.n):
        yield chunker.role(index)
    completion_tokens = cached = 0
    async for output in engine.generate(prepared.prompt_ids, prepared.params, request_id):
        cached = max(cached, cached_tokens(output))
        for choice in output.outputs:
            completion_tokens += len(choice.token_ids)
            answer = answers[choice.index]
            logprobs = None
            if top is not None and choice.token_ids:
                logprobs = outputs.chat_logprobs(
                    list(choice.token_ids), choice.logprobs or [], top, decode
                )
            events = answer.feed(choice.text)
            if logprobs is not None and not any(isinstance(e, TextDelta) for e in events):
                events.insert(0, TextDelta(""))
            for chunk in chunks_for(chunker, choice.index, events, logprobs):
                yield chunk
            if choice.finish_reason is not None:
                reason = answer.finish(choice.finish_reason)
                for chunk in chunks_for(chunker, choice.index, answer.tail, None):
                    yield chunk
                yield chunker.finish(choice.index, reason)
    if request.include_usage_in_stream:
        yield chunker.usage(len(prepared.prompt_ids), completion_tokens, cached)


def chunks_for(chunker: outputs.ChatChunker, index: int, events: list[AnswerEvent],
               logprobs: ChoiceLogprobs | None) -> Iterator[dict[str, Any]]:
    """Choice `index`'s chunks for `events`; the delta's logprobs ride on its first text."""
    for event in events:
        if isinstance(event, TextDelta):
            yield chunker.content(index, event.text, logprobs)
            logprobs = None
        elif isinstance(event, CallStart):
            yield chunker.tool_call_start(index, event.index, event.id, event.name)
        elif isinstance(event, ArgumentsDelta):
            yield chunker.tool_call_arguments(index, event.index, event.text)
