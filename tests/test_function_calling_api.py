"""End-to-end: function calling through the real engine with the dev model."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import jsonschema
import pytest

pytestmark = pytest.mark.e2e
MODEL = "openchat-3.5"
ASK = [{"role": "user", "content": "What is the weather in Paris, and what is 2+3?"}]
WEATHER_PARAMS = {
    "type": "object",
    "properties": {"city": {"type": "string", "minLength": 1, "maxLength": 12},
                   "unit": {"enum": ["celsius", "fahrenheit"]},
                   "days": {"type": "integer", "minimum": 1, "maximum": 7}},
    "required": ["city", "unit"], "additionalProperties": False,
}
ADD_PARAMS = {
    "type": "object",
    "properties": {"a": {"type": "integer", "minimum": -100, "maximum": 100},
                   "b": {"type": "integer", "minimum": -100, "maximum": 100}},
    "required": ["a", "b"], "additionalProperties": False,
}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather now",
                                      "parameters": WEATHER_PARAMS, "strict": True}},
    {"type": "function", "function": {"name": "add", "description": "Add two integers",
                                      "parameters": ADD_PARAMS}},
]
SCHEMAS = {"get_weather": WEATHER_PARAMS, "add": ADD_PARAMS}


def _assert_valid_calls(message):
    assert message.tool_calls
    for call in message.tool_calls:
        assert call.type == "function" and call.id.startswith("call_")
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])
    assert len({c.id for c in message.tool_calls}) == len(message.tool_calls)


def test_required_and_named_always_give_valid_calls(client):
    named = {"type": "function", "function": {"name": "get_weather"}}
    jobs = [(choice, seed) for choice in ("required", named) for seed in range(12)]

    def run(job):
        choice, seed = job
        return choice, client.chat.completions.create(
            model=MODEL, messages=ASK, tools=TOOLS, tool_choice=choice, seed=seed,
            temperature=1.0, max_tokens=300,
        ).choices[0]

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(run, jobs))
    assert len(results) == len(jobs) == 24
    for choice, result in results:
        assert result.finish_reason == "tool_calls", result
        assert result.message.content is None
        _assert_valid_calls(result.message)
        if choice != "required":
            assert [c.function.name for c in result.message.tool_calls] == ["get_weather"]


def test_parallel_false_gives_exactly_one_call(client):
    for seed in range(5):
        message = client.chat.completions.create(
            model=MODEL, messages=ASK, tools=TOOLS, tool_choice="required",
            parallel_tool_calls=False, seed=seed, temperature=1.0, max_tokens=300,
        ).choices[0].message
        assert len(message.tool_calls) == 1
        _assert_valid_calls(message)


def test_streamed_calls_assemble_like_whole_ones(client):
    args = dict(model=MODEL, messages=ASK, tools=TOOLS, tool_choice="required", seed=3,
                temperature=1.0, max_tokens=300)
    whole = client.chat.completions.create(**args).choices[0].message
    # The openai client's own stream helper assembles the deltas.
    with client.chat.completions.stream(**args) as stream:
        final = stream.get_final_completion().choices[0]
    assert final.finish_reason == "tool_calls"
    _assert_valid_calls(final.message)
    assert [(c.function.name, c.function.arguments) for c in final.message.tool_calls] == [
        (c.function.name, c.function.arguments) for c in whole.tool_calls]
    # Raw deltas: id, type and name first, then argument fragments.
    firsts = {}
    for chunk in client.chat.completions.create(**args, stream=True):
        for choice in chunk.choices:
            for delta in choice.delta.tool_calls or []:
                if delta.index not in firsts:
                    firsts[delta.index] = delta
                    assert delta.id and delta.type == "function" and delta.function.name
                    assert delta.function.arguments == ""
                else:
                    assert delta.id is None and delta.function.name is None
    assert len(firsts) == len(whole.tool_calls)


def test_round_trip_call_result_continue(client):
    first = client.chat.completions.create(
        model=MODEL, messages=ASK, tools=TOOLS, tool_choice="required", seed=4, max_tokens=300,
    ).choices[0].message
    history = ASK + [first.model_dump(exclude_none=True)] + [
        {"role": "tool", "tool_call_id": call.id,
         "content": json.dumps({"result": "sunny" if call.function.name == "get_weather"
                                else 5})}
        for call in first.tool_calls
    ]
    final = client.chat.completions.create(
        model=MODEL, messages=history, tools=TOOLS, tool_choice="none", max_tokens=10, seed=1,
    ).choices[0]
    assert final.finish_reason in ("stop", "length")
    assert isinstance(final.message.content, str) and not final.message.tool_calls


def test_auto_and_none_return_well_formed_messages(client):
    for choice in ("auto", "none"):
        for seed in range(3):
            result = client.chat.completions.create(
                model=MODEL, messages=ASK, tools=TOOLS, tool_choice=choice, seed=seed,
                max_tokens=60,
            ).choices[0]
            if result.message.tool_calls:
                assert choice == "auto" and result.finish_reason in ("tool_calls", "length")
                _assert_valid_calls(result.message)
            else:
                assert result.finish_reason in ("stop", "length")
                assert isinstance(result.message.content, str)


def test_none_does_not_offer_tools(http):
    plain = http.post("/v1/chat/completions", json={
        "model": MODEL, "messages": ASK, "max_tokens": 1}).json()["usage"]["prompt_tokens"]
    none = http.post("/v1/chat/completions", json={
        "model": MODEL, "messages": ASK, "max_tokens": 1, "tools": TOOLS,
        "tool_choice": "none"}).json()["usage"]["prompt_tokens"]
    auto = http.post("/v1/chat/completions", json={
        "model": MODEL, "messages": ASK, "max_tokens": 1, "tools": TOOLS}).json()
    assert none == plain < auto["usage"]["prompt_tokens"]


def _tool(name="f", parameters=None):
    function = {"name": name}
    if parameters is not None:
        function["parameters"] = parameters
    return {"type": "function", "function": function}


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tools": [_tool("bad name!")]}, "tools[0].function.name"),
        ({"tools": [_tool("x" * 65)]}, "tools[0].function.name"),
        ({"tools": [_tool("f"), _tool("f")]}, "tools[1].function.name"),
        ({"tools": [_tool("f", {"type": "object", "properties": {"a": {"type": "nope"}}})]},
         "tools[0].function.parameters.properties.a.type"),
        ({"tools": [_tool("f", {"type": "object", "properties": {"a": {"$ref": "#/$defs/a"}},
                                "required": ["a"], "$defs": {"a": {"$ref": "#/$defs/a"}}})],
          "tool_choice": "required"}, "tools[0].function.parameters"),
        ({"tools": [_tool("f")], "tool_choice": {"type": "function",
                                                 "function": {"name": "g"}}}, "tool_choice"),
        ({"tools": [_tool(f"f{i}") for i in range(129)]}, "tools"),
        ({"tools": [_tool("f", {"type": "object", "description": "x" * 70000})]}, "tools"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": [_tool("f")], "structured_outputs": {"choice": ["a"]}},
         "structured_outputs"),
        ({"messages": ASK + [{"role": "tool", "tool_call_id": "call_x", "content": "1"}]},
         "messages[1].tool_call_id"),
        ({"messages": ASK + [{"role": "assistant", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]}]},
         "messages[1].tool_calls[0].function.arguments"),
    ],
)
def test_invalid_function_calling_input_is_400(http, extra, param):
    body = {"model": MODEL, "messages": ASK, **extra}
    response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


@pytest.mark.parametrize("max_tokens", [1, 2, 3, 5, 8])
def test_a_call_cut_by_max_tokens_never_shows_its_markup(client, max_tokens):
    kwargs = dict(model=MODEL, messages=ASK, tools=TOOLS, tool_choice="required",
                  max_tokens=max_tokens, temperature=0)
    whole = client.chat.completions.create(**kwargs).choices[0]
    assert whole.finish_reason == "length"
    assert whole.message.content is None and not whole.message.tool_calls
    chunks = list(client.chat.completions.create(**kwargs, stream=True))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == "" and chunks[-1].choices[0].finish_reason == "length"


PERSON = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 8},
                                           "age": {"type": "integer"}},
          "required": ["name", "age"], "additionalProperties": False}


def test_tools_with_response_format_give_a_call_or_matching_content(client):
    """What pydantic-ai's NativeOutput with a tool sends: the answer is a valid call or
    JSON matching the schema, whole and streamed, over many seeds."""
    kwargs = dict(model=MODEL, messages=ASK, tools=TOOLS, max_tokens=300, temperature=1.0,
                  parallel_tool_calls=False, response_format={
                      "type": "json_schema",
                      "json_schema": {"name": "person", "schema": PERSON, "strict": True}})
    kinds = set()
    for seed in range(8):
        choice = client.chat.completions.create(**kwargs, seed=seed).choices[0]
        if choice.finish_reason == "tool_calls":
            _assert_valid_calls(choice.message)
            assert choice.message.content is None
            kinds.add("call")
        else:
            assert choice.finish_reason == "stop", choice
            jsonschema.validate(json.loads(choice.message.content), PERSON)
            kinds.add("content")
    assert kinds  # which of the two the random model picks is its own business
    chunks = list(client.chat.completions.create(**kwargs, seed=0, stream=True))
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "<tool_call>" not in content
    if content:
        jsonschema.validate(json.loads(content), PERSON)


def test_a_named_call_starts_at_once_and_decodes_only_its_arguments(client):
    """With a named function the call's opening is determined, so the service writes it
    into the prompt: the stream's first delta after the role names the function, and the
    engine decodes only the arguments and the close (completion_tokens counts them)."""
    from openchat.generation.template import OpenChatTokenizer, find_tokenizer_model
    from tests.conftest import DEV_MODEL

    stream = client.chat.completions.create(
        model=MODEL, messages=ASK, tools=TOOLS, seed=5, max_tokens=300, stream=True,
        tool_choice={"type": "function", "function": {"name": "add"}},
        stream_options={"include_usage": True})
    chunks = list(stream)
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert deltas[0].role == "assistant"
    first_call = deltas[1].tool_calls[0]
    assert first_call.function.name == "add" and first_call.id.startswith("call_")
    arguments = "".join(d.tool_calls[0].function.arguments or ""
                        for d in deltas[1:] if d.tool_calls)
    jsonschema.validate(json.loads(arguments), ADD_PARAMS)
    assert chunks[-2].choices[0].finish_reason == "tool_calls"

    tokenizer = OpenChatTokenizer(find_tokenizer_model(str(DEV_MODEL)))
    decoded = len(tokenizer.encode(arguments + "}</tool_call>")) + 1  # and end_of_turn
    opening = len(tokenizer.encode('<tool_call>{"name":"add","arguments":'))
    assert opening >= 10
    # A random model spells constrained JSON with more, shorter tokens than a separate
    # encoding of the same text, but decoding the opening too would cost at least its
    # own tokens more.
    assert chunks[-1].usage.completion_tokens < decoded + opening
