"""End-to-end: structured output through the real engine (xgrammar) on the dev model.

The dev model's weights are random, so whatever it writes inside the constraint is
arbitrary: that makes these tests a fair check of the guarantee, not of the model.
Strings are bounded in the schemas so every answer can finish within max_tokens.
"""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor

import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

from tests.conftest import ADMIN_KEY

pytestmark = pytest.mark.e2e
MODEL = "openchat-3.5"
ASK = [{"role": "user", "content": "Give me the data."}]

POINT = {
    "type": "object",
    "properties": {"x": {"type": "integer", "minimum": -10, "maximum": 10},
                   "y": {"type": "integer", "minimum": -10, "maximum": 10}},
    "required": ["x", "y"], "additionalProperties": False,
}
SCHEMAS = {
    "nested": {
        "type": "object",
        "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 12},
            "address": {
                "type": "object",
                "properties": {"city": {"type": "string", "maxLength": 10},
                               "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
                "required": ["city", "zip"], "additionalProperties": False,
            },
        },
        "required": ["name", "address"], "additionalProperties": False,
    },
    "arrays": {
        "type": "object",
        "properties": {
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 6},
                     "minItems": 1, "maxItems": 3},
            "scores": {"type": "array", "items": {"type": "integer", "minimum": 0,
                                                  "maximum": 100},
                       "minItems": 2, "maxItems": 2},
        },
        "required": ["tags", "scores"], "additionalProperties": False,
    },
    "enums": {
        "type": "object",
        "properties": {"color": {"enum": ["red", "green", "blue"]}, "version": {"const": 2},
                       "ok": {"type": "boolean"},
                       "when": {"type": "string", "format": "date"}},
        "required": ["color", "version", "ok", "when"], "additionalProperties": False,
    },
    "refs": {
        "$defs": {"point": POINT},
        "type": "object",
        "properties": {"start": {"$ref": "#/$defs/point"},
                       "end": {"anyOf": [{"$ref": "#/$defs/point"}, {"type": "null"}]}},
        "required": ["start", "end"], "additionalProperties": False,
    },
    "oneof": {
        "type": "object",
        "properties": {"shape": {"oneOf": [
            {"type": "object", "properties": {"kind": {"const": "circle"},
                                               "r": {"type": "integer", "minimum": 1,
                                                     "maximum": 9}},
             "required": ["kind", "r"], "additionalProperties": False},
            {"type": "object", "properties": {"kind": {"const": "square"},
                                               "side": {"type": "integer", "minimum": 1,
                                                        "maximum": 9}},
             "required": ["kind", "side"], "additionalProperties": False},
        ]}},
        "required": ["shape"], "additionalProperties": False,
    },
}


def _schema_format(name: str, schema: dict) -> dict:
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema,
                                                    "strict": True}}


def test_twenty_plus_seeded_requests_all_validate(client):
    jobs = [(name, seed) for name in SCHEMAS for seed in range(5)]

    def run(job):
        name, seed = job
        completion = client.chat.completions.create(
            model=MODEL, messages=ASK, max_tokens=400, seed=seed, temperature=1.0,
            response_format=_schema_format(name, SCHEMAS[name]),
        )
        return name, completion.choices[0]

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(run, jobs))
    assert len(results) >= 20
    for name, choice in results:
        assert choice.finish_reason == "stop", (name, choice.message.content)
        outside_strings = re.sub(r'"(\\.|[^"\\])*"', '""', choice.message.content)
        assert not re.search(r"\s", outside_strings), "JSON must be compact"
        jsonschema.validate(json.loads(choice.message.content), SCHEMAS[name],
                            format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)


def test_json_object_returns_an_object(client):
    finished = []
    for seed in range(8):
        choice = client.chat.completions.create(
            model=MODEL, messages=ASK, max_tokens=300, seed=seed,
            response_format={"type": "json_object"},
        ).choices[0]
        assert choice.message.content.startswith("{")
        if choice.finish_reason == "stop":
            finished.append(json.loads(choice.message.content))
    assert finished and all(isinstance(value, dict) for value in finished)


def test_streamed_json_concatenates_to_valid_json(client):
    stream = client.chat.completions.create(
        model=MODEL, messages=ASK, max_tokens=400, seed=7, stream=True,
        response_format=_schema_format("nested", SCHEMAS["nested"]),
    )
    text, finish = "", None
    for chunk in stream:
        for choice in chunk.choices:
            text += choice.delta.content or ""
            finish = choice.finish_reason or finish
    assert finish == "stop"
    jsonschema.validate(json.loads(text), SCHEMAS["nested"])


