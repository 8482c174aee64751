"""Structured outputs: response_format json_object and json_schema, through guided decoding.

The dev model's recent interface has guided_decoding_backend set and stands in for
xgrammar (platform/triton/dev/tensorrt_llm/1/model.py): a scripted answer that fits the
guide comes back as it is, anything else as an instance of the schema. What these tests
check is the gateway's part: the guide it sends Triton, the answers it returns, and
what it refuses.
"""

from __future__ import annotations

import json

import openai
import pytest
from pydantic import BaseModel

from tests.api.test_openai_conformance import client as client  # the fixture
from tests.api.test_openai_conformance import joined_chat, raw_stream, user
from tests.api.test_openai_validation import refused
from tests.conftest import CHAT_MODEL, V08_MODEL

CHAT = "/v1/chat/completions"


class Weather(BaseModel):
    city: str
    temperature_c: int
    sky: str


class Forecast(BaseModel):
    days: list[Weather]
    source: str | None


def chat(http, model: str, content: str, **fields):
    """A raw chat completion request of one user message."""
    return http.post(CHAT, json={"model": model, "messages": user(content), **fields})


def sent_guides(devtriton, request_id: str) -> list[list]:
    """The guides Triton received for a request: [guide type, guide] per Triton request."""
    return [
        event["guide"]
        for event in devtriton.events()
        if event["event"] == "start" and event["request_id"].startswith(request_id)
    ]


def test_parse_with_a_pydantic_model_returns_the_scripted_object(client, devtriton):
    answer = {"city": "Paris", "temperature_c": 21, "sky": "clear 晴れ"}
    completion = client.chat.completions.with_raw_response.parse(
        model=CHAT_MODEL,
        messages=user(f"[[say:{json.dumps(answer, ensure_ascii=False)}]]"),
        response_format=Weather,
        max_tokens=200,
    )
    parsed = completion.parse()
    message = parsed.choices[0].message
    assert message.parsed == Weather(**answer)
    assert parsed.choices[0].finish_reason == "stop"
    # The SDK's strict schema is what Triton was given, as the json_schema guide.
    [(kind, guide)] = sent_guides(devtriton, completion.headers["x-request-id"])
    assert kind == "json_schema"
    schema = json.loads(guide)
    assert schema["properties"].keys() == {"city", "temperature_c", "sky"}
    assert schema["additionalProperties"] is False


def test_an_answer_off_the_schema_is_held_to_it(client):
    """Free text does not fit the schema, so the guide decides every token: the answer
    is an instance of it, nested models and $refs included."""
    completion = client.chat.completions.parse(
        model=CHAT_MODEL,
        messages=user("What is the weather this week?"),
        response_format=Forecast,
        max_tokens=400,
        seed=5,
    )
    forecast = completion.choices[0].message.parsed
    assert isinstance(forecast, Forecast) and forecast.days
    assert completion.usage.completion_tokens > 5


def test_json_mode_answers_an_object_and_sends_an_object_schema(http, devtriton):
    response = chat(
        http,
        CHAT_MODEL,
        "Answer in JSON, please.",
        response_format={"type": "json_object"},
        max_tokens=200,
    )
    assert response.status_code == 200, response.text
    content = response.json()["choices"][0]["message"]["content"]
    assert isinstance(json.loads(content), dict)
    guides = sent_guides(devtriton, response.headers["x-request-id"])
    assert guides == [["json_schema", '{"type": "object"}']]


def test_without_response_format_nothing_is_guided(http, devtriton):
    response = http.post(
        CHAT, json={"model": CHAT_MODEL, "messages": user("[[say:plain]]"), "max_tokens": 20}
    )
    assert response.json()["choices"][0]["message"]["content"] == "plain"
    assert sent_guides(devtriton, response.headers["x-request-id"]) == [None]


@pytest.mark.parametrize("n", [1, 3])
def test_streamed_structured_answer_equals_the_non_streamed_one(client, http, n):
    body = {
        "model": CHAT_MODEL,
        "messages": user("Give me the weather as JSON."),
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "weather", "schema": Weather.model_json_schema()},
        },
        "max_tokens": 200,
        "seed": 11,
        "n": n,
    }
    whole = http.post(CHAT, json=body)
    assert whole.status_code == 200, whole.text
    expected = {c["index"]: c["message"]["content"] for c in whole.json()["choices"]}
    streamed = joined_chat(client.chat.completions.create(**body, stream=True))
    assert streamed == expected
    for content in expected.values():
        Weather.model_validate_json(content)
    chunks = raw_stream(http, CHAT, body)
    assert {c["choices"][0]["finish_reason"] for c in chunks if c["choices"]} >= {"stop"}


