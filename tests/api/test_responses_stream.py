"""Streamed /v1/responses: OpenAI's event sequence, checked event by event, and the
joined stream equal to the non-streamed response (issue 18)."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.api.conftest import HERMES_MODEL
from tests.api.test_responses import WEATHER
from tests.conftest import CHAT_MODEL

TEXT_ITEM = [
    "response.output_item.added",
    "response.content_part.added",
    "response.output_text.delta*",
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
]
CALL_ITEM = [
    "response.output_item.added",
    "response.function_call_arguments.delta*",
    "response.function_call_arguments.done",
    "response.output_item.done",
]
REASONING_ITEM = [
    "response.output_item.added",
    "response.content_part.added",
    "response.reasoning_text.delta*",
    "response.reasoning_text.done",
    "response.content_part.done",
    "response.output_item.done",
]


def sse_events(response: httpx.Response) -> list[dict]:
    """The stream's events, each `event:` line checked against its data's type."""
    events, name = [], None
    for line in response.iter_lines():
        if line.startswith("event: "):
            name = line[len("event: ") :]
        elif line.startswith("data: "):
            data = json.loads(line[len("data: ") :])
            assert data["type"] == name, (name, data)
            events.append(data)
    return events


def check_sequence(events: list[dict], item_patterns: list[list[str]], terminal: str) -> None:
    """`events` are exactly created, in_progress, each item's pattern (a `*` event repeats
    zero or more times), then `terminal`; sequence numbers run 0, 1, 2, ..."""
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    types = [e["type"] for e in events]
    assert types[:2] == ["response.created", "response.in_progress"]
    assert events[0]["response"]["usage"] is None and events[0]["response"]["output"] == []
    assert types[-1] == terminal
    position = 2
    for index, pattern in enumerate(item_patterns):
        item_id = None
        for step in pattern:
            repeat = step.endswith("*")
            name = step.rstrip("*")
            while position < len(types) - 1 and types[position] == name:
                event = events[position]
                assert event["output_index"] == index, event
                if "item" in event:
                    item_id = item_id or event["item"]["id"]
                    assert event["item"]["id"] == item_id
                else:
                    assert event["item_id"] == item_id, event
                position += 1
                if not repeat:
                    break
            else:
                assert repeat, f"expected {name} at {position}: {types[position:]}"
    assert position == len(types) - 1, types[position:]
    assert len(events[-1]["response"]["output"]) == len(item_patterns)


def stream(raw, **body) -> list[dict]:
    with raw.stream("POST", "/v1/responses", json={**body, "stream": True}) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        return sse_events(response)


def test_text_sequence(raw):
    events = stream(raw, model=CHAT_MODEL, input="[[say:Hello, world]]")
    check_sequence(events, [TEXT_ITEM], "response.completed")
    deltas = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert deltas == "Hello, world"
    final = events[-1]["response"]
    assert final["status"] == "completed" and final["usage"]["output_tokens"] > 0
    assert final["output"][0]["content"][0]["text"] == "Hello, world"


def test_incomplete_sequence(raw):
    events = stream(raw, model=CHAT_MODEL, input="[[long:50]]", max_output_tokens=16)
    check_sequence(events, [TEXT_ITEM], "response.incomplete")
    final = events[-1]["response"]
    assert final["incomplete_details"] == {"reason": "max_output_tokens"}
    assert final["output"][0]["status"] == "incomplete"


@pytest.mark.parametrize("model", [CHAT_MODEL, HERMES_MODEL])
def test_call_sequence(raw, model):
    events = stream(
        raw, model=model, input='[[tool:get_weather:{"city": "Oslo"}]]', tools=[WEATHER]
    )
    check_sequence(events, [CALL_ITEM], "response.completed")
    added = events[2]["item"]
    assert added["type"] == "function_call" and added["arguments"] == ""
    assert added["call_id"] and added["name"] == "get_weather"
    done = next(e for e in events if e["type"] == "response.function_call_arguments.done")
    assert json.loads(done["arguments"]) == {"city": "Oslo"} and done["name"] == "get_weather"
    joined = "".join(
        e["delta"] for e in events if e["type"] == "response.function_call_arguments.delta"
    )
    assert joined == done["arguments"]


def test_failed_sequence(raw):
    events = stream(raw, model=CHAT_MODEL, input="[[long:20]][[error:3]]")
    assert events[-1]["type"] == "response.failed"
    assert events[-1]["response"]["status"] == "failed"
    assert events[-1]["response"]["error"]["code"] == "server_error"
    assert [e["sequence_number"] for e in events] == list(range(len(events)))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"input": "[[say:Joined stream, same answer]]"},
        {"input": '[[tool:get_weather:{"city": "Rome"}]]', "tools": [WEATHER]},
        {"input": "[[long:40]]", "max_output_tokens": 20},
    ],
)
def test_sdk_stream_equals_create(oai, kwargs):
    with oai.responses.stream(model=HERMES_MODEL, **kwargs) as events:
        types = [event.type for event in events]
        streamed = events.get_final_response() if types[-1] == "response.completed" else None
    assert types[0] == "response.created" and types[1] == "response.in_progress"
    created = oai.responses.create(model=HERMES_MODEL, **kwargs)
    if streamed is None:  # incomplete: the helper has no final response to give
        assert types[-1] == "response.incomplete" and created.status == "incomplete"
        return
    assert streamed.output_text == created.output_text
    assert [i.type for i in streamed.output] == [i.type for i in created.output]
    for a, b in zip(streamed.output, created.output, strict=True):
        if a.type == "function_call":
            assert (a.name, a.arguments) == (b.name, b.arguments)
    assert streamed.usage.output_tokens == created.usage.output_tokens
    assert streamed.usage.input_tokens == created.usage.input_tokens


def test_logprobs_when_included(raw, oai):
    include = ["message.output_text.logprobs"]
    events = stream(raw, model=CHAT_MODEL, input="[[say:Hi you]]", include=include)
    deltas = [e for e in events if e["type"] == "response.output_text.delta"]
    streamed = [entry for e in deltas for entry in e["logprobs"]]
    assert "".join(e["token"] for e in streamed) == "Hi you"
    assert all(e["logprob"] < 0 and e["top_logprobs"] == [] for e in streamed)
    assert bytes(b for e in streamed for b in e["bytes"]) == b"Hi you"
    done = next(e for e in events if e["type"] == "response.output_text.done")
    assert done["logprobs"] == streamed
    created = oai.responses.create(model=CHAT_MODEL, input="[[say:Hi you]]", include=include)
    assert [lp.model_dump() for lp in created.output[0].content[0].logprobs] == streamed
    plain = oai.responses.create(model=CHAT_MODEL, input="[[say:Hi you]]")
    assert plain.output[0].content[0].logprobs == []
