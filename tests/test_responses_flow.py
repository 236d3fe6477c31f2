"""Unit tests: the Responses flow against a fake engine; its objects and events are held
to the `openai` package's types."""

from __future__ import annotations

import asyncio
import json

import pytest
from openai.types.responses import Response, ResponseStreamEvent

from openchat.config import Settings
from openchat.devmodel import mistral_sentencepiece_model
from openchat.generation.pipeline import Pipeline
from openchat.access.scopes import SQL_SCOPE
from openchat.generation.response_items import input_item_objects
from openchat.generation.responses import chat_request
from openchat.generation.template import OpenChatTemplate, OpenChatTokenizer
from openchat.protocol.errors import APIError
from openchat.protocol.responses import ResponseRequest
from tests.fake_engine import FakeEngine
from tools.documents import Hit
from tools.registry import Registry, tool

EVENTS = {t.model_fields["type"].annotation.__args__[0]: t
          for t in ResponseStreamEvent.__args__[0].__args__}
ADD = {"type": "function", "name": "add", "strict": True,
       "parameters": {"type": "object", "properties": {"a": {"type": "integer"}},
                      "required": ["a"], "additionalProperties": False}}
CALL = '<tool_call>{"name":"add","arguments":{"a":7}}</tool_call>'


@pytest.fixture(scope="module")
def template() -> OpenChatTemplate:
    return OpenChatTemplate(OpenChatTokenizer(mistral_sentencepiece_model()))


def respond(template, engine, history=(), **fields):
    request = ResponseRequest(model="openchat-3.5", **fields)
    pipeline = Pipeline(Settings(), engine, template)
    return asyncio.run(pipeline.respond(request, list(history), "resp_test"))


def events_of(template, engine, **fields) -> list:
    async def drain():
        request = ResponseRequest(model="openchat-3.5", stream=True, **fields)
        events = await Pipeline(Settings(), engine, template).respond(request, [], "resp_t")
        return [EVENTS[e["type"]].model_validate(e) async for e in events]
    return asyncio.run(drain())


def test_a_whole_response_is_an_openai_response(template):
    raw = respond(template, FakeEngine().reply("Hel", "lo"), input="Hi")
    response = Response.model_validate(raw)
    assert response.status == "completed" and response.output_text == "Hello"
    assert response.usage.output_tokens == 2 and response.id == "resp_test"


def test_text_then_a_call_become_two_items_in_order(template):
    engine = FakeEngine().reply("Let me add. ", CALL[:20], CALL[20:])
    response = Response.model_validate(respond(template, engine, input="Add 7",
                                               tools=[ADD]))
    assert [item.type for item in response.output] == ["message", "function_call"]
    assert response.output[0].content[0].text == "Let me add."
    assert json.loads(response.output[1].arguments) == {"a": 7}


def test_streamed_events_rebuild_the_same_output(template):
    engine = FakeEngine().reply("Let me add. ", CALL[:20], CALL[20:])
    events = events_of(template, engine, input="Add 7", tools=[ADD])
    assert [e.sequence_number for e in events] == list(range(len(events)))
    final = events[-1].response
    added = [e.item.type for e in events if e.type == "response.output_item.added"]
    assert added == ["message", "function_call"]
    arguments = "".join(e.delta for e in events
                        if e.type == "response.function_call_arguments.delta")
    assert arguments == final.output[1].arguments


def test_a_cut_call_is_incomplete_and_never_leaks_markup(template):
    engine = FakeEngine().reply(CALL[:40], finish_reason="length")  # inside the arguments
    response = Response.model_validate(respond(template, engine, input="Add",
                                               tools=[ADD], tool_choice="required",
                                               max_output_tokens=3))
    assert response.status == "incomplete"
    assert [(i.type, i.status) for i in response.output] == [("function_call", "incomplete")]
    cut_early = FakeEngine().reply(CALL[:25], finish_reason="length")  # before the name ends
    assert Response.model_validate(respond(template, cut_early, input="Add", tools=[ADD],
                                           tool_choice="required")).output == []


