"""Structured output: response_format and vLLM's `structured_outputs` -> a `Constraint`.

A constraint carries three things: the vLLM StructuredOutputsParams that make xgrammar
restrict decoding (the guarantee of shape), a short instruction for the prompt (so a real
model fills the fields sensibly), and a validator the server runs on every finished
answer before returning it. Schemas are checked here, before anything reaches the engine:
an invalid schema, a keyword the decoder would silently ignore, or one xgrammar cannot
compile gives a 400 naming the offending part.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from typing import Any, Callable

from openchat.protocol.errors import APIError
from openchat.protocol.formats import ResponseFormat, StructuredOutputs

# Keywords xgrammar enforces while decoding (plus pure annotations). Anything else (not,
# if/then/else, uniqueItems, patternProperties, ...) would be accepted by the compiler
# but not enforced, so the service refuses it instead of returning unchecked output.
SUPPORTED_KEYWORDS = {
    "type", "properties", "required", "additionalProperties", "items", "prefixItems",
    "minItems", "maxItems", "enum", "const", "anyOf", "oneOf", "$ref", "$defs",
    "definitions", "minLength", "maxLength", "pattern", "format", "minimum", "maximum",
    "exclusiveMinimum", "exclusiveMaximum", "multipleOf", "minProperties",
    "maxProperties",
    # annotations
    "title", "description", "default", "examples", "$schema", "$id", "$comment",
    "deprecated", "readOnly", "writeOnly",
}
SUPPORTED_FORMATS = {
    "date", "time", "date-time", "duration", "email", "hostname", "ipv4", "ipv6", "uri",
    "uri-reference", "uuid",
}
_SCHEMA_MAPS = {"properties", "$defs", "definitions"}
_SCHEMA_LISTS = {"anyOf", "oneOf", "prefixItems"}
_SCHEMA_VALUES = {"items", "additionalProperties"}
_CPP_PREFIX = re.compile(r"^\[[^\]]*\]\s*\S+\.(cc|h|cpp):\d+:\s*")


@dataclass(frozen=True)
class Constraint:
    params: Any  # vllm StructuredOutputsParams
    instruction: str | None
    validate: Callable[[str], str | None]  # None when valid, else what is wrong
    kind: str
    # JSON kinds: the schema content must match, for a grammar that also allows tool calls.
    schema: dict[str, Any] | None = None


def _clean(message: str) -> str:
    """xgrammar's C++ messages start with a timestamp and a source path: drop both."""
    return _CPP_PREFIX.sub("", str(message).strip()).strip()


def _walk(schema: Any, path: str) -> None:
    if not isinstance(schema, dict):
        if isinstance(schema, bool):
            return
        raise APIError(f"{path} must be a JSON Schema object.", param=path,
                       code="invalid_json_schema")
    for key, value in schema.items():
        where = f"{path}.{key}"
        if key not in SUPPORTED_KEYWORDS:
            raise APIError(
                f"{where}: the JSON Schema keyword '{key}' is not supported by the structured "
                "output engine.", param=where, code="unsupported_json_schema",
            )
        if key == "format" and value not in SUPPORTED_FORMATS:
            raise APIError(
                f"{where}: format '{value}' is not supported; supported formats: "
                f"{', '.join(sorted(SUPPORTED_FORMATS))}.", param=where,
                code="unsupported_json_schema",
            )
        if key in _SCHEMA_MAPS and isinstance(value, dict):
            for name, sub in value.items():
                _walk(sub, f"{where}.{name}")
        elif key in _SCHEMA_LISTS and isinstance(value, list):
            for i, sub in enumerate(value):
                _walk(sub, f"{where}[{i}]")
        elif key in _SCHEMA_VALUES:
            _walk(value, where)


# Checks and compiled grammars are kept per distinct schema or grammar text: clients send
# the same one with every request, and checking it again (meta-schema validation, an
# xgrammar compile) cost more than all the rest of our work on the request. Longer texts
# are checked every time rather than kept; errors (raised) are never kept.
_CACHED_TEXT_CHARS = 65_536
_CACHED_ITEMS = 256


