"""End to end: the Responses API through the official `openai` client, on the real engine,
stored in the test service's SQLite database."""

from __future__ import annotations

import json
import uuid

import httpx
import jsonschema
import openai
import pytest
from openai.types.responses import ResponseStreamEvent
from pydantic import BaseModel, Field

from tests.conftest import ADMIN_KEY, REFERENCE_HI_IDS

pytestmark = pytest.mark.e2e

MODEL = "openchat-3.5"
WEATHER = {"type": "function", "name": "get_weather", "description": "Weather in a city",
           "strict": True,
           "parameters": {"type": "object", "additionalProperties": False,
                          "required": ["city"],
                          "properties": {"city": {"type": "string", "maxLength": 12}}}}
EVENTS = {t.model_fields["type"].annotation.__args__[0]: t
          for t in ResponseStreamEvent.__args__[0].__args__}


class Person(BaseModel):
    name: str = Field(max_length=8)
    age: int


def test_create_has_openai_shape_and_real_usage(client):
    response = client.responses.create(model=MODEL, input="Hi", max_output_tokens=8,
                                       temperature=0)
    assert response.id.startswith("resp_") and response.object == "response"
    assert response.status == "incomplete"
    assert response.incomplete_details.reason == "max_output_tokens"
    (message,) = response.output
    assert message.type == "message" and message.role == "assistant"
    assert message.content[0].type == "output_text"
    assert response.output_text == message.content[0].text
    assert response.usage.input_tokens == len(REFERENCE_HI_IDS)  # OpenChat's exact prompt
    assert response.usage.output_tokens == 8
    assert response.usage.total_tokens == len(REFERENCE_HI_IDS) + 8
    assert response.usage.input_tokens_details.cached_tokens >= 0


def test_instructions_become_the_system_block(client):
    plain = client.responses.create(model=MODEL, input="Hi", max_output_tokens=1)
    told = client.responses.create(model=MODEL, input="Hi", max_output_tokens=1,
                                   instructions="Answer in French.")
    assert told.usage.input_tokens > plain.usage.input_tokens
    assert told.instructions == "Answer in French."


def test_stream_events_in_order_and_typed(client, base_url):
    body = {"model": MODEL, "input": "Hi", "max_output_tokens": 12, "stream": True}
    events = []
    with httpx.stream("POST", f"{base_url}/v1/responses", json=body, timeout=120,
                      headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as raw:
        assert raw.status_code == 200
        lines = [line for line in raw.iter_lines() if line]
    for name, data in zip(lines[::2], lines[1::2]):
        payload = json.loads(data.removeprefix("data: "))
        event = EVENTS[payload["type"]].model_validate(payload)
        assert name == f"event: {event.type}"
        events.append(event)
    kinds = [e.type for e in events]
    assert kinds[:5] == ["response.created", "response.in_progress",
                         "response.output_item.added", "response.content_part.added",
                         "response.output_text.delta"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done",
                          "response.output_item.done", "response.incomplete"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    final = events[-1].response
    assert final.output_text == text and final.usage.output_tokens == 12

    # The client's stream helper reads the same events (its get_final_response() wants
    # response.completed, which a cut-off answer never has, on OpenAI too).
    with client.responses.stream(model=MODEL, input="Hi", max_output_tokens=12) as stream:
        helped = list(stream)
    assert helped[-1].type == "response.incomplete"
    assert helped[-1].response.usage.output_tokens == 12
    assert helped[-1].response.output_text == "".join(
        e.delta for e in helped if e.type == "response.output_text.delta")


def test_required_function_call_matches_its_schema_whole_and_streamed(client):
    # One call (parallel off) of a bounded string cannot run out of 300 tokens.
    response = client.responses.create(model=MODEL, input="Weather in Paris?",
                                       tools=[WEATHER], tool_choice="required",
                                       parallel_tool_calls=False, max_output_tokens=300,
                                       temperature=1.0)
    assert response.status == "completed"
    calls = [item for item in response.output if item.type == "function_call"]
    assert calls and all(c.name == "get_weather" and c.call_id.startswith("call_")
                         for c in calls)
    for call in calls:
        jsonschema.validate(json.loads(call.arguments), WEATHER["parameters"])
    assert not any("<tool_call>" in item.content[0].text for item in response.output
                   if item.type == "message")

    with client.responses.stream(model=MODEL, input="Weather in Paris?", tools=[WEATHER],
                                 tool_choice={"type": "function", "name": "get_weather"},
                                 max_output_tokens=200) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert "response.function_call_arguments.delta" in kinds
    assert "response.function_call_arguments.done" in kinds
    (call,) = [item for item in final.output if item.type == "function_call"]
    jsonschema.validate(json.loads(call.arguments), WEATHER["parameters"])


def test_previous_response_id_continues_the_conversation(client):
    first = client.responses.create(model=MODEL, input="Weather in Paris?", tools=[WEATHER],
                                    tool_choice="required", max_output_tokens=200)
    call = next(item for item in first.output if item.type == "function_call")
    second = client.responses.create(
        model=MODEL, previous_response_id=first.id, tools=[WEATHER], max_output_tokens=4,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "Sunny"}])
    assert second.previous_response_id == first.id
    # The first prompt is in the prompt again, with the call and its output.
    assert second.usage.input_tokens > first.usage.input_tokens
    third = client.responses.create(model=MODEL, previous_response_id=second.id,
                                    tools=[WEATHER], input="Thanks", max_output_tokens=2)
    assert third.usage.input_tokens > second.usage.input_tokens