def test_a_verification_failure_in_a_stream_is_an_error_then_failed(template):
    engine = FakeEngine().reply('<tool_call>{"name":"add","arguments":{"a":"x"}}</tool_call>')
    events = events_of(template, engine, input="Add", tools=[ADD], tool_choice="required")
    assert [e.type for e in events[-2:]] == ["error", "response.failed"]
    assert events[-2].code == "tool_call_invalid"
    assert events[-1].response.error.code == "server_error"


def test_history_and_function_outputs_reach_the_prompt(template):
    first = input_item_objects(ResponseRequest(model="m", input="Add 7").input_items())
    history = [*first, {"type": "function_call", "id": "fc_1", "call_id": "call_1",
                        "name": "add", "arguments": '{"a":7}', "status": "completed"}]
    engine = FakeEngine().reply("It is 7.")
    respond(template, engine, history, tools=[ADD],
            input=[{"type": "function_call_output", "call_id": "call_1", "output": "7"}])
    prompt = template.tokenizer.decode(engine.calls[0].prompt_ids)
    assert "Add 7" in prompt and '"a":7' in prompt and "7" in prompt


def test_json_schema_format_is_chats_response_format():
    request = ResponseRequest(model="m", input="x", text={"format": {
        "type": "json_schema", "name": "p", "schema": {"type": "object"}, "strict": True}})
    chat = chat_request(request, request.input_items())
    assert chat.response_format.type == "json_schema"
    assert chat.response_format.json_schema.schema_ == {"type": "object"}


def test_an_unknown_tool_choice_name_is_a_400(template):
    with pytest.raises(APIError) as excinfo:
        respond(template, FakeEngine(), input="x", tools=[ADD],
                tool_choice={"type": "function", "name": "nope"})
    assert excinfo.value.status == 400


# -- server-side tools: file_search and the service's own tools -----------------------------

class FakeDocuments:
    """The DocumentStore calls file_search makes, over two fixed passages."""

    settings = type("Settings", (), {"max_top_k": 20})()

    def collections(self) -> list[str]:
        return ["policies", "notes"]

    def search(self, collection: str, query: str, top_k: int) -> list[Hit]:
        hits = {"policies": [Hit("c1", "doc-refunds", "refunds.md", "Refunds in 30 days.", 0.9)],
                "notes": [Hit("c2", "doc-notes", "notes.txt", "Office closed Fridays.", 0.4)]}
        return hits[collection][:top_k]


def search_pipeline(template, engine, registry=None) -> Pipeline:
    return Pipeline(Settings(), engine, template, tools=registry or Registry(),
                    documents=FakeDocuments())


FILE_SEARCH = {"type": "file_search", "vector_store_ids": ["policies", "notes"]}
SEARCH_CALL = '<tool_call>{"name":"file_search","arguments":{"query":"refunds"}}</tool_call>'


def test_file_search_runs_on_the_server_and_cites_its_passages(template):
    engine = FakeEngine().reply(SEARCH_CALL).reply("Within 30 days [1]; see [9].")
    request = ResponseRequest(model="openchat-3.5", input="Refund window?",
                              tools=[FILE_SEARCH], include=["file_search_call.results"])
    raw = asyncio.run(search_pipeline(template, engine).respond(request, [], "resp_fs"))
    response = Response.model_validate(raw)
    search, message = response.output
    assert search.type == "file_search_call" and search.status == "completed"
    assert search.queries == ["refunds"]
    assert [(r.filename, r.score) for r in search.results] == [("refunds.md", 0.9),
                                                                ("notes.txt", 0.4)]
    (citation,) = message.content[0].annotations  # [9] names no passage: not a citation
    assert (citation.type, citation.file_id, citation.filename) == (
        "file_citation", "doc-refunds", "refunds.md")
    assert message.content[0].text[citation.index:].startswith("[1]")
    # The model read the numbered passages before it answered.
    second_prompt = template.tokenizer.decode(engine.calls[1].prompt_ids)
    assert "Refunds in 30 days." in second_prompt and '"n":1' in second_prompt