def test_a_model_without_guided_decoding_refuses_response_format(http):
    """TensorRT-LLM 0.8 has no guided-decoding inputs: the request is refused before it
    reaches Triton, naming the parameter."""
    error = refused(chat(http, V08_MODEL, "json please", response_format={"type": "json_object"}))
    assert error["param"] == "response_format"
    assert "guided decoding" in error["message"] and V08_MODEL in error["message"]


def test_text_response_format_is_accepted_everywhere(http):
    response = chat(http, V08_MODEL, "[[say:ok]]", response_format={"type": "text"}, max_tokens=5)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "ok"


def test_json_mode_needs_the_word_json_in_the_messages(http):
    error = refused(
        chat(http, CHAT_MODEL, "Give me an object.", response_format={"type": "json_object"})
    )
    assert error == {
        "message": "'messages' must contain the word 'json' in some form, to use "
        "'response_format' of type 'json_object'.",
        "type": "invalid_request_error",
        "param": "messages",
        "code": None,
    }


@pytest.mark.parametrize(
    ("response_format", "param", "code", "message"),
    [
        (
            {"type": "xml"},
            "response_format.type",
            "invalid_value",
            "Invalid value: 'xml'. Supported values are: 'text', 'json_object', and 'json_schema'.",
        ),
        (
            {"type": "json_schema"},
            "response_format.json_schema",
            "missing_required_parameter",
            "Missing required parameter: 'response_format.json_schema'.",
        ),
        (
            {"type": "json_schema", "json_schema": {"schema": {"type": "object"}}},
            "response_format.json_schema.name",
            "missing_required_parameter",
            "Missing required parameter: 'response_format.json_schema.name'.",
        ),
        (
            {"type": "json_schema", "json_schema": {"name": "w", "schema": []}},
            "response_format.json_schema.schema",
            "invalid_type",
            "Invalid type for 'response_format.json_schema.schema': expected an object, but "
            "got an array instead.",
        ),
    ],
)
def test_a_malformed_response_format_is_refused(http, response_format, param, code, message):
    body = {"model": CHAT_MODEL, "messages": user("json"), "response_format": response_format}
    error = refused(http.post(CHAT, json=body))
    assert (error["param"], error["code"], error["message"]) == (param, code, message)


def test_a_schema_name_outside_openais_pattern_is_refused(http):
    body = {
        "model": CHAT_MODEL,
        "messages": user("json"),
        "response_format": {"type": "json_schema", "json_schema": {"name": "my schema"}},
    }
    assert refused(http.post(CHAT, json=body))["param"] == "response_format.json_schema.name"


WEATHER_TOOL = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object"}},
}


def test_response_format_with_tools_is_refused_unless_tools_are_off(http):
    body = {
        "model": CHAT_MODEL,
        "messages": user("[[say:{}]] json"),
        "response_format": {"type": "json_object"},
        "tools": [WEATHER_TOOL],
        "max_tokens": 20,
    }
    assert refused(http.post(CHAT, json=body))["param"] == "response_format"
    response = http.post(CHAT, json={**body, "tool_choice": "none"})
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "{}"


def test_the_sdk_surfaces_a_refusal_as_bad_request(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.parse(
            model=V08_MODEL, messages=user("json"), response_format=Weather
        )
    assert caught.value.body["param"] == "response_format"


# ---- forced tool calls: tool_choice required or named, held to the tools' schemas ------

CITY = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
    "required": ["city"],
    "additionalProperties": False,
}
FORECAST_TOOL = {"type": "function", "function": {"name": "forecast", "parameters": CITY}}
CLOCK_TOOL = {"type": "function", "function": {"name": "clock"}}  # no parameters
NAMED = {"type": "function", "function": {"name": "forecast"}}


def forced(client, devtriton, **fields):
    raw = client.chat.completions.with_raw_response.create(
        model=CHAT_MODEL, tools=[FORECAST_TOOL, CLOCK_TOOL], max_tokens=300, **fields
    )
    return raw.parse(), sent_guides(devtriton, raw.headers["x-request-id"])


