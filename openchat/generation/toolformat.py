"""Function calling for OpenChat-3.5: tool definitions -> prompt text + decoding constraint.

OpenChat-3.5 was not trained with a tool format, so this module defines one and makes
invalid calls impossible by constraining decoding with an xgrammar structural tag:

    <tool_call>{"name":"get_weather","arguments":{"city":"Paris"}}</tool_call>

* `auto`: free text, but once the model writes `<tool_call>` the rest of the block is
  forced to one of the tools with arguments matching that tool's `parameters`.
* `required` / a named function: only call blocks may be written (at least one; exactly
  one when `parallel_tool_calls` is false or a function is named).
* `none`: the tools are not offered at all.

Parsing the output back into OpenAI tool calls lives in toolparser.py.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from openchat.generation.constraints import check_json_schema, compact_json_format
from openchat.protocol.errors import APIError, invalid_param
from openchat.protocol.requests import SamplingRequest

CALL_OPEN = "<tool_call>"
CALL_CLOSE = "</tool_call>"
CALL_END = "}" + CALL_CLOSE  # what follows a call's arguments: the object's brace, the tag
TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
MAX_TOOLS = 128
MAX_TOOLS_JSON_CHARS = 64 * 1024
EMPTY_PARAMETERS = {"type": "object", "properties": {}}


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]
    validator: Any  # jsonschema validator for the arguments

    def call_prefix(self) -> str:
        """What a call block starts with, up to the arguments object (the structural tag's
        `begin`; the parser relies on this exact, compact shape)."""
        return f'{CALL_OPEN}{{"name":{json.dumps(self.name)},"arguments":'


@dataclass(frozen=True)
class ToolPlan:
    """What a request's tools mean for this generation."""

    tools: dict[str, Tool]
    mode: str  # "auto", "required" or "named"
    named: str | None
    parallel: bool
    # The start of the answer already written into the prompt (see determined_start).
    prefilled: str = ""

    def determined_start(self) -> str | None:
        """The text every answer must start with, when the format leaves no choice: a
        named function's call opening. Written into the prompt instead of decoded, it
        costs one prefill instead of a decode step per token (about 15 for
        `<tool_call>{"name":"get_weather","arguments":`)."""
        return self.tools[self.named].call_prefix() if self.mode == "named" else None

    def determined_end(self) -> str:
        """The text a prefilled call must end with once its arguments are whole: the
        call's close. Neither decoded nor generated, it is added to the answer after the
        engine stops (its end of turn is the only token the grammar allows after the
        arguments), which saves the 5 to 10 decode steps of `}</tool_call>`."""
        return CALL_END if self.prefilled else ""

    def offered(self) -> list[Tool]:
        return [self.tools[self.named]] if self.named else list(self.tools.values())

    def instruction(self) -> str:
        lines = [
            "You can call functions. To call one, write exactly one block per call:",
            f'{CALL_OPEN}{{"name":"<function name>","arguments":<JSON object>}}{CALL_CLOSE}',
            "The arguments must match the function's parameters (JSON Schema). Results come "
            "back in <tool_result> blocks.",
        ]
        if self.mode == "required":
            lines.append("Answer with function calls only.")
        elif self.mode == "named":
            lines.append(f"Call the function {self.named} now.")
        lines.append("Functions:")
        for tool in self.offered():
            spec = {"name": tool.name, "description": tool.description,
                    "parameters": tool.parameters}
            lines.append(json.dumps(spec, separators=(",", ":"), ensure_ascii=False))
        return "\n".join(lines)

    def structural_tag(self, content_schema: dict[str, Any] | None = None) -> str:
        """The xgrammar structural tag (JSON) handed to vLLM. With `content_schema` (tools
        beside response_format, in auto mode) the answer is either call blocks or content
        matching that schema, nothing else."""
        tags = [
            {
                "type": "tag",
                "begin": tool.call_prefix(),
                # Compact JSON: no whitespace to spend tokens on. (xgrammar's `excludes`
                # would forbid "</tool_call>" in strings but drops maxLength.)
                "content": compact_json_format(tool.parameters),
                "end": CALL_END,
            }
            for tool in self.offered()
        ]
        single = self.mode == "named" or not self.parallel
        if self.prefilled:  # the opening is in the prompt, the close is added: arguments only
            fmt = compact_json_format(self.tools[self.named].parameters)
        elif self.mode == "auto" and content_schema is not None:
            calls = {"type": "tags_with_separator", "tags": tags, "separator": "\n",
                     "at_least_one": True, "stop_after_first": single}
            content = compact_json_format(content_schema)
            fmt = {"type": "or", "elements": [calls, content]}
        elif self.mode == "auto":
            fmt = {"type": "triggered_tags", "triggers": [CALL_OPEN], "tags": tags,
                   "at_least_one": False, "stop_after_first": single}
        else:
            fmt = {"type": "tags_with_separator", "tags": tags, "separator": "\n",
                   "at_least_one": True, "stop_after_first": single}
        return json.dumps({"type": "structural_tag", "format": fmt})


