"""Reasoning apart from the answer on a model with the <think> parser (issue 18): chat's
reasoning_content, Responses' reasoning items, reasoning tokens counted, and stop strings
and tool calls applied to the answer only."""

from __future__ import annotations

import json

from tests.api.conftest import THINK_MODEL
from tests.api.test_openai_conformance import TOK
from tests.api.test_responses import WEATHER
from tests.api.test_responses_stream import REASONING_ITEM, TEXT_ITEM, check_sequence, stream
from tests.conftest import CHAT_MODEL

THOUGHT = "First I weigh it. STOP is just a word here."
PROMPT = f"[[think:{THOUGHT}]][[say:The answer is 42. STOP here.]]"


def tokens(text: str) -> int:
    """Tokens the dev model generates for text it writes one character at a time."""
    return sum(len(TOK.encode(char).ids) for char in text)


REASONING_TOKENS = tokens(f"<think>\n{THOUGHT}\n</think>")


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def test_chat(oai):
    result = oai.chat.completions.create(model=THINK_MODEL, messages=user(PROMPT), stop=["STOP"])
    message = result.choices[0].message
    assert message.reasoning_content == THOUGHT  # the stop string inside did not cut it
    assert message.content == "The answer is 42. "
    assert result.choices[0].finish_reason == "stop"
    assert result.usage.completion_tokens_details.reasoning_tokens == REASONING_TOKENS
    assert result.usage.completion_tokens > REASONING_TOKENS


def test_chat_streamed(oai):
    chunks = list(
        oai.chat.completions.create(
            model=THINK_MODEL,
            messages=user(PROMPT),
            stop=["STOP"],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    reasoning = "".join(getattr(d, "reasoning_content", None) or "" for d in deltas)
    content = "".join(d.content or "" for d in deltas)
    assert (reasoning, content) == (THOUGHT, "The answer is 42. ")
    # All the reasoning comes before any of the answer.
    first_content = next(i for i, d in enumerate(deltas) if d.content)
    assert not any(getattr(d, "reasoning_content", None) for d in deltas[first_content:])
    assert chunks[-1].usage.completion_tokens_details.reasoning_tokens == REASONING_TOKENS


def test_a_model_without_the_parser_keeps_it_in_content(oai):
    result = oai.chat.completions.create(model=CHAT_MODEL, messages=user(PROMPT))
    message = result.choices[0].message
    assert message.content.startswith("<think>") and "STOP" in message.content
    assert getattr(message, "reasoning_content", None) is None
    assert result.usage.completion_tokens_details is None


def test_responses(oai):
    response = oai.responses.create(model=THINK_MODEL, input=PROMPT, reasoning={"summary": "auto"})
    reasoning, message = response.output
    assert reasoning.type == "reasoning" and reasoning.id.startswith("rs_")
    assert reasoning.content[0].type == "reasoning_text" and reasoning.content[0].text == THOUGHT
    assert reasoning.summary[0].text == THOUGHT
    assert response.output_text == "The answer is 42. STOP here."
    assert response.usage.output_tokens_details.reasoning_tokens == REASONING_TOKENS
    plain = oai.responses.create(model=THINK_MODEL, input=PROMPT)
    assert plain.output[0].summary == []


def test_responses_streamed(raw):
    events = stream(raw, model=THINK_MODEL, input=PROMPT)
    check_sequence(events, [REASONING_ITEM, TEXT_ITEM], "response.completed")
    reasoning = "".join(e["delta"] for e in events if e["type"] == "response.reasoning_text.delta")
    assert reasoning == THOUGHT
    final = events[-1]["response"]
    assert final["usage"]["output_tokens_details"]["reasoning_tokens"] == REASONING_TOKENS


def test_a_call_after_thinking_and_none_inside_it(oai):
    fake = '<tool_call>{"name": "get_weather", "arguments": {"city": "Nowhere"}}</tool_call>'
    thought_call = oai.responses.create(
        model=THINK_MODEL, input=f"[[think:What if {fake}]][[say:No call.]]", tools=[WEATHER]
    )
    assert [i.type for i in thought_call.output] == ["reasoning", "message"]
    assert thought_call.output_text == "No call."
    called = oai.responses.create(
        model=THINK_MODEL,
        input='[[think:I need the weather.]][[tool:get_weather:{"city": "Bern"}]]',
        tools=[WEATHER],
    )
    assert [i.type for i in called.output] == ["reasoning", "function_call"]
    assert json.loads(called.output[1].arguments) == {"city": "Bern"}


def test_logprobs_are_refused_on_a_reasoning_model(raw):
    body = {"model": THINK_MODEL, "input": PROMPT, "include": ["message.output_text.logprobs"]}
    response = raw.post("/v1/responses", json=body)
    assert response.status_code == 400 and response.json()["error"]["param"] == "include"