def test_a_named_call_is_its_functions_arguments_held_to_their_schema(client, devtriton):
    answer = '{"city": "Zürich", "days": 3}'
    completion, guides = forced(
        client, devtriton, messages=user(f"[[say:{answer}]]"), tool_choice=NAMED
    )
    assert guides == [["json_schema", json.dumps(CITY, separators=(",", ":"))]]
    choice = completion.choices[0]
    assert choice.finish_reason == "stop"  # OpenAI's reason for a named tool_choice
    assert choice.message.content is None
    [call] = choice.message.tool_calls
    assert (call.function.name, call.function.arguments) == ("forecast", answer)
    # Free text cannot come out: the arguments fit the schema whatever the model says.
    completion, _ = forced(client, devtriton, messages=user("hello"), tool_choice=NAMED)
    arguments = json.loads(completion.choices[0].message.tool_calls[0].function.arguments)
    assert set(arguments) <= {"city", "days"} and isinstance(arguments["city"], str)


def test_a_streamed_named_call_joins_to_the_non_streamed_one(client):
    from tests.api.test_openai_tools import streamed_calls

    body = dict(
        model=CHAT_MODEL,
        messages=user('[[say:{"city": "東京", "days": 2}]]'),
        tools=[FORECAST_TOOL],
        tool_choice=NAMED,
    )
    whole = client.chat.completions.create(**body).choices[0].message.tool_calls[0]
    calls, content = streamed_calls(client.chat.completions.create(**body, stream=True))
    assert content == ""
    assert [(c["name"], c["args"]) for c in calls.values()] == [
        (whole.function.name, whole.function.arguments)
    ]


def test_required_calls_are_an_array_of_calls_of_the_offered_functions(client, devtriton):
    calls = [
        {"name": "clock", "arguments": {}},
        {"name": "forecast", "arguments": {"city": "Oslo"}},
    ]
    completion, [(kind, guide)] = forced(
        client, devtriton, messages=user(f"[[say:{json.dumps(calls)} ]]"), tool_choice="required"
    )
    schema = json.loads(guide)
    assert kind == "json_schema" and schema["type"] == "array" and schema["minItems"] == 1
    assert [item["properties"]["name"] for item in schema["items"]["anyOf"]] == [
        {"enum": ["forecast"]},
        {"enum": ["clock"]},
    ]
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    got = [(c.function.name, json.loads(c.function.arguments)) for c in choice.message.tool_calls]
    assert got == [(c["name"], c["arguments"]) for c in calls]
    assert len({c.id for c in choice.message.tool_calls}) == 2


def test_required_without_parallel_calls_is_one_call(client, devtriton):
    completion, [(_, guide)] = forced(
        client,
        devtriton,
        messages=user("anything"),
        tool_choice="required",
        parallel_tool_calls=False,
    )
    schema = json.loads(guide)
    assert "anyOf" in schema and "items" not in schema  # one call object, not an array
    [call] = completion.choices[0].message.tool_calls
    assert call.function.name == "forecast"  # the dev model's instance: the first function
    assert isinstance(json.loads(call.function.arguments)["city"], str)


def test_streamed_required_calls_join_to_the_non_streamed_ones(client):
    from tests.api.test_openai_tools import streamed_calls

    body = dict(
        model=CHAT_MODEL,
        messages=user("call both"),
        tools=[FORECAST_TOOL, CLOCK_TOOL],
        tool_choice="required",
        seed=4,
    )
    whole = client.chat.completions.create(**body).choices[0].message.tool_calls
    calls, content = streamed_calls(client.chat.completions.create(**body, stream=True))
    assert content == ""
    assert [(c["name"], c["args"]) for c in calls.values()] == [
        (c.function.name, c.function.arguments) for c in whole
    ]


def test_a_named_legacy_function_call_is_guided_too(client, devtriton):
    raw = client.chat.completions.with_raw_response.create(
        model=CHAT_MODEL,
        messages=user('[[say:{"city": "Lima"}]]'),
        functions=[FORECAST_TOOL["function"]],
        function_call={"name": "forecast"},
    )
    message = raw.parse().choices[0].message
    assert (message.function_call.name, message.function_call.arguments) == (
        "forecast",
        '{"city": "Lima"}',
    )
    assert sent_guides(devtriton, raw.headers["x-request-id"])[0][0] == "json_schema"


