"""The tool-call parsers alone: any split of the text gives what the whole text gives."""

from __future__ import annotations

import json

import pytest

from llmgateway.textgen.tools.formats.hermes import HermesParser
from llmgateway.textgen.tools.formats.react import ReactParser
from llmgateway.textgen.tools.guided import GuidedArgumentsParser, GuidedCallsParser
from llmgateway.textgen.tools.parsing import ToolCallDelta, answer_parse

HERMES_CALL = (
    '<tool_call>\n{"name": "get_weather", "arguments": '
    '{"city": "Par}is", "n": [1, {"a": "\\"]"}], "u": "你好"}}\n</tool_call>'
)
REACT_CALL = 'Thought: I should call get_weather.\nAction: get_weather\nAction Input: {"a": 1}\n'


def fed(parser, text: str, step: int) -> tuple[str, list[tuple[str, str]]]:
    events = []
    for start in range(0, len(text), step):
        events += parser.feed(text[start : start + step])
    events += parser.finish()
    content = "".join(e for e in events if isinstance(e, str))
    calls: dict[int, list[str]] = {}
    for event in events:
        if isinstance(event, ToolCallDelta):
            if event.id is not None:
                assert event.index not in calls and event.arguments == ""
                calls[event.index] = [event.name, ""]
            calls[event.index][1] += event.arguments
    return content, [tuple(c) for c in calls.values()]


CASES = [
    (HermesParser, HERMES_CALL),
    (HermesParser, "Let me check. " + HERMES_CALL + "\n" + HERMES_CALL),
    (HermesParser, 'x <tool_call>{"arguments": {}, "name": "late"}</tool_call>'),
    (HermesParser, "a < b and <tool not a call>  "),
    (HermesParser, "<tool_call> not json"),
    (ReactParser, REACT_CALL),
    (ReactParser, "Thought: I now know the final answer\nFinal Answer: Sunny, 18."),
    (ReactParser, "Plain answer with Action: inside."),
    (ReactParser, "Thou"),
    # Forced calls under guided decoding: arguments alone, or {"name", "arguments"} objects.
    (lambda: GuidedArgumentsParser("get_weather"), '{"city": "Par]}is", "n": [1, 2]}'),
    (lambda: GuidedArgumentsParser("get_weather"), ""),
    (GuidedCallsParser, '{"name": "f", "arguments": {"a": "}]"}}'),
    (
        GuidedCallsParser,
        ' [ {"name": "f", "arguments": {"a": 1}} ,\n{"name": "g", "arguments": {}}]',
    ),
    (GuidedCallsParser, '[{"name": "f", "arguments": {"a": 1}}, {"name": "g", "argu'),  # cut short
    (GuidedCallsParser, '[{"name": "f", "arguments": {}}] {"name": "g", "arguments": {}}'),
    (GuidedCallsParser, '{"name": "f", "arguments": {}} {"name": "g", "arguments": {}}'),
]


@pytest.mark.parametrize("factory, text", CASES)
@pytest.mark.parametrize("step", [1, 2, 3, 5, 1000])
def test_any_split_agrees_with_the_whole(factory, text, step):
    whole = answer_parse(factory(), text)
    content, calls = fed(factory(), text, step)
    assert content == whole.content
    assert calls == [(c.name, c.arguments) for c in whole.calls]


def test_parsed_calls():
    answer = answer_parse(HermesParser(), "Let me check. " + HERMES_CALL + "\n" + HERMES_CALL)
    assert answer.content == "Let me check."
    assert [c.index for c in answer.calls] == [0, 1]
    assert json.loads(answer.calls[0].arguments)["n"] == [1, {"a": '"]'}]
    late = answer_parse(HermesParser(), '<tool_call>{"arguments": {"k": 2}, "name": "late"}')
    assert (late.calls[0].name, json.loads(late.calls[0].arguments)) == ("late", {"k": 2})
    react = answer_parse(ReactParser(), REACT_CALL)
    assert (react.content, react.calls[0].name, react.calls[0].arguments) == (
        "",
        "get_weather",
        '{"a": 1}',
    )
    final = answer_parse(ReactParser(), "Thought: done\nFinal Answer: Sunny.")
    assert final.content == "Sunny." and not final.calls
    cont = answer_parse(ReactParser(continues_thought=True), " I now know\nFinal Answer: 18")
    assert cont.content == "18"


def test_guided_calls():
    named = answer_parse(GuidedArgumentsParser("get_weather"), '{"city": "Paris"}')
    assert named.content == ""
    assert [(c.index, c.name, c.arguments) for c in named.calls] == [
        (0, "get_weather", '{"city": "Paris"}')
    ]
    # Nothing generated (max_tokens reached at once) is still the named call, empty.
    assert [(c.name, c.arguments) for c in answer_parse(GuidedArgumentsParser("f"), "").calls] == [
        ("f", "")
    ]
    text = '[{"name": "f", "arguments": {"a": "你好"}}, {"name": "g", "arguments": {}}]'
    calls = answer_parse(GuidedCallsParser(), text).calls
    assert [(c.index, c.name, json.loads(c.arguments)) for c in calls] == [
        (0, "f", {"a": "你好"}),
        (1, "g", {}),
    ]
    one = answer_parse(GuidedCallsParser(), '{"name": "g", "arguments": {"b": [true]}}').calls
    assert [(c.name, json.loads(c.arguments)) for c in one] == [("g", {"b": [True]})]
    # A call that max_tokens cut short is dropped; the complete ones before it stay.
    cut = answer_parse(GuidedCallsParser(), '[{"name": "f", "arguments": {}}, {"name": "g", "ar')
    assert [c.name for c in cut.calls] == ["f"]
    # Nothing after the array (or the one object) is read as a call.
    after = '[{"name": "f", "arguments": {}}] {"name": "g", "arguments": {}}'
    assert [c.name for c in answer_parse(GuidedCallsParser(), after).calls] == ["f"]
    after = '{"name": "f", "arguments": {}} {"name": "g", "arguments": {}}'
    assert [c.name for c in answer_parse(GuidedCallsParser(), after).calls] == ["f"]


def test_a_guided_call_goes_out_as_soon_as_its_object_closes():
    parser = GuidedCallsParser()
    assert parser.feed('[{"name": "f", "arguments": {"a": 1}') == []
    events = parser.feed("}, {")
    assert [(e.index, e.name) for e in events if e.id] == [(0, "f")]
