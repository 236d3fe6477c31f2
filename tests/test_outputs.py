"""Stream chunks are built as dicts (per token, for speed): they must be exactly what the
`openai` package's types dump to, keys and their order included."""

from __future__ import annotations

import json

from openai.types import Completion, CompletionChoice
from openai.types.chat import ChatCompletionChunk, ChatCompletionTokenLogprob
from openai.types.chat.chat_completion import ChoiceLogprobs
from openai.types.completion_choice import Logprobs

from openchat.protocol import outputs


def dumped(model) -> str:
    return json.dumps(outputs.as_json(model))


def chat_chunks(include_usage: bool) -> list[dict]:
    logprobs = ChoiceLogprobs(content=[ChatCompletionTokenLogprob(
        token="a", logprob=-0.5, bytes=[97], top_logprobs=[])])
    chunker = outputs.ChatChunker("chatcmpl-1", "openchat-3.5", include_usage)
    return [chunker.role(0), chunker.content(0, 'héllo "x"', None),
            chunker.content(1, "", logprobs), chunker.tool_call_start(0, 0, "call_1", "f"),
            chunker.tool_call_arguments(0, 0, '{"a":'), chunker.finish(0, "length"),
            chunker.finish(1, "tool_calls"), chunker.usage(10, 5)]


def test_chat_chunks_are_dumped_chat_completion_chunks():
    for include_usage in (True, False):
        for chunk in chat_chunks(include_usage):
            assert json.dumps(chunk) == dumped(ChatCompletionChunk.model_validate(chunk))
            assert ("usage" in chunk) == (include_usage or bool(chunk.get("usage")))


def test_completion_chunks_are_dumped_completions():
    logprobs = Logprobs(tokens=["a"], token_logprobs=[-0.5], top_logprobs=[{"a": -0.5}],
                        text_offset=[0])
    for args in [(0, "t"), (2, "", "stop"), (1, "x", None, logprobs)]:
        chunk = outputs.completion_chunk("cmpl-1", "m", 123, *args)
        # Unvalidated, as whole Completions refuse the finish_reason null of stream chunks.
        choice = CompletionChoice.model_construct(
            index=args[0], text=args[1], finish_reason=(args[2:] or [None])[0],
            logprobs=(args[3:] or [None])[0])
        assert json.dumps(chunk) == dumped(Completion.model_construct(
            id="cmpl-1", object="text_completion", created=123, model="m", choices=[choice]))
    usage = outputs.completion_usage_chunk("cmpl-1", "m", 123, 7, 3)
    assert json.dumps(usage) == dumped(Completion(
        id="cmpl-1", object="text_completion", created=123, model="m", choices=[],
        usage=outputs.usage(7, 3)))