def check_json_schema(schema: dict[str, Any], param: str) -> Any:
    """400 unless `schema` is valid JSON Schema the decoder fully enforces; returns the
    jsonschema validator used to check answers (shared by requests with the same schema:
    validators keep no state between calls)."""
    text = json.dumps(schema)
    check = _check_schema_cached if len(text) <= _CACHED_TEXT_CHARS else _check_schema
    return check(text, param)


def _check_schema(text: str, param: str) -> Any:
    import jsonschema
    import xgrammar

    schema = json.loads(text)
    validator_cls = jsonschema.validators.validator_for(schema, jsonschema.Draft202012Validator)
    try:
        validator_cls.check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = ".".join([param, *map(str, exc.path)]) if exc.path else param
        raise APIError(f"{where}: invalid JSON Schema: {exc.message}", param=where,
                       code="invalid_json_schema") from None
    _walk(schema, param)
    try:
        xgrammar.Grammar.from_json_schema(text, any_whitespace=False)
    except Exception as exc:
        raise APIError(f"{param}: the schema cannot be compiled: {_clean(exc)}",
                       param=param, code="unsupported_json_schema") from None
    if not _admits_finite_value(schema, schema, frozenset()):
        raise APIError(
            f"{param}: the schema admits no finite JSON value (e.g. a $ref cycle through a "
            "required property, or a required property that is not allowed).", param=param,
            code="invalid_json_schema",
        )
    return validator_cls(schema, format_checker=validator_cls.FORMAT_CHECKER)


def _resolve(root: dict[str, Any], ref: str) -> Any:
    """A local `$ref` ("#", "#/$defs/x", "#/definitions/x"); None when not local."""
    if not ref.startswith("#"):
        return None
    node: Any = root
    for part in filter(None, ref[1:].split("/")):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _admits_finite_value(node: Any, root: dict[str, Any], refs_on_path: frozenset) -> bool:
    """Whether some finite JSON value matches `node`. xgrammar compiles a schema whose
    every value must recurse forever (or that requires a property it also forbids), and
    decoding then ends in a truncated answer, so such schemas are refused up front.
    Optional recursion (trees) is fine."""
    if isinstance(node, bool) or not isinstance(node, dict):
        return node is not False
    ref = node.get("$ref")
    if isinstance(ref, str):
        if ref in refs_on_path:
            return False
        target = _resolve(root, ref)
        if target is not None and not _admits_finite_value(target, root, refs_on_path | {ref}):
            return False
    for key in ("anyOf", "oneOf"):
        if isinstance(node.get(key), list) and not any(
            _admits_finite_value(sub, root, refs_on_path) for sub in node[key]
        ):
            return False
    properties = node.get("properties") if isinstance(node.get("properties"), dict) else {}
    extra = node.get("additionalProperties", True)  # the schema of required names not listed
    for name in node.get("required") or []:
        if not _admits_finite_value(properties.get(name, extra), root, refs_on_path):
            return False
    if (node.get("minItems") or 0) > 0:
        prefix = node.get("prefixItems") or []
        needed = prefix[: node["minItems"]] if prefix else [node.get("items", True)]
        if not all(_admits_finite_value(sub, root, refs_on_path) for sub in needed):
            return False
    return True


def _json_validator(validator) -> Callable[[str], str | None]:
    def validate(text: str) -> str | None:
        try:
            value = json.loads(text)
        except ValueError as exc:
            return f"not JSON: {exc}"
        if validator is None:
            return None if isinstance(value, dict) else "not a JSON object"
        error = next(iter(validator.iter_errors(value)), None)
        return None if error is None else f"{list(error.path)}: {error.message}"

    return validate


def _grammar_validator(grammar) -> Callable[[str], str | None]:
    from xgrammar.testing import _is_grammar_accept_string

    return lambda text: None if _is_grammar_accept_string(grammar, text) else (
        "does not match the grammar"
    )


def _compile(kind: str, source: str, param: str):
    compile_ = _compile_cached if len(source) <= _CACHED_TEXT_CHARS else _compile_grammar
    return compile_(kind, source, param)