def test_file_search_results_only_when_included_and_streamed_in_order(template):
    engine = FakeEngine().reply(SEARCH_CALL).reply("See [2].")
    async def drain():
        request = ResponseRequest(model="openchat-3.5", input="x", tools=[FILE_SEARCH],
                                  stream=True)
        events = await search_pipeline(template, engine).respond(request, [], "resp_s")
        return [EVENTS[e["type"]].model_validate(e) async for e in events]
    events = asyncio.run(drain())
    kinds = [e.type for e in events]
    start = kinds.index("response.file_search_call.in_progress")
    assert kinds[start - 1:start + 4] == [
        "response.output_item.added", "response.file_search_call.in_progress",
        "response.file_search_call.searching", "response.file_search_call.completed",
        "response.output_item.done"]
    assert "response.output_text.annotation.added" in kinds
    assert [e.sequence_number for e in events] == list(range(len(events)))
    final = events[-1].response
    assert final.output[0].results is None  # not asked for with include
    assert final.output[1].content[0].annotations[0].filename == "notes.txt"


def test_an_unknown_collection_is_a_400_before_generation(template):
    engine = FakeEngine()
    request = ResponseRequest(model="openchat-3.5", input="x", tools=[
        {"type": "file_search", "vector_store_ids": ["policies", "nope"]}])
    with pytest.raises(APIError) as excinfo:
        asyncio.run(search_pipeline(template, engine).respond(request, [], "resp_x"))
    assert excinfo.value.status == 400 and "nope" in excinfo.value.message
    assert excinfo.value.param == "tools.vector_store_ids[1]" and engine.calls == []


def test_a_server_tool_is_an_mcp_call_item(template):
    @tool(SQL_SCOPE)
    async def count_orders(customer: str) -> dict:
        """Orders of a customer."""
        return {"orders": 3}

    registry = Registry()
    registry.add(count_orders)
    call = '<tool_call>{"name":"count_orders","arguments":{"customer":"ann"}}</tool_call>'
    engine = FakeEngine().reply(call).reply("Three.")
    request = ResponseRequest(model="openchat-3.5", input="How many?",
                              server_tools=["count_orders"])
    pipeline = search_pipeline(template, engine, registry)
    response = Response.model_validate(asyncio.run(pipeline.respond(request, [], "r")))
    mcp, message = response.output
    assert (mcp.type, mcp.name, mcp.server_label, mcp.status) == (
        "mcp_call", "count_orders", "openchat", "completed")
    assert json.loads(mcp.arguments) == {"customer": "ann"}
    assert json.loads(mcp.output) == {"orders": 3} and message.content[0].text == "Three."
    assert response.usage.input_tokens == sum(len(c.prompt_ids) for c in engine.calls)
    with pytest.raises(APIError) as excinfo:  # a key without the tool's scope
        asyncio.run(pipeline.respond(request, [], "r", allowed=lambda t: False))
    assert excinfo.value.status == 403


def test_server_call_items_echoed_back_are_not_prompted_again(template):
    history = [{"type": "message", "role": "user", "content": "Refunds?"},
               {"type": "file_search_call", "id": "fs_1", "status": "completed",
                "queries": ["refunds"], "results": None},
               {"type": "message", "role": "assistant",
                "content": [{"type": "output_text", "text": "30 days.", "annotations": []}]}]
    engine = FakeEngine().reply("Yes.")
    respond(template, engine, history, input="Sure?")
    prompt = template.tokenizer.decode(engine.calls[0].prompt_ids)
    assert "Refunds?" in prompt and "30 days." in prompt and "fs_1" not in prompt


# -- what the Codex CLI sends: namespaces, hosted tools, its metadata -----------------------

def test_namespaced_functions_are_offered_and_their_calls_name_the_namespace(template):
    call = '<tool_call>{"name":"close_agent","arguments":{"a":1}}</tool_call>'
    namespace = {"type": "namespace", "name": "multi_agent_v1", "description": "Agents",
                 "tools": [{**ADD, "name": "close_agent"}]}
    engine = FakeEngine().reply(call)
    raw = respond(template, engine, input="Close it", tools=[namespace, ADD],
                  client_metadata={"turn_id": "t1"})
    response = Response.model_validate(raw)
    (item,) = response.output
    assert (item.name, item.namespace) == ("close_agent", "multi_agent_v1")
    assert response.tools[0].type == "namespace"
    prompt = template.tokenizer.decode(engine.calls[0].prompt_ids)
    assert "close_agent" in prompt and '"add"' in prompt


