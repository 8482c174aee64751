"""Tools over /v1/chat/completions (checklist items 20, 23-26), in ReAct and Hermes formats."""

from __future__ import annotations

import json

import openai
import pytest

from tests.api.test_openai_conformance import check_chat_stream, raw_stream, user
from tests.api.test_openai_conformance import client as client  # the fixture
from tests.conftest import CHAT_MODEL, V08_MODEL, dev_model_upsert

HERMES_MODEL = "dev-chat-hermes"
ARGS = {"city": "Paris", "unit": "celsius", "note": "naïve 你好 }"}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
            "required": ["city"],
        },
    },
}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}
CALL = user(f"[[tool:get_weather:{json.dumps(ARGS, ensure_ascii=False)}]]")


@pytest.fixture(scope="module")
def hermes_model(model_configs, devtriton, django_db_blocker):
    with django_db_blocker.unblock():
        dev_model_upsert(HERMES_MODEL, devtriton, tool_format="hermes")
    return HERMES_MODEL


@pytest.fixture(params=["react", "react-v08", "hermes"])
def model(request, hermes_model):
    return {"react": CHAT_MODEL, "react-v08": V08_MODEL, "hermes": hermes_model}[request.param]


def streamed_calls(chunks) -> tuple[dict[int, dict], str]:
    """Join streamed tool-call deltas, checking OpenAI's shape (item 24)."""
    calls: dict[int, dict] = {}
    content = ""
    for chunk in chunks:
        for choice in chunk.choices:
            content += choice.delta.content or ""
            for delta in choice.delta.tool_calls or []:
                assert delta.index is not None
                if delta.index not in calls:
                    assert delta.id and delta.type == "function" and delta.function.name
                    assert delta.function.arguments == ""
                    calls[delta.index] = {"id": delta.id, "name": delta.function.name, "args": ""}
                else:
                    assert delta.id is None and delta.function.name is None
                    calls[delta.index]["args"] += delta.function.arguments
    return calls, content


def test_23_non_streamed_tool_call(client, model):
    result = client.chat.completions.create(model=model, messages=CALL, tools=[WEATHER, TIME])
    choice = result.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert not choice.message.content
    (call,) = choice.message.tool_calls
    assert isinstance(call.id, str) and call.id and call.type == "function"
    assert call.function.name == "get_weather"
    assert isinstance(call.function.arguments, str)
    assert json.loads(call.function.arguments) == ARGS


def test_23_tool_calls_on_the_wire(http, model):
    # Non-streamed calls are exactly {id, type, function}: `index` is only for stream deltas.
    body = {"model": model, "messages": CALL, "tools": [WEATHER]}
    response = http.post("/v1/chat/completions", json=body)
    (call,) = response.json()["choices"][0]["message"]["tool_calls"]
    assert set(call) == {"id", "type", "function"}
    assert set(call["function"]) == {"name", "arguments"}
    events = raw_stream(http, "/v1/chat/completions", body)
    deltas = [d for e in events for c in e["choices"] for d in c["delta"].get("tool_calls", [])]
    assert deltas and all(d["index"] == 0 for d in deltas)
    assert set(deltas[0]) == {"index", "id", "type", "function"}


def test_24_streamed_tool_call_matches_non_streamed(client, model):
    args = dict(model=model, messages=CALL, tools=[WEATHER], tool_choice="auto")
    plain = client.chat.completions.create(**args).choices[0].message.tool_calls[0]
    chunks = list(client.chat.completions.create(**args, stream=True))
    assert check_chat_stream(chunks, 1) == {0: "tool_calls"}
    calls, content = streamed_calls(chunks)
    assert content == ""
    assert calls[0]["name"] == plain.function.name
    assert calls[0]["args"] == plain.function.arguments
    assert json.loads(calls[0]["args"]) == ARGS
    fragments = [
        d for c in chunks for ch in c.choices for d in ch.delta.tool_calls or [] if d.id is None
    ]
    assert len(fragments) > 1, "arguments should stream in pieces"


def test_24_streamed_tool_calls_with_n2(client, model):
    chunks = list(
        client.chat.completions.create(
            model=model, messages=CALL, tools=[WEATHER], n=2, stream=True
        )
    )
    finishes = check_chat_stream(chunks, 2)
    assert finishes[0] == "tool_calls"
    # The dev model's second sequence on the recent interface starts "Variant 1: " before
    # the call: Hermes still finds the <tool_call>, ReAct (a call opens the answer) does not.
    assert finishes[1] == ("stop" if model == CHAT_MODEL else "tool_calls")


