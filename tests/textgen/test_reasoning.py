"""The reasoning formats' splitter and the engine's gate, fed whole and piece by piece."""

from __future__ import annotations

import pytest

from llmgateway.textgen.reasoning import reasoning_format, reasoning_format_choices
from llmgateway.textgen.stops import StopMatcher, ThoughtGate

ANSWER = "<think>\nweigh STOP it\n</think>\n\nThe answer STOP."


def pieces(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


@pytest.mark.parametrize("size", [1, 2, 3, 7, 100])
def test_think_splitter(size):
    splitter = reasoning_format("think").splitter()
    out = [splitter.feed(p) for p in pieces(ANSWER, size)] + [splitter.finish()]
    assert "".join(r for r, _ in out) == "weigh STOP it"
    assert "".join(a for _, a in out) == "The answer STOP."


@pytest.mark.parametrize("text", ["Plain answer.", "  <thin and more", "", "<think>unfinished"])
def test_no_or_unfinished_reasoning(text):
    splitter = reasoning_format("think").splitter()
    out = [splitter.feed(p) for p in pieces(text, 1)] + [splitter.finish()]
    reasoning, answer = "".join(r for r, _ in out), "".join(a for _, a in out)
    if text.startswith("<think>"):
        assert (reasoning, answer) == ("unfinished", "")
    else:
        assert (reasoning, answer) == ("", text)


def test_the_registry():
    assert dict(reasoning_format_choices()).keys() == {"none", "think"}
    assert reasoning_format("none").splitter() is None
    with pytest.raises(LookupError):
        reasoning_format("nope")


@pytest.mark.parametrize("size", [1, 4, 100])
def test_gate_holds_stops_off_the_reasoning(size):
    gate, stops = ThoughtGate("<think>", "</think>"), StopMatcher(["STOP"])
    out = ""
    for piece in pieces(ANSWER, size):
        reasoning, answer = gate.push(piece)
        out += reasoning + stops.push(answer)
        if stops.matched:
            break
    assert out == "<think>\nweigh STOP it\n</think>\n\nThe answer "


def test_gate_without_reasoning_applies_stops_from_the_start():
    gate = ThoughtGate("<think>", "</think>")
    assert gate.push("<t") == ("", "")
    assert gate.push("x STOP") == ("", "<tx STOP")
    assert not gate.thinking and not gate.reasoned
