"""`<tool_call>` JSON, as Qwen2 and Hermes models write calls.

The tools are `<tools>` JSON in the system prompt; a call is
`<tool_call>{"name": ..., "arguments": ...}</tool_call>`; a tool's result is a user
turn wrapped in `<tool_response>`.
"""

from __future__ import annotations

import json
import re
from typing import Any

from llmgateway.textgen.tools.format import InstructedFormat
from llmgateway.textgen.tools.parsing import (
    Event,
    JSONValueScanner,
    OutputParser,
    ToolCallDelta,
    partial_suffix,
)

HERMES_INSTRUCTION = """# Tools

You may call one or more functions to assist with the user query.

You are provided with function signatures within <tools></tools> XML tags:
<tools>
{tools}
</tools>

For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:
<tool_call>
{{"name": <function-name>, "arguments": <args-json-object>}}
</tool_call>"""


def _hermes_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for message in messages:
        role, content = message["role"], message.get("content") or ""
        if role == "assistant" and message.get("tool_calls"):
            parts = [content] if content else []
            for call in message["tool_calls"]:
                function = call["function"]
                parts.append(
                    f'<tool_call>\n{{"name": "{function["name"]}", '
                    f'"arguments": {function["arguments"] or "{}"}}}\n</tool_call>'
                )
            out.append({"role": "assistant", "content": "\n".join(parts)})
        elif role == "tool":
            response = f"<tool_response>\n{content}\n</tool_response>"
            if out and out[-1].get("tool_response"):
                out[-1]["content"] += "\n" + response
            else:
                out.append({"role": "user", "content": response, "tool_response": True})
        else:
            out.append({"role": role, "content": content})
    return [{"role": m["role"], "content": m["content"]} for m in out]


class HermesParser(OutputParser):
    OPEN, CLOSE = "<tool_call>", "</tool_call>"
    HEAD = re.compile(r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"arguments"\s*:')

    def __init__(self) -> None:
        super().__init__()
        self._state = "content"
        self._scanner = JSONValueScanner()

    def _step(self, out: list[Event]) -> bool:
        buffer = self._buffer
        if self._state == "content":
            at = buffer.find(self.OPEN)
            if at == -1:
                keep = partial_suffix(buffer, self.OPEN)
                self._content(buffer[: len(buffer) - keep], out)
                self._buffer = buffer[len(buffer) - keep :]
                return False
            self._content(buffer[:at], out)
            self._buffer, self._state = buffer[at + len(self.OPEN) :], "head"
            return True
        if self._state == "head":
            match = self.HEAD.match(buffer)
            if match is not None:
                self._start_call(json.loads(f'"{match.group(1)}"'), out)
                self._buffer, self._state = buffer[match.end() :], "arguments"
                self._scanner = JSONValueScanner()
                return True
            if self.CLOSE in buffer:
                body, _, rest = buffer.partition(self.CLOSE)
                self._whole_call(body, out, closed=True)
                self._buffer, self._state = rest, "content"
                return True
            return False
        if self._state == "arguments":
            if not self._scanner.started:
                buffer = buffer.lstrip()
            used = self._scanner.feed(buffer)
            if used:
                out.append(ToolCallDelta(self.calls - 1, arguments=buffer[:used]))
            if not self._scanner.done:
                self._buffer = ""
                return False
            self._buffer, self._state = buffer[used:], "tail"
            return True
        # tail: the rest of the call object up to </tool_call>
        at = buffer.find(self.CLOSE)
        if at == -1:
            self._buffer = buffer[len(buffer) - partial_suffix(buffer, self.CLOSE) :]
            return False
        self._buffer, self._state = buffer[at + len(self.CLOSE) :], "content"
        return True

    def _whole_call(self, body: str, out: list[Event], *, closed: bool) -> None:
        """A call whose head did not come in the usual order: parse it whole."""
        try:
            call = json.loads(body)
        except json.JSONDecodeError:
            call = None
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            self._content(self.OPEN + body + (self.CLOSE if closed else ""), out)
            return
        arguments = call.get("arguments", call.get("parameters", {}))
        if not isinstance(arguments, str):
            arguments = json.dumps(arguments, ensure_ascii=False)
        self._start_call(call["name"], out)
        out.append(ToolCallDelta(self.calls - 1, arguments=arguments))

    def _rest(self, out: list[Event]) -> None:
        if self._state == "content":
            self._content(self._buffer, out)
        elif self._state == "head":
            self._whole_call(self._buffer, out, closed=False)


class HermesFormat(InstructedFormat):
    name = "hermes"
    label = "<tool_call> JSON (Qwen2 / Hermes)"

    def instruction(self, functions: tuple[dict[str, Any], ...]) -> str:
        return HERMES_INSTRUCTION.format(
            tools="\n".join(
                json.dumps({"type": "function", "function": f}, ensure_ascii=False)
                for f in functions
            )
        )

    def turns(self, messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str | None]:
        return _hermes_messages(messages), None

    def parser(self, *, continues_thought: bool = False) -> OutputParser:
        return HermesParser()


FORMAT = HermesFormat()
