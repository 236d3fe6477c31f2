"""The requests load/bench.py sends: one body builder per workload, the same for both targets.

Every workload is a request both raw vLLM and the service accept unchanged, so the
difference in the figures is the server, not the question:

  completion_ids  /v1/completions with the token ids of one rendered user turn (no template
                  on either side), ignore_eos: exactly max_tokens out.
  chat            /v1/chat/completions, one user turn, ignore_eos. Raw vLLM renders it with
                  OpenChat's chat template (load/openchat-chat-template.jinja, given with
                  --chat-template), the service with its own renderer.
  json_schema     chat with response_format json_schema (a small closed object): decoding
                  constrained by xgrammar on both sides; the answer ends when the object does.
                  The service also writes the schema into the prompt as a system block, so
                  raw vLLM gets that same block as a system message: the same prompt.
  tool_call       chat with one function and tool_choice naming it. Raw vLLM refuses a
                  named tool_choice without a --tool-call-parser, and none of its parsers
                  is OpenChat's (OpenChat has no tool format; the service's own is
                  docs/function-calling.md), so raw vLLM gets what the service makes of
                  the request: its tool instructions as a system message, the call's
                  opening (`<tool_call>{"name":"get_weather","arguments":`) as the start
                  of the answer (continue_final_message), and the function's parameter
                  schema as a json_schema response_format: the same prompt and the same
                  constrained decoding of the same arguments.
  long_system     chat with a ~1,500-token system prompt shared by every request and a
                  short question that differs: prefix caching serves the shared part.
  chat_defaults   chat as most clients send it: no sampling fields, so each server samples
                  with its own defaults (raw vLLM: temperature 1, no filter; the service:
                  its general preset). This is where a better default shows.

Everywhere else the sampling is the same (temperature 0.7, top_p 0.95) with a per-request
seed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from openchat.generation.constraints import schema_instruction
from openchat.generation.toolformat import plan_tools

CHAT_TEMPLATE = Path(__file__).resolve().parent / "openchat-chat-template.jinja"
QUESTION = "What are three good reasons to learn a second language?"
SAMPLING = {"temperature": 0.7, "top_p": 0.95}

SCHEMA = {
    "type": "object",
    "properties": {"ok": {"type": "boolean"}, "level": {"enum": ["low", "high"]}},
    "required": ["ok", "level"],
    "additionalProperties": False,
}
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 24},
                           "unit": {"enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
# A support desk's standing instructions, repeated to about 1,500 tokens.
SYSTEM_PROMPT = " ".join([
    "You are the support assistant of a company that sells accounting software to small "
    "businesses. Answer in plain language, name the menu path for every setting you "
    "mention, never promise refunds or delivery dates, and ask for the invoice number "
    "before discussing a payment. When a question is about taxes, say that you are not a "
    "tax adviser and point to the official guidance of the customer's country."] * 18)


Build = Callable[[int, int, bool], dict]  # (seed, max_tokens, stream) -> JSON body


@dataclass(frozen=True)
class Workload:
    name: str
    path: str
    body: Build
    raw_body: Build | None = None  # what raw vLLM gets instead, where it differs

    def request(self, seed: int, max_tokens: int, stream: bool, *, raw: bool) -> dict:
        build = self.raw_body if raw and self.raw_body else self.body
        return build(seed, max_tokens, stream)


def _stream_options(stream: bool) -> dict:
    return {"stream": stream, **({"stream_options": {"include_usage": True}} if stream else {})}


def make_workloads(prompt_ids: list[int], model: str) -> dict[str, Workload]:
    def completion_ids(seed: int, max_tokens: int, stream: bool) -> dict:
        return {"model": model, "prompt": prompt_ids, "max_tokens": max_tokens,
                "ignore_eos": True, "seed": seed, **SAMPLING, **_stream_options(stream)}

    def chat(messages, sampling: dict = SAMPLING, **extra) -> Build:
        def build(seed: int, max_tokens: int, stream: bool) -> dict:
            return {"model": model, "messages": messages(seed) if callable(messages) else messages,
                    "max_tokens": max_tokens, **({**sampling, "seed": seed} if sampling else {}),
                    **extra, **_stream_options(stream)}
        return build

    status_format = {"type": "json_schema",
                     "json_schema": {"name": "status", "schema": SCHEMA, "strict": True}}
    user = [{"role": "user", "content": QUESTION}]
    status = [{"role": "user", "content": "Is the service up? Answer as JSON."}]
    weather = [{"role": "user", "content": "What is the weather in Lisbon?"}]
    # What the service's prompt holds beyond the messages (openchat/generation/preparation.py).
    status_instruction = {"role": "system", "content": schema_instruction(SCHEMA)}
    named = {"type": "function", "function": {"name": "get_weather"}}
    plan = plan_tools([WEATHER_TOOL], named, None)
    tool_instruction = {"role": "system", "content": plan.instruction()}
    call_opening = {"role": "assistant", "content": plan.determined_start()}
    return {w.name: w for w in [
        Workload("completion_ids", "/v1/completions", completion_ids),
        Workload("chat", "/v1/chat/completions", chat(user, ignore_eos=True)),
        Workload("json_schema", "/v1/chat/completions", chat(
            status, response_format=status_format),
            raw_body=chat([status_instruction, *status], response_format=status_format)),
        Workload("tool_call", "/v1/chat/completions", chat(
            weather, tools=[WEATHER_TOOL], tool_choice=named),
            raw_body=chat([tool_instruction, *weather, call_opening],
                          add_generation_prompt=False, continue_final_message=True,
                          response_format={"type": "json_schema", "json_schema": {
                              "name": "get_weather",
                              "schema": WEATHER_TOOL["function"]["parameters"],
                              "strict": True}})),
        Workload("long_system", "/v1/chat/completions", chat(
            lambda seed: [{"role": "system", "content": SYSTEM_PROMPT},
                          {"role": "user", "content": f"Ticket {seed}: {QUESTION}"}],
            ignore_eos=True)),
        Workload("chat_defaults", "/v1/chat/completions", chat(user, {}, ignore_eos=True)),
    ]}


def first_output(event: dict) -> bool:
    """Whether a streamed event carries generated output (text, content or a tool call)."""
    for choice in event.get("choices") or []:
        delta = choice.get("delta") or {}
        if choice.get("text") or delta.get("content") or delta.get("tool_calls"):
            return True
    return False