def test_cut_by_max_tokens_is_length_and_not_pretended_complete(client):
    completion = client.chat.completions.create(
        model=MODEL, messages=ASK, max_tokens=4, seed=1,
        response_format=_schema_format("nested", SCHEMAS["nested"]),
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "length"
    with pytest.raises(ValueError):
        json.loads(choice.message.content)


def test_regex_choice_and_grammar_extensions_hold(client):
    for seed in range(3):
        regex = client.chat.completions.create(
            model=MODEL, messages=ASK, max_tokens=20, seed=seed,
            extra_body={"structured_outputs": {"regex": "[a-z]{3}-[0-9]{2}"}},
        ).choices[0].message.content
        assert re.fullmatch(r"[a-z]{3}-[0-9]{2}", regex)
        choice = client.chat.completions.create(
            model=MODEL, messages=ASK, max_tokens=10, seed=seed,
            extra_body={"structured_outputs": {"choice": ["yes", "no", "maybe"]}},
        ).choices[0].message.content
        assert choice in ("yes", "no", "maybe")
        grammar = client.chat.completions.create(
            model=MODEL, messages=ASK, max_tokens=20, seed=seed,
            extra_body={"structured_outputs": {
                "grammar": 'root ::= "answer: " ("yes" | "no") "." [0-9]'}},
        ).choices[0].message.content
        assert re.fullmatch(r"answer: (yes|no)\.[0-9]", grammar)


def test_completions_endpoint_takes_response_format(client):
    completion = client.completions.create(
        model=MODEL, prompt="JSON:", max_tokens=200, seed=2,
        extra_body={"response_format": _schema_format("point", POINT)},
    )
    jsonschema.validate(json.loads(completion.choices[0].text), POINT)
    streamed = "".join(
        c.choices[0].text for c in client.completions.create(
            model=MODEL, prompt="JSON:", max_tokens=200, seed=2, stream=True,
            extra_body={"structured_outputs": {"json": POINT}},
        ) if c.choices
    )
    jsonschema.validate(json.loads(streamed), POINT)


class Address(BaseModel):
    city: str = Field(max_length=10)
    zip: str = Field(pattern=r"^[0-9]{5}$")


class Person(BaseModel):
    name: str = Field(max_length=12)
    age: int = Field(ge=0, le=120)
    address: Address


def test_openai_parse_with_pydantic_model(client):
    completion = client.chat.completions.parse(
        model=MODEL, messages=ASK, max_tokens=400, seed=3, response_format=Person,
    )
    parsed = completion.choices[0].message.parsed
    assert isinstance(parsed, Person)
    assert 0 <= parsed.age <= 120


def test_schema_reaches_the_prompt(http):
    plain = http.post("/tokenize", json={"messages": ASK}).json()["count"]
    response = http.post("/v1/chat/completions", json={
        "model": MODEL, "messages": ASK, "max_tokens": 200, "seed": 1,
        "response_format": _schema_format("point", POINT)})
    assert response.json()["usage"]["prompt_tokens"] > plain + 20


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"response_format": _schema_format("bad", {"type": "strin"})},
         "response_format.json_schema.schema.type"),
        ({"response_format": _schema_format("bad", {"type": "object", "properties": {
            "a": {"not": {"type": "string"}}}})},
         "response_format.json_schema.schema.properties.a.not"),
        ({"response_format": _schema_format("bad", {"$ref": "#/$defs/nowhere"})},
         "response_format.json_schema.schema"),
        ({"response_format": _schema_format("loop", {
            "type": "object", "properties": {"a": {"$ref": "#/$defs/a"}}, "required": ["a"],
            "$defs": {"a": {"$ref": "#/$defs/a"}}})}, "response_format.json_schema.schema"),
        ({"response_format": {"type": "json_schema"}}, "response_format"),
        ({"response_format": {"type": "xml"}}, "response_format"),
        ({"structured_outputs": {"regex": "a", "choice": ["a"]}}, "structured_outputs"),
        ({"structured_outputs": {"regex": "(?<=a)b"}}, "structured_outputs.regex"),
        ({"structured_outputs": {"grammar": "root ::= nothing"}}, "structured_outputs.grammar"),
        ({"response_format": {"type": "json_object"}, "stop": ["}"]}, "stop"),
    ],
)
def test_invalid_structured_requests_are_400(http, extra, param):
    response = http.post("/v1/chat/completions",
                         json={"model": MODEL, "messages": ASK, **extra})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param
    assert ".cc" not in error["message"] and "/project/" not in error["message"]


def test_typed_extract_returns_validated_object(base_url):
    import bentoml

    with bentoml.SyncHTTPClient(base_url, timeout=120, token=ADMIN_KEY) as bento:
        result = bento.extract(text="Ada lives in Paris, 75001.", json_schema=SCHEMAS["nested"],
                               seed=5)
        jsonschema.validate(result, SCHEMAS["nested"])
        with pytest.raises(bentoml.exceptions.BentoMLException):
            bento.extract(text="x", json_schema={"type": "strin"})


def test_unknown_model_still_404_with_structured(client):
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=ASK,
                                       response_format={"type": "json_object"})
