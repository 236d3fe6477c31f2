"""Unit tests: tool validation, the OpenChat tool format, the structural tag, the parser."""

from __future__ import annotations

import json

import pytest
import xgrammar
from xgrammar.testing import _is_grammar_accept_string

from openchat.generation.conversation import messages_to_turns
from openchat.generation.events import ArgumentsDelta, TextDelta
from openchat.generation.toolformat import plan_tools
from openchat.generation.toolparser import ToolCallParser, check_calls
from openchat.protocol.errors import APIError
from openchat.protocol.requests import ChatMessage

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather now",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"], "additionalProperties": False}}}
ADD = {"type": "function", "function": {
    "name": "add", "parameters": {"type": "object", "properties": {
        "a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]}}}
CALL = '<tool_call>{"name":"add","arguments":{"a":1,"b":2}}</tool_call>'


def accepts(plan, text: str) -> bool:
    return _is_grammar_accept_string(xgrammar.Grammar.from_structural_tag(plan.structural_tag()),
                                     text)


def test_required_accepts_only_calls_and_parallel_controls_count():
    parallel = plan_tools([WEATHER, ADD], "required", True)
    single = plan_tools([WEATHER, ADD], "required", False)
    assert accepts(parallel, CALL) and accepts(parallel, CALL + "\n" + CALL)
    assert accepts(single, CALL) and not accepts(single, CALL + "\n" + CALL)
    assert not accepts(parallel, "hello")
    assert not accepts(parallel, CALL.replace("1", '"one"'))  # arguments must match


def test_auto_allows_text_but_constrains_calls():
    plan = plan_tools([WEATHER, ADD], "auto", True)
    assert accepts(plan, "Just text.")
    assert accepts(plan, "Let me add. " + CALL)
    assert not accepts(plan, '<tool_call>{"name":"mul","arguments":{}}</tool_call>')


def test_call_arguments_are_compact_json_with_spaces_only_inside_strings():
    """Whitespace between JSON tokens is free for the model to take, token by token: the
    dev model spent 62 tokens on a call whose compact form is about 26."""
    plan = plan_tools([WEATHER, ADD], "required", True)
    assert accepts(plan, '<tool_call>{"name":"get_weather","arguments":{"city":"New York"}}'
                         "</tool_call>")
    assert not accepts(plan, CALL.replace('{"a":1', '{"a": 1'))
    assert not accepts(plan, CALL.replace('{"a"', '{\t"a"'))
    beside = plan_tools([WEATHER, ADD], "auto", True)
    grammar = xgrammar.Grammar.from_structural_tag(beside.structural_tag(
        {"type": "object", "properties": {"x": {"type": "integer"}}}))
    assert _is_grammar_accept_string(grammar, '{"x":1}')
    assert not _is_grammar_accept_string(grammar, '{"x": 1}')


def test_named_choice_forces_that_function_once():
    plan = plan_tools([WEATHER, ADD], {"type": "function", "function": {"name": "add"}}, True)
    assert accepts(plan, CALL)
    assert not accepts(plan, '<tool_call>{"name":"get_weather","arguments":{"city":"x"}}'
                             "</tool_call>")
    assert "Call the function add now." in plan.instruction()


def test_none_and_no_tools_mean_no_plan():
    assert plan_tools([WEATHER], "none", None) is None
    assert plan_tools(None, None, None) is None


@pytest.mark.parametrize(
    ("tools", "choice", "param"),
    [
        ([{"type": "function", "function": {"name": "bad name"}}], None,
         "tools[0].function.name"),
        ([WEATHER, WEATHER], None, "tools[1].function.name"),
        ([{"type": "function", "function": {"name": "f", "parameters": {"type": "strin"}}}],
         None, "tools[0].function.parameters"),
        ([{"type": "function", "function": {"name": "f", "parameters": {
            "type": "object", "properties": {"a": {"not": {}}}}}}], None,
         "tools[0].function.parameters.properties.a.not"),
        ([{"type": "retrieval"}], None, "tools[0].type"),
        ([WEATHER], {"type": "function", "function": {"name": "add"}}, "tool_choice"),
        ([WEATHER], "sometimes", "tool_choice"),
        (None, "required", "tool_choice"),
        ([WEATHER] * 200, None, "tools"),
        ([], None, "tools"),
    ],
)
def test_invalid_tools_are_400(tools, choice, param):
    with pytest.raises(APIError) as excinfo:
        plan_tools(tools, choice, None)
    assert excinfo.value.status == 400
    assert excinfo.value.param == param


def test_parser_splits_text_and_calls_in_any_chunking():
    text = 'Sure. <tool_call>{"name":"add","arguments":{"a":1,"b":2}}</tool_call>\n' \
           '<tool_call>{"name":"get_weather","arguments":{"city":"x}</tool_call>y"}}</tool_call>'
    for size in (1, 2, 5, len(text)):
        parser, content, arguments = ToolCallParser(), "", {}
        for start in range(0, len(text), size):
            events = parser.feed(text[start:start + size])
            for event in events:
                if isinstance(event, TextDelta):
                    content += event.text
                elif isinstance(event, ArgumentsDelta):
                    arguments[event.index] = arguments.get(event.index, "") + event.text
        parser.finish()
        assert content == "Sure."
        calls = parser.complete_calls
        assert [c.name for c in calls] == ["add", "get_weather"]
        assert json.loads(calls[1].arguments) == {"city": "x}</tool_call>y"}
        assert arguments == {0: calls[0].arguments, 1: calls[1].arguments}
        assert all(c.id.startswith("call_") for c in calls) and calls[0].id != calls[1].id


def test_cut_call_is_not_returned():
    parser = ToolCallParser()
    parser.feed('<tool_call>{"name":"add","arguments":{"a":1')
    parser.finish()
    assert parser.complete_calls == []


def test_check_calls_catches_violations():
    plan = plan_tools([WEATHER, ADD], "required", False)
    parser = ToolCallParser()
    parser.feed(CALL)
    assert check_calls(plan, parser.complete_calls) is None
    parser.feed("\n" + CALL)
    assert "one was allowed" in check_calls(plan, parser.complete_calls)
    assert "required" in check_calls(plan, [])


def test_history_renders_calls_and_results():
    messages = [ChatMessage(**m) for m in [
        {"role": "user", "content": "1+2?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "3"},
    ]]
    turns = messages_to_turns(messages)
    assert turns[1].content == CALL
    assert turns[2].role == "user"
    assert turns[2].content == '<tool_result name="add" id="call_1">3</tool_result>'


def test_tool_message_for_unknown_call_is_400():
    messages = [ChatMessage(role="user", content="x"),
                ChatMessage(role="tool", tool_call_id="call_nope", content="3")]
    with pytest.raises(APIError) as excinfo:
        messages_to_turns(messages)
    assert excinfo.value.param == "messages[1].tool_call_id"


def test_raw_control_characters_in_strings_are_escaped_to_strict_json():
    text = '<tool_call>{"name":"add","arguments":{"a":1,"b":"x\x1ay\\"\x01"}}</tool_call>'
    for size in (1, 3, len(text)):
        parser = ToolCallParser()
        streamed = ""
        for start in range(0, len(text), size):
            streamed += "".join(e.text for e in parser.feed(text[start:start + size])
                                if isinstance(e, ArgumentsDelta))
        (call,) = parser.complete_calls
        assert streamed == call.arguments == '{"a":1,"b":"x\\u001ay\\"\\u0001"}'
        assert json.loads(call.arguments) == {"a": 1, "b": 'x\x1ay"\x01'}


PERSON = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 8}},
          "required": ["name"], "additionalProperties": False}


def test_auto_beside_a_schema_allows_calls_or_matching_content_only():
    plan = plan_tools([WEATHER, ADD], "auto", True)
    grammar = xgrammar.Grammar.from_structural_tag(plan.structural_tag(PERSON))
    assert _is_grammar_accept_string(grammar, CALL)
    assert _is_grammar_accept_string(grammar, CALL + "\n" + CALL)
    assert _is_grammar_accept_string(grammar, '{"name":"Ann"}')
    assert not _is_grammar_accept_string(grammar, "Just text.")
    assert not _is_grammar_accept_string(grammar, '{"name":"Annabelle!"}')  # too long
    assert not _is_grammar_accept_string(grammar, '{"name":"Ann"}' + CALL)
