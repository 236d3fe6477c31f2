"""Unit tests: the flows (chat, completions, the server-tool loop) against a fake engine.

The pipeline is built as service.py builds it, with the real template and tokenizer; only
the engine is scripted (tests/fake_engine.py). These check stream assembly and that whole
and streamed answers agree; the end-to-end tests check the same features on vLLM.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from openchat.access.scopes import SQL_SCOPE
from openchat.config import Settings
from openchat.devmodel import mistral_sentencepiece_model
from openchat.generation.pipeline import Pipeline
from openchat.generation.template import OpenChatTemplate, OpenChatTokenizer
from openchat.protocol.errors import APIError
from openchat.protocol.requests import ChatCompletionRequest, CompletionRequest
from tests.conftest import REFERENCE_HI_IDS
from tests.fake_engine import FakeEngine
from tools.registry import Registry, tool

ADD = {"type": "function", "function": {
    "name": "add", "parameters": {"type": "object", "properties": {"a": {"type": "integer"}},
                                  "required": ["a"], "additionalProperties": False}}}
HI = [{"role": "user", "content": "Hi"}]


@tool(SQL_SCOPE)
async def count_rows(table: str) -> dict:
    """Count the rows of a table."""
    return {"table": table, "rows": 42}


@pytest.fixture(scope="module")
def template() -> OpenChatTemplate:
    return OpenChatTemplate(OpenChatTokenizer(mistral_sentencepiece_model()))


def pipeline(template: OpenChatTemplate, engine: FakeEngine) -> Pipeline:
    registry = Registry()
    registry.add(count_rows)
    return Pipeline(Settings(), engine, template, registry)


def run(coroutine):
    return asyncio.run(coroutine)


async def drain(chunks) -> list[dict]:
    return [chunk async for chunk in chunks]


def chat(**fields) -> ChatCompletionRequest:
    return ChatCompletionRequest(model="openchat-3.5", messages=HI, **fields)


def test_whole_chat_is_the_engine_text_with_usage(template):
    engine = FakeEngine().reply("Hel", "lo", " there")
    completion = run(pipeline(template, engine).chat(chat(max_tokens=5)))
    assert completion.choices[0].message.content == "Hello there"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.prompt_tokens == len(REFERENCE_HI_IDS)
    assert completion.usage.completion_tokens == 3
    (call,) = engine.calls
    assert call.prompt_ids == REFERENCE_HI_IDS and call.params.max_tokens == 5


def test_streamed_chat_chunks_come_in_openai_order(template):
    engine = FakeEngine().reply("Hel", "lo", finish_reason="length")
    request = chat(n=2, stream=True, stream_options={"include_usage": True})
    chunks = run(drain(run(pipeline(template, engine).chat(request))))
    roles = [c for c in chunks[:2]]
    assert [c["choices"][0]["delta"] for c in roles] == [{"content": "", "role": "assistant"}] * 2
    for index in (0, 1):
        mine = [c["choices"][0] for c in chunks if c["choices"] and
                c["choices"][0]["index"] == index]
        assert "".join(c["delta"].get("content", "") for c in mine) == "Hello"
        assert [c["finish_reason"] for c in mine][-1] == "length"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 4


def test_whole_answers_ask_the_engine_for_the_final_output_only(template):
    """One output at the end instead of a delta per token; streams keep their deltas."""
    from vllm.sampling_params import RequestOutputKind

    engine = FakeEngine().reply("Hello there").reply("Hel", "lo")
    flows = pipeline(template, engine)
    assert run(flows.chat(chat(max_tokens=5))).choices[0].message.content == "Hello there"
    run(drain(run(flows.chat(chat(max_tokens=5, stream=True)))))
    whole, streamed = engine.calls
    assert whole.params.output_kind == RequestOutputKind.FINAL_ONLY
    assert whole.params.max_tokens == 5  # the rest of the parameters as prepared
    assert streamed.params.output_kind == RequestOutputKind.DELTA


def test_a_required_tool_call_arrives_whole_and_streamed_alike(template):
    text = '<tool_call>{"name":"add","arguments":{"a":12}}</tool_call>'
    pieces = [text[i:i + 5] for i in range(0, len(text), 5)]
    whole = run(pipeline(template, FakeEngine().reply(*pieces)).chat(
        chat(tools=[ADD], tool_choice="required")))
    choice = whole.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert (call.function.name, json.loads(call.function.arguments)) == ("add", {"a": 12})

    chunks = run(drain(run(pipeline(template, FakeEngine().reply(*pieces)).chat(
        chat(tools=[ADD], tool_choice="required", stream=True)))))
    deltas = [c["choices"][0]["delta"] for c in chunks]
    calls = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
    assert calls[0]["function"]["name"] == "add" and calls[0]["id"].startswith("call_")
    assert "".join(c["function"]["arguments"] for c in calls) == call.function.arguments
    assert not any("<tool_call>" in (d.get("content") or "") for d in deltas)
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_an_invalid_tool_call_is_a_500_not_an_answer(template):
    reply = '<tool_call>{"name":"add","arguments":{"a":"x"}}</tool_call>'
    with pytest.raises(APIError) as excinfo:
        run(pipeline(template, FakeEngine().reply(reply)).chat(
            chat(tools=[ADD], tool_choice="required")))
    assert excinfo.value.status == 500 and excinfo.value.code == "tool_call_invalid"


def test_validation_errors_come_before_the_engine_sees_anything(template):
    engine = FakeEngine()
    with pytest.raises(APIError) as excinfo:
        run(pipeline(template, engine).chat(chat(max_tokens=10_000)))
    assert excinfo.value.code == "context_length_exceeded"
    with pytest.raises(APIError) as excinfo:
        run(pipeline(template, engine).chat(chat(stream=True, n=17)))
    assert excinfo.value.param == "n"
    assert engine.calls == []


def test_an_unhealthy_engine_answers_503(template):
    with pytest.raises(APIError) as excinfo:
        run(pipeline(template, FakeEngine(healthy=False)).chat(chat()))
    assert excinfo.value.status == 503 and excinfo.value.code == "engine_unavailable"


def test_closing_a_stream_early_closes_the_engine_request(template):
    engine = FakeEngine().reply("a", "b", "c", "d")

    async def first_two():
        chunks = await pipeline(template, engine).chat(chat(stream=True))
        taken = [await anext(chunks), await anext(chunks)]
        await chunks.aclose()
        return taken

    assert run(first_two())[1]["choices"][0]["delta"] == {"content": "a"}
    assert engine.calls[0].closed_early


def test_completions_number_choices_by_prompt_then_n(template):
    engine = FakeEngine().reply("x", "y").reply("z")
    request = CompletionRequest(model="openchat-3.5", prompt=["one", "two"], n=2, echo=True)
    completion = run(pipeline(template, engine).complete(request))
    texts = [(c.index, c.text) for c in completion.choices]
    assert texts == [(0, "onexy"), (1, "onexy"), (2, "twoz"), (3, "twoz")]
    assert completion.usage.completion_tokens == 2 * 2 + 2 * 1
    assert [c.request_id.rsplit("-", 1)[1] for c in engine.calls] == ["0", "1"]


def test_streamed_completions_echo_then_text_then_usage(template):
    engine = FakeEngine().reply("x", "y")
    request = CompletionRequest(model="openchat-3.5", prompt="one", stream=True, echo=True,
                                stream_options={"include_usage": True})
    chunks = run(drain(run(pipeline(template, engine).complete(request))))
    assert [c["choices"][0]["text"] for c in chunks[:-1]] == ["one", "x", "y"]
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["usage"] == {"completion_tokens": 2, "prompt_tokens": 2,
                                   "total_tokens": 4,
                                   "prompt_tokens_details": {"cached_tokens": 0}}


SERVER_CALL = '<tool_call>{"name":"count_rows","arguments":{"table":"orders"}}</tool_call>'


def test_tool_loop_runs_the_server_tool_and_answers_with_a_trace(template):
    engine = FakeEngine().reply(SERVER_CALL).reply("There are ", "42.")
    request = chat(server_tools=["count_rows"])
    completion = run(pipeline(template, engine).chat(request))
    assert completion.choices[0].message.content == "There are 42."
    (entry,) = completion.server_tool_calls
    assert entry["name"] == "count_rows" and entry["status"] == "ok"
    assert json.loads(entry["result"]) == {"table": "orders", "rows": 42}
    second_prompt = template.tokenizer.decode(engine.calls[1].prompt_ids)
    assert '"rows":42' in second_prompt  # the result went back to the model
    assert completion.usage.prompt_tokens == sum(len(c.prompt_ids) for c in engine.calls)
    assert completion.usage.completion_tokens == 1 + 2


def test_tool_loop_streams_progress_and_forwards_client_calls(template):
    client_call = '<tool_call>{"name":"add","arguments":{"a":1}}</tool_call>'
    engine = FakeEngine().reply(SERVER_CALL).reply(client_call)
    request = chat(server_tools=["count_rows"], tools=[ADD], stream=True)
    chunks = run(drain(run(pipeline(template, engine).chat(request))))
    progress = [c["server_tool_call"] for c in chunks if "server_tool_call" in c]
    assert [p["status"] for p in progress] == ["running", "ok"]
    calls = [c["choices"][0]["delta"]["tool_calls"][0] for c in chunks
             if c["choices"] and "tool_calls" in c["choices"][0]["delta"]]
    assert calls[0]["index"] == 0 and calls[0]["function"]["name"] == "add"
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_server_tools_need_the_callers_scope(template):
    with pytest.raises(APIError) as excinfo:
        run(pipeline(template, FakeEngine()).chat(chat(server_tools=["count_rows"]),
                                                  allowed=lambda tool: False))
    assert excinfo.value.status == 403 and excinfo.value.param == "server_tools[0]"


def test_prefix_cache_hits_are_reported_in_every_usage(template):
    """The engine's count of prompt tokens served from its prefix cache becomes
    usage.prompt_tokens_details.cached_tokens: chat whole and streamed, completions over
    several prompts (summed), and the tool loop (summed over its steps)."""
    whole = run(pipeline(template, FakeEngine().reply("Hi", cached_tokens=16)).chat(chat()))
    assert whole.usage.prompt_tokens_details.cached_tokens == 16
    streamed = run(drain(run(pipeline(template, FakeEngine().reply(
        "Hi", cached_tokens=16)).chat(chat(stream=True,
                                             stream_options={"include_usage": True})))))
    assert streamed[-1]["usage"]["prompt_tokens_details"] == {"cached_tokens": 16}
    engine = FakeEngine().reply("a", cached_tokens=3).reply("b", cached_tokens=5)
    completion = run(pipeline(template, engine).complete(
        CompletionRequest(model="openchat-3.5", prompt=["one", "two"])))
    assert completion.usage.prompt_tokens_details.cached_tokens == 8
    engine = FakeEngine().reply(SERVER_CALL, cached_tokens=16).reply("42.", cached_tokens=32)
    looped = run(pipeline(template, engine).chat(chat(server_tools=["count_rows"])))
    assert looped.usage.prompt_tokens_details.cached_tokens == 48
