"""Calls guided decoding wrote (a forced call on a model that guides decoding): JSON the
grammar held to the function's parameters, read the same whatever the model's format."""

from __future__ import annotations

import json

from llmgateway.textgen.tools.parsing import Event, JSONValueScanner, ToolCallDelta, new_call_id


class GuidedArgumentsParser:
    """A named call whose arguments are the whole answer (guided decoding held it to
    the function's parameters): the call opens with the first text, which streams on
    as its arguments."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.calls = 0

    def feed(self, text: str) -> list[Event]:
        out: list[Event] = []
        if text and not self.calls:
            out.append(ToolCallDelta(0, id=new_call_id(), name=self.name))
            self.calls = 1
        if text:
            out.append(ToolCallDelta(0, arguments=text))
        return out

    def finish(self) -> list[Event]:
        if self.calls:
            return []
        self.calls = 1
        return [ToolCallDelta(0, id=new_call_id(), name=self.name)]


class GuidedCallsParser:
    """Calls guided decoding wrote as {"name", "arguments"} objects, one or an array of
    them. Each call goes out, whole, once its object is complete; one that `max_tokens`
    cut short is dropped."""

    def __init__(self) -> None:
        self.calls = 0
        self._buffer = ""
        self._array: bool | None = None
        self._scanner: JSONValueScanner | None = None
        self._item = ""
        self._closed = False  # the array (or the one object) has ended

    def feed(self, text: str) -> list[Event]:
        out: list[Event] = []
        if self._closed:
            return out
        self._buffer += text
        while self._buffer:
            if self._array is None:
                self._buffer = self._buffer.lstrip()
                if not self._buffer:
                    break
                self._array = self._buffer[0] == "["
                if self._array:
                    self._buffer = self._buffer[1:]
            if self._scanner is None:
                self._buffer = self._buffer.lstrip(" \t\r\n,")
                if not self._buffer:
                    break
                if self._buffer[0] == "]":
                    self._buffer, self._closed = "", True
                    break
                self._scanner, self._item = JSONValueScanner(), ""
            used = self._scanner.feed(self._buffer)
            self._item += self._buffer[:used]
            self._buffer = self._buffer[used:]
            if not self._scanner.done:
                break
            self._scanner = None
            self._emit(self._item, out)
            if not self._array:
                self._buffer, self._closed = "", True
        return out

    def finish(self) -> list[Event]:
        return []

    def _emit(self, item: str, out: list[Event]) -> None:
        try:
            call = json.loads(item)
        except ValueError:
            return
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            return
        arguments = json.dumps(call.get("arguments", {}), ensure_ascii=False)
        out.append(ToolCallDelta(self.calls, id=new_call_id(), name=call["name"]))
        out.append(ToolCallDelta(self.calls, arguments=arguments))
        self.calls += 1