def test_auto_tool_choice_and_models_without_guides_are_not_guided(client, devtriton):
    """auto leaves the choice to the model, so nothing is forced; TensorRT-LLM 0.8 has
    no guided decoding, so a forced call is asked for in the prompt alone."""
    raw = client.chat.completions.with_raw_response.create(
        model=CHAT_MODEL, messages=user("hi"), tools=[FORECAST_TOOL], max_tokens=5
    )
    assert sent_guides(devtriton, raw.headers["x-request-id"]) == [None]
    raw = client.chat.completions.with_raw_response.create(
        model=V08_MODEL,
        messages=user('[[tool:forecast:{"city": "Rome"}]]'),
        tools=[FORECAST_TOOL],
        tool_choice=NAMED,
    )
    assert sent_guides(devtriton, raw.headers["x-request-id"]) == [None]
    call = raw.parse().choices[0].message.tool_calls[0]
    assert json.loads(call.function.arguments) == {"city": "Rome"}


def test_a_schema_over_the_size_limit_is_refused(http, settings):
    schema = {"type": "object", "description": "x" * settings.GUIDED_DECODING_MAX_SCHEMA_BYTES}
    error = refused(
        chat(
            http,
            CHAT_MODEL,
            "json",
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "big", "schema": schema},
            },
        )
    )
    assert error["param"] == "response_format.json_schema.schema"
    assert str(settings.GUIDED_DECODING_MAX_SCHEMA_BYTES) in error["message"]


def test_tools_over_the_size_limit_are_called_unguided(tmp_path, devtriton, owner_key):
    """Too large a guide for a forced call: the call is asked for in the prompt alone, and
    read back in the model's format, as on a model without guided decoding."""
    from tests.conftest import start_gateway, stop_gateway

    gateway = start_gateway(
        tmp_path, {"GUIDED_DECODING_MAX_SCHEMA_BYTES": "400"}, api_key=owner_key
    )
    try:
        with gateway.client() as http:
            for parameters, guided in ((CITY, True), ({**CITY, "description": "z" * 400}, False)):
                tool = {
                    "type": "function",
                    "function": {"name": "forecast", "parameters": parameters},
                }
                body = {
                    "model": CHAT_MODEL,
                    "messages": user('[[tool:forecast:{"city": "Rome"}]]'),
                    "tools": [tool],
                    "tool_choice": NAMED,
                }
                response = http.post(CHAT, json=body)
                assert response.status_code == 200, response.text
                guides = sent_guides(devtriton, response.headers["x-request-id"])
                assert (guides != [None]) is guided
                [call] = response.json()["choices"][0]["message"]["tool_calls"]
                assert call["function"]["name"] == "forecast"
                if not guided:  # the dev model's scripted call, read in its ReAct format
                    assert json.loads(call["function"]["arguments"]) == {"city": "Rome"}
    finally:
        stop_gateway(gateway)


def nested_schema(levels: int) -> dict:
    schema: dict = {"type": "object"}
    inner = schema
    for _ in range(levels):
        inner["properties"] = {"a": {"type": "object"}}
        inner = inner["properties"]["a"]
    return schema


@pytest.mark.parametrize("levels", [130, 300])
@pytest.mark.parametrize("where", ["response_format", "required tools", "auto tools"])
def test_a_schema_nested_too_deeply_is_a_400_not_a_500(http, levels, where):
    """JSON nests up to 1,024 levels before the body parser refuses it; serialising a
    guide or rendering tools gives up far sooner. That is the request's fault: a 400."""
    schema = nested_schema(levels)
    tools = [{"type": "function", "function": {"name": "f", "parameters": schema}}]
    fields = {
        "response_format": {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": schema},
            }
        },
        "required tools": {"tools": tools, "tool_choice": "required"},
        "auto tools": {"tools": tools},
    }[where]
    response = chat(http, CHAT_MODEL, "json", max_tokens=5, **fields)
    if where == "auto tools" and levels == 130:
        assert response.status_code == 200, response.text  # not guided, rendered fine
    else:
        assert "nests too deeply" in refused(response)["message"]
