"""Unit tests: response_format / structured_outputs -> constraint, schema checks, validators."""

from __future__ import annotations

import pytest

from openchat.generation.constraints import build_constraint
from openchat.protocol.errors import APIError
from openchat.protocol.formats import ResponseFormat, StructuredOutputs


def schema_format(schema: dict) -> ResponseFormat:
    return ResponseFormat(type="json_schema", json_schema={"name": "t", "schema": schema})


def test_text_and_none_mean_no_constraint():
    assert build_constraint(None, None) is None
    assert build_constraint(ResponseFormat(type="text"), None) is None


def test_json_schema_constraint_is_compact_and_validates():
    schema = {"type": "object", "properties": {"a": {"type": "integer", "maximum": 3}},
              "required": ["a"], "additionalProperties": False}
    constraint = build_constraint(schema_format(schema), None)
    assert constraint.params.json == schema
    assert '"maximum":3' in constraint.instruction
    assert constraint.validate('{"a":2}') is None
    assert "maximum" in constraint.validate('{"a":7}') or "7" in constraint.validate('{"a":7}')
    assert constraint.validate('{"a":') is not None


def test_json_object_accepts_only_objects():
    constraint = build_constraint(ResponseFormat(type="json_object"), None)
    assert constraint.params.json_object
    assert constraint.validate('{"x": [1]}') is None
    assert constraint.validate("[1]") is not None


def test_formats_are_checked():
    schema = {"type": "object", "properties": {"d": {"type": "string", "format": "date"}}}
    constraint = build_constraint(schema_format(schema), None)
    assert constraint.validate('{"d":"2024-02-29"}') is None
    assert constraint.validate('{"d":"yesterday"}') is not None


@pytest.mark.parametrize(
    ("schema", "param", "code"),
    [
        ({"type": "strin"}, "response_format.json_schema.schema.type", "invalid_json_schema"),
        ({"type": "object", "properties": {"a": {"not": {"type": "string"}}}},
         "response_format.json_schema.schema.properties.a.not", "unsupported_json_schema"),
        ({"type": "array", "items": {"type": "integer"}, "uniqueItems": True},
         "response_format.json_schema.schema.uniqueItems", "unsupported_json_schema"),
        ({"type": "string", "format": "hostnamex"},
         "response_format.json_schema.schema.format", "unsupported_json_schema"),
        ({"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}},
         "response_format.json_schema.schema", "unsupported_json_schema"),
        ({"type": "string", "pattern": "(?<=a)b"},
         "response_format.json_schema.schema", "unsupported_json_schema"),
    ],
)
def test_bad_schemas_are_400_naming_the_part(schema, param, code):
    with pytest.raises(APIError) as excinfo:
        build_constraint(schema_format(schema), None)
    assert excinfo.value.status == 400
    assert excinfo.value.param == param
    assert excinfo.value.code == code
    assert ".cc:" not in excinfo.value.message  # no internal source paths


CYCLE_DEFS = {"a": {"$ref": "#/$defs/a"}}


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "object", "properties": {"a": {"$ref": "#/$defs/a"}}, "required": ["a"],
         "$defs": CYCLE_DEFS},
        {"$defs": {"node": {"type": "object", "properties": {"next": {"$ref": "#/$defs/node"}},
                            "required": ["next"]}}, "$ref": "#/$defs/node"},
        {"type": "array", "items": {"$ref": "#"}, "minItems": 1},
        {"type": "object", "required": ["x"], "additionalProperties": False},
    ],
)
def test_schemas_without_a_finite_value_are_400(schema):
    with pytest.raises(APIError) as excinfo:
        build_constraint(schema_format(schema), None)
    assert excinfo.value.status == 400
    assert "no finite JSON value" in excinfo.value.message


def test_optional_recursion_is_allowed():
    tree = {"$defs": {"node": {"type": "object", "additionalProperties": False,
                               "properties": {"v": {"type": "integer"},
                                              "children": {"type": "array",
                                                           "items": {"$ref": "#/$defs/node"}}},
                               "required": ["v"]}},
            "$ref": "#/$defs/node"}
    constraint = build_constraint(schema_format(tree), None)
    assert constraint.validate('{"v":1,"children":[{"v":2}]}') is None


def test_choice_regex_grammar_extensions():
    choice = build_constraint(None, StructuredOutputs(choice=["yes", "no"]))
    assert choice.validate("yes") is None and choice.validate("maybe") is not None
    regex = build_constraint(None, StructuredOutputs(regex="[a-z]{3}-[0-9]{2}"))
    assert regex.validate("abc-12") is None and regex.validate("abc-123") is not None
    grammar = build_constraint(None, StructuredOutputs(grammar='root ::= "a" ("b" | "c")'))
    assert grammar.validate("ab") is None and grammar.validate("ad") is not None


@pytest.mark.parametrize(
    ("structured", "param"),
    [
        ({"regex": "(?<=a)b"}, "structured_outputs.regex"),
        ({"grammar": "root ::= undefined_rule"}, "structured_outputs.grammar"),
    ],
)
def test_bad_regex_and_grammar(structured, param):
    with pytest.raises(APIError) as excinfo:
        build_constraint(None, StructuredOutputs(**structured))
    assert excinfo.value.param == param


def test_exactly_one_extension_field():
    with pytest.raises(ValueError):
        StructuredOutputs(regex="a", choice=["a"])
    with pytest.raises(ValueError):
        StructuredOutputs()


def test_response_format_and_extension_together_refused():
    with pytest.raises(APIError):
        build_constraint(ResponseFormat(type="json_object"), StructuredOutputs(choice=["a"]))
