"""Response builders: vLLM outputs -> the `openai` package's own response types.

Building the official types (ChatCompletion, Completion) keeps every shape exactly what
OpenAI clients parse; `as_json` dumps only the fields we set. Stream chunks, built once
per token, are dicts of the same shape as the dumped ChatCompletionChunk and Completion
(tests/test_outputs.py holds them to it).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from openai.types import Completion, CompletionChoice, CompletionUsage
from openai.types.completion_usage import PromptTokensDetails
from openai.types.chat import (
    ChatCompletion,
    ChatCompletionMessage,
    ChatCompletionMessageFunctionToolCall,
    ChatCompletionTokenLogprob,
)
from openai.types.chat.chat_completion import Choice, ChoiceLogprobs
from openai.types.chat.chat_completion_message_function_tool_call import Function
from openai.types.chat.chat_completion_token_logprob import TopLogprob
from openai.types.completion_choice import Logprobs

FINISH_REASONS = {"stop": "stop", "length": "length"}  # vLLM's "abort" is a 503 (engine.py)


def as_json(model) -> dict[str, Any]:
    return model.model_dump(mode="json", exclude_unset=True)


def usage(prompt_tokens: int, completion_tokens: int,
          cached_tokens: int = 0) -> CompletionUsage:
    """OpenAI's usage; `cached_tokens`: prompt tokens the engine's prefix cache served."""
    return CompletionUsage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=cached_tokens),
    )


@dataclass
class ChoiceState:
    """What one generated choice has produced so far."""

    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[dict] = field(default_factory=list)
    finish_reason: str | None = None
    # Set when tools were offered: the text outside call blocks, and the calls.
    content: str | None = None
    tool_calls: list = field(default_factory=list)

    def add(self, output) -> None:
        self.text += output.text
        self.token_ids.extend(output.token_ids)
        if output.logprobs:
            self.logprobs.extend(output.logprobs)
        if output.finish_reason is not None:
            self.finish_reason = FINISH_REASONS.get(output.finish_reason, "stop")


# -- logprobs -----------------------------------------------------------------------------

def _token_text(logprob, token_id: int, decode) -> str:
    return logprob.decoded_token if logprob.decoded_token is not None else decode([token_id])


def _top_alternatives(step: dict, top: int) -> list:
    """The `top` best (token id, Logprob) pairs of one step, best first."""
    ranked = [(tid, lp) for tid, lp in step.items() if lp.rank is not None and lp.rank <= top]
    return sorted(ranked, key=lambda item: item[1].rank)[:top]


def chat_logprobs(token_ids: list[int], steps: list[dict], top: int, decode) -> ChoiceLogprobs:
    """OpenAI chat logprobs: per sampled token, its logprob and the `top` alternatives."""
    content = []
    for token_id, step in zip(token_ids, steps):
        sampled = step[token_id]
        text = _token_text(sampled, token_id, decode)
        content.append(
            ChatCompletionTokenLogprob(
                token=text,
                logprob=max(sampled.logprob, -9999.0),
                bytes=list(text.encode("utf-8")),
                top_logprobs=[
                    TopLogprob(
                        token=(t := _token_text(lp, tid, decode)),
                        logprob=max(lp.logprob, -9999.0),
                        bytes=list(t.encode("utf-8")),
                    )
                    for tid, lp in _top_alternatives(step, top)
                ],
            )
        )
    return ChoiceLogprobs(content=content)


def completion_logprobs(
    token_ids: list[int], steps: list[dict], top: int, decode, text_offset: int = 0
) -> Logprobs:
    """Legacy completions logprobs: tokens, token_logprobs, top_logprobs, text_offset."""
    tokens, token_logprobs, top_logprobs, offsets = [], [], [], []
    offset = text_offset
    for token_id, step in zip(token_ids, steps):
        sampled = step[token_id]
        text = _token_text(sampled, token_id, decode)
        tokens.append(text)
        token_logprobs.append(max(sampled.logprob, -9999.0))
        top_logprobs.append({_token_text(lp, tid, decode): lp.logprob
                             for tid, lp in _top_alternatives(step, top)})
        offsets.append(offset)
        offset += len(text)
    return Logprobs(
        tokens=tokens, token_logprobs=token_logprobs,
        top_logprobs=top_logprobs, text_offset=offsets,
    )


# -- chat ---------------------------------------------------------------------------------

def chat_completion(
    request_id: str, model: str, choices: list[ChoiceState], prompt_tokens: int,
    logprobs_top: int | None, decode, cached_tokens: int = 0,
) -> ChatCompletion:
    return ChatCompletion(
        id=request_id,
        object="chat.completion",
        created=int(time.time()),
        model=model,
        choices=[
            Choice(
                index=c.index,
                message=_message(c),
                finish_reason=c.finish_reason or "stop",
                logprobs=chat_logprobs(c.token_ids, c.logprobs, logprobs_top, decode)
                if logprobs_top is not None else None,
            )
            for c in choices
        ],
        usage=usage(prompt_tokens, sum(len(c.token_ids) for c in choices), cached_tokens),
    )


def _message(choice: ChoiceState) -> ChatCompletionMessage:
    if not choice.tool_calls:
        # content None: no parser ran, the engine's text is the answer; "" with tools
        # offered: nothing outside the (possibly cut-off) calls, which is null, as OpenAI.
        content = choice.text if choice.content is None else (choice.content or None)
        return ChatCompletionMessage(role="assistant", content=content)
    return ChatCompletionMessage(
        role="assistant",
        content=choice.content or None,
        tool_calls=[
            ChatCompletionMessageFunctionToolCall(
                id=call.id, type="function",
                function=Function(name=call.name, arguments=call.arguments),
            )
            for call in choice.tool_calls
        ],
    )


class ChatChunker:
    """Builds the chunks of one streamed chat completion, in OpenAI's order: a role chunk
    per choice, content deltas, a finish chunk per choice, then an optional usage chunk.

    Chunks are plain dicts with exactly the keys, in the order, of the `openai` package's
    ChatCompletionChunk dumped by `as_json`: one is built per generated token, and building
    and dumping the pydantic model cost more than all the rest of our work on the token.
    """

    def __init__(self, request_id: str, model: str, include_usage: bool) -> None:
        self.request_id = request_id
        self.model = model
        self.created = int(time.time())
        self.include_usage = include_usage

    def _chunk(self, choices: list[dict[str, Any]], **extra) -> dict[str, Any]:
        chunk = {"id": self.request_id, "choices": choices, "created": self.created,
                 "model": self.model, "object": "chat.completion.chunk"}
        if self.include_usage and "usage" not in extra:
            chunk["usage"] = None
        chunk.update(extra)
        return chunk

    def _delta(self, index: int, delta: dict[str, Any], finish_reason: str | None = None,
               logprobs: ChoiceLogprobs | None = None) -> dict[str, Any]:
        choice = {"delta": delta, "index": index, "finish_reason": finish_reason}
        if logprobs is not None:
            choice["logprobs"] = as_json(logprobs)
        return self._chunk([choice])

    def role(self, index: int) -> dict[str, Any]:
        return self._delta(index, {"content": "", "role": "assistant"})

    def content(self, index: int, text: str, logprobs: ChoiceLogprobs | None) -> dict[str, Any]:
        return self._delta(index, {"content": text}, logprobs=logprobs)

    def tool_call_start(self, index: int, call_index: int, call_id: str,
                        name: str) -> dict[str, Any]:
        """OpenAI's first delta of a call: index, id, type and name, empty arguments."""
        call = {"index": call_index, "id": call_id,
                "function": {"arguments": "", "name": name}, "type": "function"}
        return self._delta(index, {"tool_calls": [call]})

    def tool_call_arguments(self, index: int, call_index: int,
                            fragment: str) -> dict[str, Any]:
        call = {"index": call_index, "function": {"arguments": fragment}}
        return self._delta(index, {"tool_calls": [call]})

    def finish(self, index: int, finish_reason: str) -> dict[str, Any]:
        return self._delta(index, {}, finish_reason)

    def usage(self, prompt_tokens: int, completion_tokens: int,
              cached_tokens: int = 0) -> dict[str, Any]:
        return self._chunk([], usage=_usage_json(prompt_tokens, completion_tokens,
                                                 cached_tokens))

    def server_tool_call(self, entry: dict[str, Any]) -> dict[str, Any]:
        """Progress of a server-side tool (an extension): a chunk with no choices, like
        the usage chunk, so OpenAI clients pass it by."""
        return self._chunk([], server_tool_call=entry)


