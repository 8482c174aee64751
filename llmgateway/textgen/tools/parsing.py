"""Reading tool calls out of an answer, piece by piece: what every format's parser shares.

A parser's feed() and finish() return events in order: strings are content,
`ToolCallDelta` pieces are tool calls. One incremental parser serves both streamed
and non-streamed answers (a non-streamed answer is fed in one piece, `answer_parse`),
so the two always agree.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(slots=True)
class ToolCallDelta:
    """One piece of a tool call: the first carries id and name, later ones arguments."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


Event = str | ToolCallDelta


def new_call_id() -> str:
    return "call_" + secrets.token_hex(12)


def partial_suffix(buffer: str, marker: str) -> int:
    """Length of the longest suffix of `buffer` that is a proper prefix of `marker`."""
    for size in range(min(len(marker) - 1, len(buffer)), 0, -1):
        if buffer.endswith(marker[:size]):
            return size
    return 0


class JSONValueScanner:
    """Finds where one JSON value ends in text arriving piece by piece."""

    def __init__(self) -> None:
        self.started = False
        self.done = False
        self._literal = False
        self._depth = 0
        self._in_string = False
        self._escape = False

    def feed(self, text: str) -> int:
        """How many characters of `text` belong to the value (all, if not done yet)."""
        for position, char in enumerate(text):
            if not self.started:
                if char.isspace():
                    continue
                self.started = True
                self._literal = char not in '{["'
            if self._literal:
                if char in ",}":
                    self.done = True
                    return position
                continue
            if self._in_string:
                if self._escape:
                    self._escape = False
                elif char == "\\":
                    self._escape = True
                elif char == '"':
                    self._in_string = False
                    if self._depth == 0:
                        self.done = True
                        return position + 1
            elif char == '"':
                self._in_string = True
            elif char in "{[":
                self._depth += 1
            elif char in "}]":
                self._depth -= 1
                if self._depth == 0:
                    self.done = True
                    return position + 1
        return len(text)


class OutputParser:
    """Splits one choice's answer into content and tool calls, incrementally.

    feed() and finish() return events in order: strings are content, ToolCallDelta
    pieces are tool calls. Content that is only whitespace is held until real text
    follows, and dropped when the answer turns out to be a tool call.
    """

    def __init__(self) -> None:
        self.calls = 0
        self._pending_space = ""
        self._buffer = ""

    def feed(self, text: str) -> list[Event]:
        out: list[Event] = []
        self._buffer += text
        while self._step(out):
            pass
        return out

    def _step(self, out: list[Event]) -> bool:
        """Advance the parser's state machine once; True while it may advance again."""
        raise NotImplementedError

    def finish(self) -> list[Event]:
        """The answer ended: what is left of it, as events."""
        out: list[Event] = []
        self._rest(out)
        self._buffer = ""
        self._flush_space(out)
        return out

    def _rest(self, out: list[Event]) -> None:
        """Emit what the buffer holds when the answer ends, as the state reads it."""
        raise NotImplementedError

    def _content(self, text: str, out: list[Event]) -> None:
        """Emit content, holding trailing whitespace until it is known not to end it."""
        if not text:
            return
        text = self._pending_space + text
        body = text.rstrip()
        self._pending_space = text[len(body) :]
        if body:
            out.append(body)

    def _flush_space(self, out: list[Event]) -> None:
        if self._pending_space and not self.calls:
            out.append(self._pending_space)
        self._pending_space = ""

    def _start_call(self, name: str, out: list[Event]) -> None:
        out.append(ToolCallDelta(self.calls, id=new_call_id(), name=name))
        self.calls += 1


class Parser(Protocol):
    """What the shapers use of a parser: a format's, a guided one, or FirstCallOnly."""

    def feed(self, text: str) -> list[Event]: ...

    def finish(self) -> list[Event]: ...


class FirstCallOnly:
    """An answer's events without the tool calls after its first (parallel_tool_calls:
    false); content passes as it is."""

    def __init__(self, inner: Parser) -> None:
        self.inner = inner

    def feed(self, text: str) -> list[Event]:
        return self._first(self.inner.feed(text))

    def finish(self) -> list[Event]:
        return self._first(self.inner.finish())

    @staticmethod
    def _first(events: list[Event]) -> list[Event]:
        return [e for e in events if isinstance(e, str) or e.index == 0]


@dataclass(slots=True)
class ParsedAnswer:
    content: str
    calls: list[ToolCallDelta] = field(default_factory=list)


def answer_parse(parser: Parser, text: str) -> ParsedAnswer:
    """A whole (non-streamed) answer: its content and complete tool calls."""
    answer = ParsedAnswer(content="")
    content: list[str] = []
    for event in parser.feed(text) + parser.finish():
        if isinstance(event, str):
            content.append(event)
        elif event.id is not None:
            answer.calls.append(ToolCallDelta(event.index, event.id, event.name, event.arguments))
        else:
            answer.calls[event.index].arguments += event.arguments
    answer.content = "".join(content)
    return answer
