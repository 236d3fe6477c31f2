"""Legacy /v1/completions: raw prompts (strings or token ids), no chat template."""

from __future__ import annotations

import asyncio
import time
import uuid

from openchat import responses
from openchat.answer import Answer
from openchat.protocol import CompletionRequest
from openchat.streams import merge_streams


async def text_completion(server, request: CompletionRequest):
    """A Completion, or an async iterator of chunk dicts when streaming."""
    preset = server.preset(request.model)
    server.check_n(request)
    constraint = server.constraint(request)
    prompts = server.completion_prompts(request.prompt)
    params_list = [
        request.to_sampling_params(
            max_tokens=server.max_tokens_for(len(ids), request.max_tokens),
            defaults=preset.sampling, logprobs=request.logprobs,
            structured=constraint.params if constraint else None,
        )
        for ids, _ in prompts
    ]
    server.check_engine()
    request_id = f"cmpl-{uuid.uuid4().hex}"
    prompt_tokens = sum(len(ids) for ids, _ in prompts)
    if request.stream:
        return _stream(server, request, request_id, prompts, params_list, constraint)
    collected = await asyncio.gather(*(
        server.collect(ids, params, f"{request_id}-{i}", request.n)
        for i, ((ids, _), params) in enumerate(zip(prompts, params_list))
    ))
    for states in collected:
        for state in states:
            answer = Answer(state.index, constraint=constraint)
            answer.feed(state.text)
            state.finish_reason = answer.finish(state.finish_reason)
            state.text = answer.content() or state.text  # JSON output comes out escaped
    choices = [
        (i * request.n + state.index, text if request.echo else "", state)
        for i, ((_, text), states) in enumerate(zip(prompts, collected))
        for state in states
    ]
    return responses.completion(
        request_id, request.model, choices, prompt_tokens,
        request.logprobs, server.tokenizer.decode,
    )


async def _stream(server, request, request_id, prompts, params_list, constraint):
    created = int(time.time())
    model, n = request.model, request.n
    if request.echo:
        for i, (_, text) in enumerate(prompts):
            for j in range(n):
                yield responses.completion_chunk(request_id, model, created, i * n + j, text)
    streams = [
        server.engine.generate(ids, params, f"{request_id}-{i}")
        for i, ((ids, _), params) in enumerate(zip(prompts, params_list))
    ]
    offsets: dict[int, int] = {}
    answers: dict[int, Answer] = {}
    completion_tokens = 0
    async for prompt_index, output in merge_streams(streams):
        for choice in output.outputs:
            index = prompt_index * n + choice.index
            completion_tokens += len(choice.token_ids)
            logprobs = None
            if request.logprobs is not None:
                logprobs = responses.completion_logprobs(
                    list(choice.token_ids), choice.logprobs or [], request.logprobs,
                    server.tokenizer.decode, offsets.get(index, 0),
                )
            offsets[index] = offsets.get(index, 0) + len(choice.text)
            if index not in answers:
                answers[index] = Answer(index, constraint=constraint)
            answer = answers[index]
            text = "".join(event[1] for event in answer.feed(choice.text))
            reason = None
            if choice.finish_reason is not None:
                reason = answer.finish(choice.finish_reason)
            if text or reason or logprobs:
                yield responses.completion_chunk(
                    request_id, model, created, index, text, reason, logprobs
                )
    if request.include_usage_in_stream:
        yield responses.completion_usage_chunk(
            request_id, model, created, sum(len(ids) for ids, _ in prompts),
            completion_tokens,
        )
