"""/v1/chat/completions: messages -> prompt (+ tools or schema) -> engine -> answer.

Each choice's text goes through an `Answer` (answer.py): plain text, or content and tool
calls, verified before it leaves.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from openchat import responses
from openchat.answer import Answer
from openchat.functions import ToolPlan, check_no_tool_conflicts, plan_tools
from openchat.protocol import ChatCompletionRequest
from openchat.structured import Constraint


@dataclass
class PreparedChat:
    """Everything one generation needs, decided before the engine sees it."""

    prompt_ids: list[int]
    params: object  # vllm SamplingParams
    plan: ToolPlan | None
    constraint: Constraint | None


def prepare(server, request: ChatCompletionRequest) -> PreparedChat:
    """Validate and build one generation: preset, tools or schema, prompt, sampling."""
    from vllm.sampling_params import StructuredOutputsParams

    preset = server.preset(request.model)
    server.check_n(request)
    plan = plan_tools(request.tools, request.tool_choice, request.parallel_tool_calls)
    check_no_tool_conflicts(plan, request)
    constraint = server.constraint(request)
    if plan is not None:
        instruction = plan.instruction()
        structured = StructuredOutputsParams(structural_tag=plan.structural_tag())
    else:
        instruction = constraint.instruction if constraint else None
        structured = constraint.params if constraint else None
    prompt_ids = server.chat_prompt(request.messages, preset, request.condition, instruction)
    max_tokens = server.max_tokens_for(len(prompt_ids), request.requested_max_tokens())
    params = request.to_sampling_params(
        max_tokens=max_tokens, defaults=preset.sampling, logprobs=request.logprobs_count(),
        structured=structured,
    )
    server.check_engine()
    return PreparedChat(prompt_ids, params, plan, constraint)


async def chat_completion(server, request: ChatCompletionRequest):
    """A ChatCompletion, or an async iterator of chunk dicts when streaming."""
    prepared = prepare(server, request)
    prompt_ids, params = prepared.prompt_ids, prepared.params
    plan, constraint = prepared.plan, prepared.constraint
    request_id = new_request_id()
    if request.stream:
        return _stream(server, request, request_id, prompt_ids, params, plan, constraint)
    states = await server.collect(prompt_ids, params, request_id, request.n)
    for state in states:
        answer = Answer(state.index, plan, constraint)
        answer.feed(state.text)
        state.finish_reason = answer.finish(state.finish_reason)
        state.content, state.tool_calls = answer.content(), answer.calls()
    return responses.chat_completion(
        request_id, request.model, states, len(prompt_ids),
        request.logprobs_count(), server.tokenizer.decode,
    )


def new_request_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


async def _stream(server, request, request_id, prompt_ids, params, plan,
                  constraint) -> AsyncIterator[dict]:
    chunker = responses.ChatChunker(request_id, request.model, request.include_usage_in_stream)
    top = request.logprobs_count()
    answers = [Answer(i, plan, constraint) for i in range(request.n)]
    for index in range(request.n):
        yield chunker.role(index)
    completion_tokens = 0
    async for output in server.engine.generate(prompt_ids, params, request_id):
        for choice in output.outputs:
            completion_tokens += len(choice.token_ids)
            answer = answers[choice.index]
            logprobs = None
            if top is not None and choice.token_ids:
                logprobs = responses.chat_logprobs(
                    list(choice.token_ids), choice.logprobs or [], top, server.tokenizer.decode
                )
            events = answer.feed(choice.text)
            if logprobs is not None and not any(e[0] == "text" for e in events):
                events.insert(0, ("text", ""))
            for chunk in chunks_for(chunker, choice.index, events, logprobs):
                yield chunk
            if choice.finish_reason is not None:
                reason = answer.finish(choice.finish_reason)
                for chunk in chunks_for(chunker, choice.index, answer.tail, None):
                    yield chunk
                yield chunker.finish(choice.index, reason)
    if request.include_usage_in_stream:
        yield chunker.usage(len(prompt_ids), completion_tokens)


def chunks_for(chunker, index: int, events: list, logprobs):
    for event in events:
        if event[0] == "text":
            yield chunker.content(index, event[1], logprobs)
            logprobs = None  # a delta's logprobs go with its first text chunk
        elif event[0] == "call_start":
            yield chunker.tool_call_start(index, event[1], event[2], event[3])
        else:
            yield chunker.tool_call_arguments(index, event[1], event[2])
