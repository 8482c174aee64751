"""Real clients of /v1/responses (issue 18): the openai SDK's parse(), the OpenAI Agents SDK
running an agent that calls a function tool, and LangChain's ChatOpenAI with
use_responses_api=True. The dev model's [[tool:...]] directive drives the calls."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import BaseModel

from tests.api.conftest import HERMES_MODEL, THINK_MODEL
from tests.conftest import CHAT_MODEL

CALL = '[[tool:get_weather:{"city": "Paris"}]]'


class Weather(BaseModel):
    city: str
    temperature: int


def test_sdk_parse(oai):
    parsed = oai.responses.parse(
        model=CHAT_MODEL, input="The weather, as JSON.", text_format=Weather
    )
    assert isinstance(parsed.output_parsed, Weather)
    assert parsed.text.format.type == "json_schema" and parsed.text.format.name == "Weather"


# ---- the OpenAI Agents SDK ----------------------------------------------------------------


def _agent(gateway, model: str = HERMES_MODEL):
    agents = pytest.importorskip("agents")
    from openai import AsyncOpenAI

    agents.set_tracing_disabled(True)

    @agents.function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        return f"sunny in {city}"

    client = AsyncOpenAI(base_url=gateway.url + "/v1", api_key=gateway.api_key, max_retries=0)
    model = agents.OpenAIResponsesModel(model=model, openai_client=client)
    return agents, agents.Agent(
        name="weather", instructions="Be brief.", tools=[get_weather], model=model
    )


def test_agents_sdk_calls_a_tool_and_answers(storing_gateway):
    agents, agent = _agent(storing_gateway)
    result = agents.Runner.run_sync(agent, CALL)
    kinds = [item.type for item in result.new_items]
    assert kinds == ["tool_call_item", "tool_call_output_item", "message_output_item"]
    assert result.new_items[1].output == "sunny in Paris"
    # The tool's result reached the model: the dev model repeats its last turn.
    assert "sunny in Paris" in result.final_output
    assert all(r.usage.output_tokens > 0 for r in result.raw_responses)


def test_agents_sdk_replays_reasoning_items(storing_gateway):
    # The second turn sends the first's reasoning item back; it is kept, not shown.
    agents, agent = _agent(storing_gateway, THINK_MODEL)
    result = agents.Runner.run_sync(agent, "[[think:I should look it up.]]" + CALL)
    kinds = [item.type for item in result.new_items]
    assert kinds == [
        "reasoning_item",
        "tool_call_item",
        "tool_call_output_item",
        "message_output_item",
    ]
    assert "sunny in Paris" in result.final_output


def test_agents_sdk_streamed(storing_gateway):
    agents, agent = _agent(storing_gateway)

    async def run():
        result = agents.Runner.run_streamed(agent, CALL)
        kinds = [event.type async for event in result.stream_events()]
        return result, kinds

    result, kinds = asyncio.run(run())
    assert "raw_response_event" in kinds and "run_item_stream_event" in kinds
    assert "sunny in Paris" in result.final_output


# ---- LangChain ----------------------------------------------------------------------------


def _chat(gateway, **kwargs):
    langchain_openai = pytest.importorskip("langchain_openai")
    return langchain_openai.ChatOpenAI(
        model=HERMES_MODEL,
        base_url=gateway.url + "/v1",
        api_key=gateway.api_key,
        use_responses_api=True,
        max_retries=0,
        **kwargs,
    )


def test_langchain_invoke_and_stream(storing_gateway):
    llm = _chat(storing_gateway)
    message = llm.invoke("[[say:Hello from LangChain]]")
    assert message.text == "Hello from LangChain"
    assert message.response_metadata["id"].startswith("resp_")
    assert message.usage_metadata["output_tokens"] > 0
    chunks = list(llm.stream("[[say:Streamed, piece by piece]]"))
    assert len(chunks) > 2
    joined = chunks[0]
    for chunk in chunks[1:]:
        joined += chunk
    assert joined.text == "Streamed, piece by piece"
    assert joined.usage_metadata["output_tokens"] > 0


def test_langchain_tools_and_previous_response_id(storing_gateway):
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_core.tools import tool

    @tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        return f"sunny in {city}"

    llm = _chat(storing_gateway, use_previous_response_id=True).bind_tools([get_weather])
    asked = HumanMessage(CALL)
    called = llm.invoke([asked])
    (call,) = called.tool_calls
    assert call["name"] == "get_weather" and call["args"] == {"city": "Paris"}
    result = ToolMessage(get_weather.invoke(call["args"]), tool_call_id=call["id"])
    answer = llm.invoke([asked, called, result])
    assert "sunny in Paris" in answer.text


def test_langchain_structured_output(storing_gateway):
    llm = _chat(storing_gateway).with_structured_output(Weather)
    assert isinstance(llm.invoke("The weather, as JSON."), Weather)