def test_parse_gives_a_validated_object(client):
    response = client.responses.parse(model=MODEL, input="Make up a person.",
                                      text_format=Person, max_output_tokens=300)
    assert response.status == "completed"
    assert isinstance(response.output_parsed, Person)


def test_retrieve_input_items_and_delete(client):
    created = client.responses.create(model=MODEL, max_output_tokens=2, input=[
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": [{"type": "input_text", "text": "Again"}]}])
    fetched = client.responses.retrieve(created.id)
    assert fetched.id == created.id and fetched.output_text == created.output_text
    items = client.responses.input_items.list(created.id)
    assert [i.role for i in items.data] == ["user", "assistant", "user"][::-1]  # newest first
    assert items.data[0].content[0].text == "Again" and items.has_more is False
    oldest = client.responses.input_items.list(created.id, order="asc", limit=1)
    assert oldest.data[0].content[0].text == "Hi" and oldest.has_more is True
    deleted = client.responses.delete(created.id)
    assert deleted is None or getattr(deleted, "deleted", True)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(created.id)


def test_store_false_keeps_nothing(client):
    created = client.responses.create(model=MODEL, input="Hi", max_output_tokens=1,
                                      store=False)
    assert created.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(created.id)


def test_another_key_cannot_see_or_continue_a_response(client, http, base_url):
    mine = client.responses.create(model=MODEL, input="Hi", max_output_tokens=1)
    made = http.post("/v1/admin/keys", json={"name": f"other-{uuid.uuid4().hex[:6]}",
                                             "scopes": ["inference"]})
    other = openai.OpenAI(base_url=f"{base_url}/v1", api_key=made.json()["secret"],
                          max_retries=0)
    with pytest.raises(openai.NotFoundError):
        other.responses.retrieve(mine.id)
    with pytest.raises(openai.NotFoundError) as excinfo:
        other.responses.create(model=MODEL, input="Hi", previous_response_id=mine.id)
    assert excinfo.value.body["param"] == "previous_response_id"
    with pytest.raises(openai.NotFoundError):
        other.responses.delete(mine.id)
    assert client.responses.retrieve(mine.id).id == mine.id  # still there for its owner


@pytest.mark.parametrize("body, param", [
    ({"input": [{"type": "bogus"}]}, "input[0]"),
    ({"input": [{"type": "function_call", "name": "f", "arguments": "{}"}]}, "call_id"),
    ({"input": "Hi", "reasoning": {"effort": "high"}}, "reasoning"),
    ({"input": "Hi", "tools": [{"type": "custom", "name": "patch"}]}, "tools[0]"),
    ({"input": "Hi", "tools": [{"type": "file_search", "vector_store_ids": ["a"],
                                "filters": {"type": "eq", "key": "k", "value": 1}}]},
     "filters"),
    ({"input": "Hi", "conversation": "conv_1"}, "conversation"),
    ({"input": "Hi", "max_output_tokens": 0}, "max_output_tokens"),
    ({"input": "Hi", "max_output_tokens": "5"}, "max_output_tokens"),
    ({"input": "Hi", "frobnicate": 1}, "frobnicate"),
    ({"input": "Hi", "text": {"format": {"type": "json_schema", "name": "x"}}}, "text"),
])
def test_bad_input_is_a_400_naming_the_field(http, body, param):
    response = http.post("/v1/responses", json={"model": MODEL, **body})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert param in (error["param"] or "") or param in error["message"], error


def test_unknown_previous_response_is_a_404(http):
    response = http.post("/v1/responses", json={"model": MODEL, "input": "Hi",
                                                "previous_response_id": "resp_nope"})
    assert response.status_code == 404
    assert response.json()["error"]["param"] == "previous_response_id"
    assert http.get("/v1/responses/resp_nope").status_code == 404


# -- server-side tools on the Responses API --------------------------------------------------

@pytest.fixture(scope="module")
def collection(http) -> str:
    name = f"resp-{uuid.uuid4().hex[:8]}"
    for source, text, fmt in [("refunds.md", "# Refunds\nPaid within 30 days.", "markdown"),
                              ("hours.txt", "The office is closed on Fridays.", "text")]:
        added = http.post(f"/v1/collections/{name}/documents",
                          json={"source": source, "text": text, "format": fmt})
        assert added.status_code == 201, added.text
    return name


def test_file_search_runs_chroma_on_the_server_whole_and_streamed(client, collection):
    tools = [{"type": "file_search", "vector_store_ids": [collection], "max_num_results": 2}]
    response = client.responses.create(
        model=MODEL, input="When are refunds paid?", tools=tools, tool_choice="required",
        include=["file_search_call.results"], max_output_tokens=300,  # a query fits
        parallel_tool_calls=False)
    search = response.output[0]
    assert search.type == "file_search_call" and search.status == "completed"
    assert len(search.queries) == 1 and search.queries[0]  # the model's own query
    assert {r.filename for r in search.results} == {"refunds.md", "hours.txt"}
    assert all(-1 <= r.score <= 1 and r.text and r.file_id for r in search.results)
    assert response.output[-1].type in ("message", "function_call")  # it went on after
    for item in response.output:  # any citation names a passage the model was shown
        if item.type == "message":
            for note in item.content[0].annotations:
                assert note.type == "file_citation"
                assert note.filename in {"refunds.md", "hours.txt"}
    assert client.responses.retrieve(response.id).output[0].type == "file_search_call"

    with client.responses.stream(model=MODEL, input="Refunds?", tools=tools,
                                 tool_choice={"type": "file_search"},
                                 parallel_tool_calls=False, max_output_tokens=300) as stream:
        kinds = [event.type for event in stream]
    assert "response.file_search_call.searching" in kinds
    assert "response.file_search_call.completed" in kinds


def test_file_search_over_an_unknown_collection_is_a_400(http):
    response = http.post("/v1/responses", json={"model": MODEL, "input": "x", "tools": [
        {"type": "file_search", "vector_store_ids": ["no-such-collection"]}]})
    assert response.status_code == 400, response.text
    assert "no-such-collection" in response.json()["error"]["message"]


def test_sql_server_tools_show_up_as_mcp_call_items(client):
    response = client.responses.create(
        # One call (parallel off) of an enum argument: ~50 tokens, always within 200.
        model=MODEL, input="Describe a table.", tool_choice="required", max_output_tokens=200,
        parallel_tool_calls=False,
        extra_body={"server_tools": ["describe_table"]})
    call = response.output[0]
    assert call.type == "mcp_call", response.model_dump_json()
    assert (call.type, call.name, call.server_label, call.status) == (
        "mcp_call", "describe_table", "openchat", "completed")
    table = json.loads(call.arguments)["table"]
    assert table in {"customers", "orders", "products"}
    assert "columns" in json.loads(call.output)
    assert response.usage.input_tokens > 100  # two prompts: the call, then the answer