def test_hosted_tools_we_lack_are_left_out_not_refused(template):
    engine = FakeEngine().reply("Hi.")
    raw = respond(template, engine, input="Hi", tools=[
        {"type": "web_search", "external_web_access": False}])
    response = Response.model_validate(raw)
    assert response.output_text == "Hi." and response.tools[0].type == "web_search"
    assert "web_search" not in template.tokenizer.decode(engine.calls[0].prompt_ids)
    with pytest.raises(APIError) as excinfo:  # but "required" cannot be honoured
        respond(template, FakeEngine(), input="Hi", tool_choice="required",
                tools=[{"type": "web_search"}])
    assert excinfo.value.param == "tool_choice"


def test_client_side_tool_types_we_cannot_offer_are_refused():
    with pytest.raises(ValueError, match="custom"):
        ResponseRequest(model="m", input="x", tools=[{"type": "custom", "name": "patch"}])


def test_function_tools_beside_a_json_schema_format(template):
    text = {"format": {"type": "json_schema", "name": "n", "strict": True, "schema": {
        "type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"],
        "additionalProperties": False}}}
    answered = Response.model_validate(respond(template, FakeEngine().reply('{"n":', "7}"),
                                               input="x", tools=[ADD], text=text))
    assert json.loads(answered.output_text) == {"n": 7}
    called = Response.model_validate(respond(template, FakeEngine().reply(CALL),
                                             input="x", tools=[ADD], text=text))
    assert [item.type for item in called.output] == ["function_call"]


@pytest.mark.parametrize("fields", [{"tools": [{"type": {}}]}, {"tools": [{"type": 5}]},
                                    {"input": [{"type": {}}]}, {"input": [{"type": []}]}])
def test_a_tag_that_is_not_a_string_is_a_validation_error(fields):
    # Found by schemathesis: {"type": {}} crashed the discriminator (a 500).
    with pytest.raises(ValueError):
        ResponseRequest(model="m", **{"input": "x", **fields})


def test_a_call_cut_off_earlier_is_not_replayed(template):
    # A stored response can end with a call cut by max_output_tokens (found in CI: its
    # unfinished arguments made previous_response_id a 400).
    history = [{"type": "message", "role": "user", "content": "Add"},
               {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "add",
                "arguments": '{"a":7}', "status": "completed"},
               {"type": "function_call", "id": "fc_2", "call_id": "call_2", "name": "add",
                "arguments": '{"a":', "status": "incomplete"}]
    engine = FakeEngine().reply("Done.")
    respond(template, engine, history, tools=[ADD], input=[
        {"type": "function_call_output", "call_id": "call_1", "output": "7"}])
    prompt = template.tokenizer.decode(engine.calls[0].prompt_ids)
    assert prompt.count('{"name":"add","arguments":') == 1  # the complete call only


def test_a_failed_file_search_ends_with_its_item_not_an_unknown_event(template):
    class Broken(FakeDocuments):
        def search(self, collection, query, top_k):
            raise RuntimeError("vector store down")

    engine = FakeEngine().reply(SEARCH_CALL).reply("Sorry.")

    async def drain():
        request = ResponseRequest(model="openchat-3.5", input="x", tools=[FILE_SEARCH],
                                  stream=True)
        pipeline = Pipeline(Settings(), engine, template, tools=Registry(),
                            documents=Broken())
        events = await pipeline.respond(request, [], "resp_f")
        return [EVENTS[e["type"]].model_validate(e) async for e in events]
    events = asyncio.run(drain())  # every event is one of the openai package's types
    done = [e for e in events if e.type == "response.output_item.done"
            and e.item.type == "file_search_call"]
    assert done[0].item.status == "failed"