def test_20_required_and_named_tool_choice(client, model):
    required = client.chat.completions.create(
        model=model, messages=CALL, tools=[WEATHER, TIME], tool_choice="required"
    )
    assert required.choices[0].finish_reason == "tool_calls"
    named = client.chat.completions.create(
        model=model,
        messages=CALL,
        tools=[WEATHER, TIME],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    assert named.choices[0].finish_reason == "stop"
    assert named.choices[0].message.tool_calls[0].function.name == "get_weather"
    chunks = list(
        client.chat.completions.create(
            model=model,
            messages=CALL,
            tools=[WEATHER],
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
            stream=True,
        )
    )
    assert check_chat_stream(chunks, 1) == {0: "stop"}


def test_tool_choice_none_answers_in_text(client, model):
    result = client.chat.completions.create(
        model=model, messages=user("[[say:plain words]]"), tools=[WEATHER], tool_choice="none"
    )
    assert result.choices[0].message.content == "plain words"
    assert result.choices[0].message.tool_calls is None
    assert result.choices[0].finish_reason == "stop"


def test_answer_without_a_call_is_content(client, model):
    args = dict(model=model, messages=user("[[say:  It is sunny.  ]]"), tools=[WEATHER])
    plain = client.chat.completions.create(**args)
    assert plain.choices[0].finish_reason == "stop"
    chunks = list(client.chat.completions.create(**args, stream=True))
    _, content = streamed_calls(chunks)
    assert content == plain.choices[0].message.content
    assert content.strip() == "It is sunny."


@pytest.mark.parametrize("result_content", ["18 degrees", [{"type": "text", "text": "18"}]])
def test_25_round_trip_with_tool_result(client, model, result_content):
    messages = [
        {"role": "user", "content": "What is the weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": json.dumps(ARGS)},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": result_content},
    ]
    result = client.chat.completions.create(model=model, messages=messages, tools=[WEATHER])
    choice = result.choices[0]
    assert choice.finish_reason == "stop"
    assert choice.message.content and choice.message.tool_calls is None
    # A further user turn after the exchange renders too.
    messages += [
        {"role": "assistant", "content": "It is 18 degrees."},
        {"role": "user", "content": "[[say:thanks]]"},
    ]
    again = client.chat.completions.create(model=model, messages=messages, tools=[WEATHER])
    assert again.choices[0].message.content == "thanks"


def test_26_tool_validation(client):
    cases = [
        ({"tools": []}, "tools"),
        ({"tool_choice": {"type": "function", "function": {"name": "get_weather"}}}, "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "x"}}},
            "tool_choice",
        ),
        ({"tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice"),
    ]
    for extra, param in cases:
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(model=CHAT_MODEL, messages=user("hi"), extra_body=extra)
        assert info.value.param == param, extra


def test_legacy_functions(client, model):
    functions = [WEATHER["function"]]
    result = client.chat.completions.create(model=model, messages=CALL, functions=functions)
    choice = result.choices[0]
    assert choice.finish_reason == "function_call"
    assert choice.message.function_call.name == "get_weather"
    assert json.loads(choice.message.function_call.arguments) == ARGS
    chunks = list(
        client.chat.completions.create(model=model, messages=CALL, functions=functions, stream=True)
    )
    assert check_chat_stream(chunks, 1) == {0: "function_call"}
    name, arguments = None, ""
    for chunk in chunks:
        for ch in chunk.choices:
            if ch.delta.function_call:
                name = name or ch.delta.function_call.name
                arguments += ch.delta.function_call.arguments or ""
    assert name == "get_weather" and arguments == choice.message.function_call.arguments
    # The legacy round trip: function_call, then role "function".
    messages = [
        {"role": "user", "content": "weather?"},
        {
            "role": "assistant",
            "content": None,
            "function_call": {"name": "get_weather", "arguments": "{}"},
        },
        {"role": "function", "name": "get_weather", "content": "sunny"},
    ]
    reply = client.chat.completions.create(model=model, messages=messages, functions=functions)
    assert reply.choices[0].finish_reason == "stop" and reply.choices[0].message.content


@pytest.fixture(scope="module")
def template_model(model_configs, devtriton, django_db_blocker):
    with django_db_blocker.unblock():
        dev_model_upsert("dev-chat-template", devtriton, tool_format="template")
    return "dev-chat-template"


def test_template_format_passes_tools_and_history_to_the_template(client, template_model):
    # The demo tokenizer's ChatML template ignores tools; the request must still render.
    messages = [
        {"role": "user", "content": "weather?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": "{}"},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        {"role": "user", "content": "[[say:ok]]"},
    ]
    result = client.chat.completions.create(
        model=template_model, messages=messages, tools=[WEATHER]
    )
    assert result.choices[0].message.content == "ok"


@pytest.mark.parametrize("parallel", [None, True, False])
def test_parallel_tool_calls_false_keeps_the_first_call(client, hermes_model, parallel):
    messages = user(f"[[tool:get_weather:{json.dumps(ARGS)}]] [[tool:get_time:{{}}]]")
    args = {"model": hermes_model, "messages": messages, "tools": [WEATHER, TIME]}
    if parallel is not None:
        args["parallel_tool_calls"] = parallel
    expected = ["get_weather"] if parallel is False else ["get_weather", "get_time"]
    choice = client.chat.completions.create(**args).choices[0]
    assert [call.function.name for call in choice.message.tool_calls] == expected
    assert choice.finish_reason == "tool_calls"
    streamed, _ = streamed_calls(client.chat.completions.create(**args, stream=True))
    assert [call["name"] for call in streamed.values()] == expected
    assert sorted(streamed) == list(range(len(expected)))
