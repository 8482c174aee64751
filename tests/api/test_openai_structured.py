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
    response = http.post(
        CHAT,
        json={
            "model": CHAT_MODEL,
            "messages": user("Answer in JSON, please."),
            "response_format": {"type": "json_object"},
            "max_tokens": 200,
        },
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
    error = refused(
        http.post(
            CHAT,
            json={
                "model": V08_MODEL,
                "messages": user("json please"),
                "response_format": {"type": "json_object"},
            },
        )
    )
    assert error["param"] == "response_format"
    assert "guided decoding" in error["message"] and V08_MODEL in error["message"]


def test_text_response_format_is_accepted_everywhere(http):
    response = http.post(
        CHAT,
        json={
            "model": V08_MODEL,
            "messages": user("[[say:ok]]"),
            "response_format": {"type": "text"},
            "max_tokens": 5,
        },
    )
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "ok"


def test_json_mode_needs_the_word_json_in_the_messages(http):
    error = refused(
        http.post(
            CHAT,
            json={
                "model": CHAT_MODEL,
                "messages": user("Give me an object."),
                "response_format": {"type": "json_object"},
            },
        )
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
