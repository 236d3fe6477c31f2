"""End to end: the Responses API as the clients that speak it by default use it, the OpenAI
Agents SDK (its default model is the Responses one) and LangChain's ChatOpenAI with
`use_responses_api=True`, against the real engine."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated

import jsonschema
import pytest
from pydantic import BaseModel, Field

from tests.conftest import ADMIN_KEY

pytestmark = pytest.mark.e2e

MODEL = "openchat-3.5"
CITY_SCHEMA = {"type": "object", "additionalProperties": False, "required": ["city"],
               "properties": {"city": {"type": "string", "maxLength": 12}}}


class Person(BaseModel):
    name: str = Field(max_length=8)
    age: int


@pytest.fixture(scope="module")
def run_agent(base_url):
    """Run an Agents SDK agent on its default (Responses) model, pointed at the service as
    its docs say to for another provider; each run gets a client of its own event loop."""
    import agents
    from openai import AsyncOpenAI

    agents.set_tracing_disabled(True)  # no trace export: there is no network here
    agents.set_default_openai_api("responses")

    def run(agent, prompt: str, *, streamed: bool = False, max_turns: int = 2):
        async def main():
            client = AsyncOpenAI(base_url=f"{base_url}/v1", api_key=ADMIN_KEY, max_retries=0)
            agents.set_default_openai_client(client, use_for_tracing=False)
            try:
                if not streamed:
                    return await agents.Runner.run(agent, prompt, max_turns=max_turns), []
                result = agents.Runner.run_streamed(agent, prompt, max_turns=max_turns)
                events = [event async for event in result.stream_events()]
                return result, events
            finally:
                await client.close()
        return asyncio.run(main())
    return run


def test_agents_sdk_agent_calls_a_function_tool_to_completion(run_agent):
    import agents

    seen: list[str] = []

    @agents.function_tool  # a bounded city: the call always ends within max_tokens
    def get_weather(city: Annotated[str, Field(max_length=12)]) -> str:
        """Weather now in a city."""
        seen.append(city)
        return f"Sunny in {city}"

    agent = agents.Agent(
        name="weather", instructions="Answer with the weather tool.", model=MODEL,
        tools=[get_weather], tool_use_behavior="stop_on_first_tool",
        model_settings=agents.ModelSettings(tool_choice="required", max_tokens=300,
                                            parallel_tool_calls=False))
    result, _ = run_agent(agent, "Weather in Paris?")
    assert len(seen) == 1  # the SDK parsed our function_call item and ran its tool
    assert result.final_output == f"Sunny in {seen[0]}"
    (call,) = [item.raw_item for item in result.new_items if item.type == "tool_call_item"]
    assert call.type == "function_call" and call.name == "get_weather"
    assert json.loads(call.arguments) == {"city": seen[0]}
    assert result.raw_responses[0].response_id.startswith("resp_")


def test_agents_sdk_structured_output_whole_and_streamed(run_agent):
    import agents

    # JSON output ends when the object closes, so even the dev model finishes its turn
    # (the SDK treats response.incomplete as a failure, as it does with OpenAI).
    agent = agents.Agent(name="people", model=MODEL, output_type=Person,
                         model_settings=agents.ModelSettings(max_tokens=300))
    result, _ = run_agent(agent, "Make up a person.")
    assert isinstance(result.final_output, Person)
    assert result.context_wrapper.usage.output_tokens > 0

    streamed, events = run_agent(agent, "Make up a person.", streamed=True)
    deltas = "".join(event.data.delta for event in events
                     if event.type == "raw_response_event"
                     and event.data.type == "response.output_text.delta")
    assert isinstance(streamed.final_output, Person)
    assert Person.model_validate_json(deltas) == streamed.final_output


def langchain_model(base_url: str, max_tokens: int):
    from langchain_openai import ChatOpenAI

    return ChatOpenAI(model=MODEL, base_url=f"{base_url}/v1", api_key=ADMIN_KEY,
                      use_responses_api=True, max_retries=0, timeout=120,
                      max_tokens=max_tokens)


@pytest.fixture(scope="module")
def chat_model(base_url):
    return langchain_model(base_url, max_tokens=8)


def test_langchain_invoke_and_stream(chat_model):
    message = chat_model.invoke("Hi")
    assert message.text and message.response_metadata["id"].startswith("resp_")
    assert message.usage_metadata["output_tokens"] == 8
    assert message.usage_metadata["input_tokens"] == 17  # OpenChat's prompt for "Hi"

    chunks = list(chat_model.stream("Hi"))
    streamed = chunks[0]
    for chunk in chunks[1:]:
        streamed += chunk
    assert streamed.text and streamed.usage_metadata["output_tokens"] == 8


class get_weather(BaseModel):  # noqa: N801 - LangChain names the tool after the class
    """Weather now in a city."""

    city: str = Field(max_length=12)


def test_langchain_bind_tools_gives_schema_valid_tool_calls(base_url):
    # One call (parallel off) of a bounded string always ends within 300 tokens.
    bound = langchain_model(base_url, max_tokens=300).bind_tools(
        [get_weather], tool_choice="get_weather", strict=True, parallel_tool_calls=False)
    message = bound.invoke("Weather in Paris?")
    assert not message.invalid_tool_calls
    (call,) = message.tool_calls
    assert call["name"] == "get_weather" and call["id"].startswith("call_")
    jsonschema.validate(call["args"], CITY_SCHEMA)