def _compile_grammar(kind: str, source: str, param: str):
    import xgrammar

    try:
        if kind == "regex":
            return xgrammar.Grammar.from_regex(source)
        return xgrammar.Grammar.from_ebnf(source)
    except Exception as exc:
        raise APIError(f"{param}: invalid {kind}: {_clean(exc)}", param=param,
                       code=f"invalid_{kind}") from None


def compact_json_format(schema: dict[str, Any]) -> dict[str, Any]:
    """A structural-tag format for JSON matching `schema` written compactly, with no
    whitespace outside strings. A tag's `json_schema` format allows a whitespace character
    between any two tokens (`max_whitespace_cnt` cannot be 0), and a model takes that
    freedom: the dev model spent 62 tokens on a two-field call that compact JSON writes in
    about 26. Plain response_format JSON is compact already (the engine's
    `disable_any_whitespace`); this makes tool arguments the same."""
    text = json.dumps(schema)
    ebnf = (_compact_ebnf_cached if len(text) <= _CACHED_TEXT_CHARS else _compact_ebnf)(text)
    return {"type": "grammar", "grammar": ebnf}


def _compact_ebnf(text: str) -> str:
    import xgrammar

    return str(xgrammar.Grammar.from_json_schema(text, any_whitespace=False,
                                                 separators=(",", ":")))


_check_schema_cached = functools.lru_cache(maxsize=_CACHED_ITEMS)(_check_schema)
_compile_cached = functools.lru_cache(maxsize=_CACHED_ITEMS)(_compile_grammar)
_compact_ebnf_cached = functools.lru_cache(maxsize=_CACHED_ITEMS)(_compact_ebnf)


def schema_instruction(schema: dict[str, Any] | None) -> str:
    if schema is None:
        return "Respond only with a JSON object."
    compact = json.dumps(schema, separators=(",", ":"), ensure_ascii=False)
    return f"Respond only with JSON that matches this JSON Schema:\n{compact}"


def build_constraint(
    response_format: ResponseFormat | None, structured: StructuredOutputs | None
) -> Constraint | None:
    """The constraint a request asks for, or None for free text."""
    from vllm.sampling_params import StructuredOutputsParams

    if structured is not None and response_format is not None and response_format.type != "text":
        raise APIError("Give response_format or structured_outputs, not both.",
                       param="structured_outputs", code="invalid_value")
    if structured is not None:
        return _from_extension(structured, StructuredOutputsParams)
    if response_format is None or response_format.type == "text":
        return None
    if response_format.type == "json_object":
        return Constraint(
            StructuredOutputsParams(json_object=True),
            schema_instruction(None), _json_validator(None), "json_object",
            {"type": "object"},
        )
    spec = response_format.json_schema
    param = "response_format.json_schema.schema"
    validator = check_json_schema(spec.schema_, param)
    instruction = schema_instruction(spec.schema_)
    if spec.description:
        instruction = f"{spec.description}\n{instruction}"
    return Constraint(
        StructuredOutputsParams(json=spec.schema_),
        instruction, _json_validator(validator), "json_schema", spec.schema_,
    )


def _from_extension(structured: StructuredOutputs, params_cls) -> Constraint:
    if structured.json_ is not None:
        if structured.json_ is True or structured.json_ == {}:
            return Constraint(params_cls(json_object=True),
                              schema_instruction(None), _json_validator(None), "json_object")
        if structured.json_ is False:
            raise APIError("structured_outputs.json must be a schema.",
                           param="structured_outputs.json", code="invalid_value")
        validator = check_json_schema(structured.json_, "structured_outputs.json")
        return Constraint(params_cls(json=structured.json_),
                          schema_instruction(structured.json_), _json_validator(validator),
                          "json_schema")
    if structured.choice is not None:
        choices = list(structured.choice)
        return Constraint(params_cls(choice=choices), None,
                          lambda text: None if text in choices else "not one of the choices",
                          "choice")
    if structured.regex is not None:
        grammar = _compile("regex", structured.regex, "structured_outputs.regex")
        return Constraint(params_cls(regex=structured.regex), None,
                          _grammar_validator(grammar), "regex")
    grammar = _compile("grammar", structured.grammar, "structured_outputs.grammar")
    return Constraint(params_cls(grammar=structured.grammar), None,
                      _grammar_validator(grammar), "grammar")