def _usage_json(prompt_tokens: int, completion_tokens: int,
                cached_tokens: int = 0) -> dict[str, Any]:
    """`as_json(usage(...))`, without the model."""
    return {"completion_tokens": completion_tokens, "prompt_tokens": prompt_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached_tokens}}


# -- legacy completions -------------------------------------------------------------------

def completion(
    request_id: str, model: str, choices: list[tuple[int, str, ChoiceState]],
    prompt_tokens: int, logprobs_top: int | None, decode, cached_tokens: int = 0,
) -> Completion:
    """`choices` holds (response index, echoed prompt text, state) triples."""
    return Completion(
        id=request_id,
        object="text_completion",
        created=int(time.time()),
        model=model,
        choices=[
            CompletionChoice(
                index=index,
                text=echo + c.text,
                finish_reason=c.finish_reason or "stop",
                logprobs=completion_logprobs(c.token_ids, c.logprobs, logprobs_top, decode)
                if logprobs_top is not None else None,
            )
            for index, echo, c in choices
        ],
        usage=usage(prompt_tokens, sum(len(c.token_ids) for _, _, c in choices),
                    cached_tokens),
    )


def completion_chunk(
    request_id: str, model: str, created: int, index: int, text: str,
    finish_reason: str | None = None, logprobs: Logprobs | None = None,
) -> dict[str, Any]:
    """A streamed Completion as `as_json` dumps it, built as a dict (one per token; see
    ChatChunker). Stream chunks carry finish_reason null until the end, which
    CompletionChoice's type (meant for whole responses) does not admit anyway."""
    choice = {"finish_reason": finish_reason, "index": index,
              "logprobs": as_json(logprobs) if logprobs is not None else None, "text": text}
    return {"id": request_id, "choices": [choice], "created": created, "model": model,
            "object": "text_completion"}


def completion_usage_chunk(
    request_id: str, model: str, created: int, prompt_tokens: int, completion_tokens: int,
    cached_tokens: int = 0,
) -> dict[str, Any]:
    return {"id": request_id, "choices": [], "created": created, "model": model,
            "object": "text_completion",
            "usage": _usage_json(prompt_tokens, completion_tokens, cached_tokens)}