def _tool_from_spec(spec: dict[str, Any], index: int) -> Tool:
    where = f"tools[{index}]"
    if not isinstance(spec, dict) or spec.get("type") != "function":
        raise invalid_param(f"{where}.type", "Only tools of type 'function' are supported.")
    function = spec.get("function")
    if not isinstance(function, dict):
        raise invalid_param(f"{where}.function", "Missing function definition.",
                            code="missing_required_parameter")
    unknown = set(function) - {"name", "description", "parameters", "strict"}
    if unknown:
        raise invalid_param(f"{where}.function", f"Unknown function fields: {sorted(unknown)}.")
    name = function.get("name")
    if not isinstance(name, str) or not TOOL_NAME.match(name):
        raise invalid_param(f"{where}.function.name", "Function names must match "
                            "^[a-zA-Z0-9_-]{1,64}$.")
    description = function.get("description") or ""
    if not isinstance(description, str):
        raise invalid_param(f"{where}.function.description", "description must be a string.")
    parameters = function.get("parameters") or EMPTY_PARAMETERS
    if not isinstance(parameters, dict) or parameters.get("type", "object") != "object":
        raise invalid_param(f"{where}.function.parameters",
                            "parameters must be a JSON Schema of type 'object'.")
    validator = check_json_schema(parameters, f"{where}.function.parameters")
    return Tool(name, description, parameters, validator)


def parse_tools(tools: list[dict[str, Any]]) -> dict[str, Tool]:
    if not tools:
        raise invalid_param("tools", "tools must not be empty.")
    if len(tools) > MAX_TOOLS:
        raise invalid_param("tools", f"At most {MAX_TOOLS} tools are allowed.")
    if len(json.dumps(tools)) > MAX_TOOLS_JSON_CHARS:
        raise invalid_param("tools", f"Tool definitions exceed {MAX_TOOLS_JSON_CHARS} "
                            "characters of JSON.")
    parsed: dict[str, Tool] = {}
    for index, spec in enumerate(tools):
        tool = _tool_from_spec(spec, index)
        if tool.name in parsed:
            raise invalid_param(f"tools[{index}].function.name",
                                f"Duplicate function name '{tool.name}'.")
        parsed[tool.name] = tool
    return parsed


def plan_tools(
    tools: list[dict[str, Any]] | None, tool_choice: str | dict[str, Any] | None,
    parallel_tool_calls: bool | None,
) -> ToolPlan | None:
    """The request's tool settings as a plan, or None when no tools are offered."""
    if tools is None:
        if tool_choice not in (None, "none"):
            raise invalid_param("tool_choice", "tool_choice is only allowed when tools are "
                                "specified.")
        return None
    parsed = parse_tools(tools)
    choice = "auto" if tool_choice is None else tool_choice
    named = None
    if isinstance(choice, dict):
        function = choice.get("function") if choice.get("type") == "function" else None
        named = function.get("name") if isinstance(function, dict) else None
        if not isinstance(named, str):
            raise invalid_param("tool_choice", "A named tool_choice looks like "
                                '{"type": "function", "function": {"name": "..."}}.')
        if named not in parsed:
            raise invalid_param("tool_choice", f"tool_choice names '{named}', which is not "
                                "in tools.")
        mode = "named"
    elif choice in ("auto", "required"):
        mode = choice
    elif choice == "none":
        return None
    else:
        raise invalid_param("tool_choice", "tool_choice must be 'none', 'auto', 'required' "
                            "or a named function.")
    return ToolPlan(parsed, mode, named, parallel_tool_calls is not False)


def render_call(name: str, arguments: str, param: str) -> str:
    """An earlier assistant call, written back exactly as the model writes calls."""
    try:
        compact = json.dumps(json.loads(arguments), separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError):
        raise invalid_param(param, "Tool call arguments must be a JSON string.") from None
    return f'{CALL_OPEN}{{"name":{json.dumps(name)},"arguments":{compact}}}{CALL_CLOSE}'


def render_result(name: str, call_id: str, content: str) -> str:
    return f'<tool_result name="{name}" id="{call_id}">{content}</tool_result>'


def check_no_tool_conflicts(plan: ToolPlan | None, request: SamplingRequest) -> None:
    if plan is None:
        return
    if request.structured_outputs is not None:
        raise APIError("tools cannot be combined with structured_outputs; use "
                       "response_format (json_object or json_schema) beside tools.",
                       param="structured_outputs", code="invalid_value")
    if request.stop:
        raise invalid_param("stop", "stop sequences cannot be combined with tools: they "
                            "would cut tool calls short.")
