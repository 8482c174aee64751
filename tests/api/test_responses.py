"""POST /v1/responses with the official openai SDK and on the wire (issue 18)."""

from __future__ import annotations

import json

import openai
import pytest

from tests.api.conftest import HERMES_MODEL
from tests.conftest import CHAT_MODEL

REQUIRED = {
    "id", "object", "created_at", "status", "error", "incomplete_details", "instructions",
    "model", "tools", "output", "parallel_tool_calls", "metadata", "tool_choice",
    "temperature", "top_p", "usage", "store", "text", "previous_response_id", "reasoning",
}  # fmt: skip


def test_text_input(oai):
    response = oai.responses.create(model=CHAT_MODEL, input="[[say:Hello there]]")
    assert response.id.startswith("resp_")
    assert response.status == "completed"
    assert response.output_text == "Hello there"
    (item,) = response.output
    assert item.type == "message" and item.id.startswith("msg_") and item.role == "assistant"
    usage = response.usage
    assert usage.output_tokens > 0 and usage.input_tokens > 0
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert usage.output_tokens_details.reasoning_tokens == 0
    assert response.store is True and response.temperature == 1.0


def test_wire_shape(raw):
    body = {"model": CHAT_MODEL, "input": "[[say:hi]]", "metadata": {"a": "b"}, "user": "u1"}
    data = raw.post("/v1/responses", json=body).json()
    assert set(data) >= REQUIRED, data
    assert data["metadata"] == {"a": "b"} and data["user"] == "u1"
    assert data["text"] == {"format": {"type": "text"}}
    assert data["usage"]["input_tokens_details"] == {"cached_tokens": 0, "cache_write_tokens": 0}


def test_items_and_instructions(oai):
    response = oai.responses.create(
        model=CHAT_MODEL,
        instructions="Be brief.",
        input=[
            {"role": "user", "content": "first"},
            {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "ok", "annotations": []}],
            },
            {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "[[say:second]]"}],
            },
        ],  # fmt: skip
        max_output_tokens=16,
        temperature=0.5,
        top_p=0.9,
    )
    assert response.output_text == "second"
    assert response.instructions == "Be brief." and response.max_output_tokens == 16


def test_max_output_tokens_incomplete(oai):
    response = oai.responses.create(model=CHAT_MODEL, input="[[long:100]]", max_output_tokens=16)
    assert response.status == "incomplete"
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.usage.output_tokens == 16
    assert response.output[0].status == "incomplete"


WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather for a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    },
}


@pytest.mark.parametrize("model", [CHAT_MODEL, HERMES_MODEL])
def test_function_call(oai, model):
    response = oai.responses.create(
        model=model, input='[[tool:get_weather:{"city": "Paris"}]]', tools=[WEATHER]
    )
    calls = [i for i in response.output if i.type == "function_call"]
    (call,) = calls
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Paris"}
    assert call.call_id.startswith("call_") and call.id.startswith("fc_")
    assert response.tools[0].name == "get_weather" and response.tools[0].strict is True
    # The tool's result, sent back with the call as items (what the Agents SDK does).
    followup = oai.responses.create(
        model=model,
        input=[
            {"role": "user", "content": "weather?"},
            {
                "type": "function_call",
                "call_id": call.call_id,
                "name": call.name,
                "arguments": call.arguments,
                "id": call.id,
                "status": "completed",
            },
            {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"},
        ],  # fmt: skip
        tools=[WEATHER],
    )
    assert followup.status == "completed" and followup.output_text


def test_hosted_tool_refused(oai):
    with pytest.raises(openai.BadRequestError) as caught:
        oai.responses.create(model=CHAT_MODEL, input="hi", tools=[{"type": "web_search"}])
    assert caught.value.status_code == 400
    assert "web_search" in caught.value.body["message"]
    assert caught.value.body["param"] == "tools"


@pytest.mark.parametrize(
    "extra, param, code",
    [
        ({"max_output_tokens": 1}, "max_output_tokens", "integer_below_min_value"),
        ({"messages": []}, "messages", "unknown_parameter"),
        ({"background": True}, "background", "unsupported_parameter"),
        ({"include": ["nope"]}, "include[0]", "invalid_value"),
        ({"previous_response_id": "resp_nope"}, "previous_response_id", "previous_response_not_found"),
        ({"input": [{"type": "web_search_call", "id": "x"}]}, "input[0].type", "invalid_value"),
        ({"input": [{"type": "function_call_output", "call_id": "c", "output": "x"}]}, "input", None),
        ({"tool_choice": {"type": "file_search"}}, "tool_choice", None),
        ({"model": "nope"}, "model", "model_not_found"),
    ],
)  # fmt: skip
def test_refusals(raw, extra, param, code):
    body = {"model": CHAT_MODEL, "input": "hi", **extra}
    response = raw.post("/v1/responses", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["code"] == code, error
    assert error["type"] == "invalid_request_error"


def test_json_schema(oai):
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "temp": {"type": "integer"}},
        "required": ["city", "temp"],
        "additionalProperties": False,
    }
    response = oai.responses.create(
        model=CHAT_MODEL,
        input="Weather as JSON",
        text={
            "format": {"type": "json_schema", "name": "weather", "schema": schema, "strict": True}
        },
    )
    data = json.loads(response.output_text)
    assert set(data) == {"city", "temp"} and isinstance(data["temp"], int)
    assert response.text.format.type == "json_schema"


def test_json_object_needs_the_word(raw):
    body = {"model": CHAT_MODEL, "input": "hi", "text": {"format": {"type": "json_object"}}}
    error = raw.post("/v1/responses", json=body).json()["error"]
    assert error["param"] == "input" and "json" in error["message"]


TIME = {"type": "function", "name": "get_time", "parameters": {"type": "object", "properties": {}}}


@pytest.mark.parametrize(
    "tool_choice",
    [
        {"type": "function", "name": "get_weather"},
        "required",
        {"type": "allowed_tools", "mode": "required", "tools": [{"type": "function", "name": "get_weather"}]},
    ],
)  # fmt: skip
def test_forced_calls(oai, tool_choice):
    # No directive: guided decoding (the recent interface) writes the call.
    response = oai.responses.create(
        model=CHAT_MODEL,
        input="What is the weather?",
        tools=[WEATHER, TIME],
        tool_choice=tool_choice,
    )
    calls = [i for i in response.output if i.type == "function_call"]
    assert calls and all(c.name == "get_weather" for c in calls), response.output
    assert "city" in json.loads(calls[0].arguments)


def test_tool_choice_none_and_one_call_only(oai):
    answer = oai.responses.create(
        model=HERMES_MODEL, input="[[say:no tools]]", tools=[WEATHER], tool_choice="none"
    )
    assert [i.type for i in answer.output] == ["message"]
    two = '[[tool:get_weather:{"city": "A"}]][[tool:get_weather:{"city": "B"}]]'
    both = oai.responses.create(model=HERMES_MODEL, input=two, tools=[WEATHER])
    one = oai.responses.create(
        model=HERMES_MODEL, input=two, tools=[WEATHER], parallel_tool_calls=False
    )
    assert [i.type for i in both.output] == ["function_call"] * 2
    assert [i.type for i in one.output] == ["function_call"] and one.parallel_tool_calls is False
