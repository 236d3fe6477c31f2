"""Unit tests: an answer's finish reason and the server-side guarantee it enforces."""

from __future__ import annotations

import pytest

from openchat.generation.answer import Answer
from openchat.generation.constraints import build_constraint
from openchat.generation.events import ArgumentsDelta, CallStart, TextDelta
from openchat.generation.toolformat import plan_tools
from openchat.protocol.errors import APIError
from openchat.protocol.formats import ResponseFormat

ADD = {"type": "function", "function": {"name": "add", "parameters": {
    "type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}}}


def test_plain_answer_passes_text_through():
    answer = Answer(0)
    assert answer.feed("Hi") == [TextDelta("Hi")]
    assert answer.finish("length") == "length"
    assert answer.content() is None and answer.calls() == []


def test_invalid_structured_answer_is_a_500_but_a_cut_one_is_length():
    constraint = build_constraint(ResponseFormat(type="json_object"), None)
    cut = Answer(0, constraint=constraint)
    cut.feed('{"a":')
    assert cut.finish("length") == "length"
    broken = Answer(1, constraint=constraint)
    broken.feed('{"a":')
    with pytest.raises(APIError) as excinfo:
        broken.finish("stop")
    assert excinfo.value.status == 500 and excinfo.value.code == "structured_output_invalid"


def test_tool_answer_finishes_with_tool_calls_or_a_500():
    plan = plan_tools([ADD], "required", True)
    answer = Answer(0, plan)
    events = answer.feed('<tool_call>{"name":"add","arguments":{"a":1}}</tool_call>')
    assert [type(e) for e in events] == [CallStart, ArgumentsDelta]
    assert answer.finish("stop") == "tool_calls"
    assert answer.content() == "" and answer.calls()[0].arguments == '{"a":1}'
    wrong = Answer(0, plan)
    wrong.feed('<tool_call>{"name":"add","arguments":{"a":"x"}}</tool_call>')
    with pytest.raises(APIError) as excinfo:
        wrong.finish("stop")
    assert excinfo.value.code == "tool_call_invalid"


def test_raw_control_characters_in_json_strings_come_out_escaped():
    # xgrammar lets byte-fallback tokens such as <0x06> into length-bounded strings.
    constraint = build_constraint(ResponseFormat(type="json_object"), None)
    whole = Answer(0, constraint=constraint)
    whole.feed('{"a":"x\x06y","b":"\\"\x1f"}')
    assert whole.finish("stop") == "stop"
    assert whole.content() == '{"a":"x\\u0006y","b":"\\"\\u001f"}'
    streamed = Answer(1, constraint=constraint)
    pieces = [streamed.feed(delta) for delta in ('{"a":"x', '\x06', 'y","b":"\\', '"\x1f"}')]
    assert "".join(e.text for events in pieces for e in events) == whole.content()
    assert streamed.finish("stop") == "stop"


@pytest.mark.parametrize("text", ["<tool_call", "<tool_", "Sure. <tool_c",
                                  '<tool_call>{"name":"', '<tool_call>{"name":"add","argu'])
def test_a_call_cut_by_max_tokens_never_leaks_its_markup(text):
    plan = plan_tools([ADD], "auto", True)
    answer = Answer(0, plan)
    events = answer.feed(text)
    assert answer.finish("length") == "length"
    streamed = "".join(e.text for e in events + answer.tail if isinstance(e, TextDelta))
    assert "<" not in streamed and "<" not in answer.content()
    assert answer.content() == ("Sure." if text.startswith("Sure") else "")
    assert answer.calls() == []


def test_text_that_only_looks_like_a_call_start_stays_when_the_model_stopped():
    answer = Answer(0, plan_tools([ADD], "auto", True))
    answer.feed("a <tool_")
    assert answer.finish("stop") == "stop" and answer.content() == "a <tool_"


def test_tools_beside_response_format_give_calls_or_checked_content():
    person = {"type": "object", "properties": {"name": {"type": "string"}},
              "required": ["name"], "additionalProperties": False}
    constraint = build_constraint(ResponseFormat.model_validate(
        {"type": "json_schema", "json_schema": {"name": "p", "schema": person}}), None)
    plan = plan_tools([ADD], "auto", True)
    content = Answer(0, plan, constraint)
    events = content.feed('{"name":"A\x06n"}')
    assert content.finish("stop") == "stop"
    assert content.content() == '{"name":"A\\u0006n"}'  # escaped, as JSON output is
    assert "".join(e.text for e in events + content.tail) == content.content()
    call = Answer(0, plan, constraint)
    call.feed('<tool_call>{"name":"add","arguments":{"a":1}}</tool_call>')
    assert call.finish("stop") == "tool_calls" and call.content() == ""
    wrong = Answer(0, plan, constraint)
    wrong.feed('{"nom":"A"}')
    with pytest.raises(APIError) as excinfo:
        wrong.finish("stop")
    assert excinfo.value.code == "structured_output_invalid"


def test_a_named_calls_opening_is_prefilled_and_read_before_the_engine_text():
    import json
    from dataclasses import replace

    named = plan_tools([ADD], {"type": "function", "function": {"name": "add"}}, True)
    assert named.determined_start() == '<tool_call>{"name":"add","arguments":'
    assert plan_tools([ADD], "required", True).determined_start() is None
    plan = replace(named, prefilled=named.determined_start())
    tag = json.loads(plan.structural_tag())["format"]
    assert tag["type"] == "grammar"  # only the arguments are decoded
    assert plan.determined_end() == "}</tool_call>" and named.determined_end() == ""

    answer = Answer(0, plan)
    events = answer.feed('{"a":')
    assert isinstance(events[0], CallStart) and events[0].name == "add"
    answer.feed("1}")  # held back: its end could begin the close
    assert answer.finish("stop") == "tool_calls"  # the engine's end of turn: close added
    assert answer.tail == [ArgumentsDelta(0, '{"a":1}')]
    assert [json.loads(c.arguments) for c in answer.calls()] == [{"a": 1}]
    assert answer.content() == ""


def test_a_prefilled_call_cut_inside_its_arguments_gets_no_close():
    from dataclasses import replace

    named = plan_tools([ADD], {"type": "function", "function": {"name": "add"}}, True)
    answer = Answer(0, replace(named, prefilled=named.determined_start()))
    answer.feed('{"a":1')
    assert answer.finish("length") == "length" and answer.calls() == []


def test_a_prefilled_call_read_in_one_piece_is_one_whole_call():
    from dataclasses import replace

    named = plan_tools([ADD], {"type": "function", "function": {"name": "add"}}, True)
    answer = Answer(0, replace(named, prefilled=named.determined_start()))
    events = answer.feed('{"a":12}')  # a whole (non-streamed) answer is one delta
    assert isinstance(events[0], CallStart)
    assert answer.finish("stop") == "tool_calls"
    assert [c.arguments for c in answer.calls()] == ['{"a":12}']


def test_a_prefilled_call_cut_before_any_engine_text_still_streams_its_start():
    from dataclasses import replace

    named = plan_tools([ADD], {"type": "function", "function": {"name": "add"}}, True)
    answer = Answer(0, replace(named, prefilled=named.determined_start()))
    assert answer.finish("length") == "length"
    assert isinstance(answer.tail[0], CallStart) and answer.calls() == []
