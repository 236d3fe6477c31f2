"""Legacy /v1/completions: prepared raw prompts (strings or token ids, no chat template)
-> one engine request per prompt -> a Completion or its stream of chunks."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from openai.types import Completion

from openchat.generation.answer import Answer
from openchat.generation.chat import Decode
from openchat.generation.engine import EngineClient, cached_tokens
from openchat.generation.preparation import PreparedCompletion
from openchat.generation.streams import collect, merge_streams
from openchat.protocol import outputs
from openchat.protocol.requests import CompletionRequest


def new_request_id() -> str:
    return f"cmpl-{uuid.uuid4().hex}"


async def text_completion(engine: EngineClient, decode: Decode, request: CompletionRequest,
                          prepared: PreparedCompletion) -> Completion:
    """Run every prompt's request to the end: the whole Completion."""
    request_id = new_request_id()
    collected = await asyncio.gather(*(
        collect(engine, prompt.ids, params, f"{request_id}-{i}", request.n)
        for i, (prompt, params) in enumerate(zip(prepared.prompts, prepared.params))
    ))
    for run in collected:
        for state in run.states:
            answer = Answer(state.index, constraint=prepared.constraint)
            answer.feed(state.text)
            state.finish_reason = answer.finish(state.finish_reason)
            state.text = answer.content() or state.text  # JSON output comes out escaped
    choices = [
        (i * request.n + state.index, prompt.text if request.echo else "", state)
        for i, (prompt, run) in enumerate(zip(prepared.prompts, collected))
        for state in run.states
    ]
    return outputs.completion(
        request_id, request.model, choices, prepared.prompt_tokens, request.logprobs, decode,
        sum(run.cached_tokens for run in collected),
    )


async def stream_completion(engine: EngineClient, decode: Decode, request: CompletionRequest,
                            prepared: PreparedCompletion) -> AsyncIterator[dict[str, Any]]:
    """The same completion as chunk dicts, choices interleaved as they are generated."""
    request_id = new_request_id()
    created = int(time.time())
    model, n = request.model, request.n
    if request.echo:
        for i, prompt in enumerate(prepared.prompts):
            for j in range(n):
                yield outputs.completion_chunk(request_id, model, created, i * n + j,
                                               prompt.text)
    streams = [
        engine.generate(prompt.ids, params, f"{request_id}-{i}")
        for i, (prompt, params) in enumerate(zip(prepared.prompts, prepared.params))
    ]
    offsets: dict[int, int] = {}
    answers: dict[int, Answer] = {}
    completion_tokens = 0
    cached: dict[int, int] = {}  # prompt index -> its request's prefix-cache hits
    async for prompt_index, output in merge_streams(streams):
        cached[prompt_index] = cached_tokens(output)
        for choice in output.outputs:
            index = prompt_index * n + choice.index
            completion_tokens += len(choice.token_ids)
            logprobs = None
            if request.logprobs is not None:
                logprobs = outputs.completion_logprobs(
                    list(choice.token_ids), choice.logprobs or [], request.logprobs,
                    decode, offsets.get(index, 0),
                )
            offsets[index] = offsets.get(index, 0) + len(choice.text)
            if index not in answers:
                answers[index] = Answer(index, constraint=prepared.constraint)
            answer = answers[index]
            text = "".join(event.text for event in answer.feed(choice.text))
            reason = None
            if choice.finish_reason is not None:
                reason = answer.finish(choice.finish_reason)
            if text or reason or logprobs:
                yield outputs.completion_chunk(
                    request_id, model, created, index, text, reason, logprobs
                )
    if request.include_usage_in_stream:
        yield outputs.completion_usage_chunk(
            request_id, model, created, prepared.prompt_tokens, completion_tokens,
            sum(cached.values()),
        )
