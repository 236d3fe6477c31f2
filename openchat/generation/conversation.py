"""OpenAI chat messages -> the template's turns, including tool calls and tool results.

Earlier tool calls are written back exactly as the model writes them, and tool results
come back as a user turn of <tool_result> blocks, so multi-step conversations read to the
model as one consistent format.
"""

from __future__ import annotations

from openchat.generation.template import Turn
from openchat.generation.toolformat import render_call, render_result
from openchat.protocol.errors import invalid_param
from openchat.protocol.requests import ChatMessage


def messages_to_turns(messages: list[ChatMessage]) -> list[Turn]:
    """OpenAI messages -> template turns; refuses what OpenChat cannot read."""
    turns: list[Turn] = []
    call_names: dict[str, str] = {}  # tool_call_id -> function name, from earlier turns
    results_turn: int | None = None  # index of the user turn collecting tool results
    for i, message in enumerate(messages):
        role = "system" if message.role == "developer" else message.role
        if role == "function":
            raise invalid_param(f"messages[{i}].role", "The deprecated 'function' role is not "
                                "supported; use tools and 'tool' messages.")
        text = _message_text(message, i)
        if role == "tool":
            name = call_names.get(message.tool_call_id or "")
            if name is None:
                raise invalid_param(f"messages[{i}].tool_call_id", "This tool message answers "
                                    f"no earlier tool call (id {message.tool_call_id!r}).")
            block = render_result(name, message.tool_call_id, text)
            if results_turn is not None:
                turns[results_turn] = Turn("user", f"{turns[results_turn].content}\n{block}")
            else:
                turns.append(Turn("user", block))
                results_turn = len(turns) - 1
            continue
        results_turn = None
        if role == "assistant" and message.tool_calls:
            text = _with_calls(text, message.tool_calls, i, call_names)
        elif message.tool_calls:
            raise invalid_param(f"messages[{i}].tool_calls", "Only assistant messages carry "
                                "tool_calls.")
        if message.name and role == "user":
            text = f"{message.name}: {text}"
        turns.append(Turn(role=role, content=text))
    return turns


def _with_calls(text: str, tool_calls: list[dict], i: int, call_names: dict[str, str]) -> str:
    parts = [text] if text else []
    for j, call in enumerate(tool_calls):
        param = f"messages[{i}].tool_calls[{j}]"
        function = call.get("function") if isinstance(call, dict) else None
        if (call.get("type", "function") != "function" or not isinstance(function, dict)
                or not isinstance(function.get("name"), str) or not call.get("id")):
            raise invalid_param(param, "A tool call needs an id, type 'function' and a "
                                "function with a name and arguments.")
        call_names[call["id"]] = function["name"]
        parts.append(render_call(function["name"], function.get("arguments") or "{}",
                                 f"{param}.function.arguments"))
    return "\n".join(parts)


def _message_text(message: ChatMessage, i: int) -> str:
    if message.content is None:
        if message.role == "assistant":
            return ""
        raise invalid_param(f"messages[{i}].content", f"messages[{i}].content is required.",
                            code="missing_required_parameter")
    if isinstance(message.content, str):
        return message.content
    texts = []
    for j, part in enumerate(message.content):
        if part.type != "text" or part.text is None:
            raise invalid_param(
                f"messages[{i}].content[{j}]",
                f"Content parts of type '{part.type}' are not supported: OpenChat-3.5 reads "
                "text only.", code="unsupported_content_type",
            )
        texts.append(part.text)
    return "".join(texts)
