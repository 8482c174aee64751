"""Tools in the prompt and tool calls out of the answer, in each model's own format.

Three formats (ModelConfig.tool_format):
- react: Qwen1.5's ReAct system prompt; a call is "Action: NAME\\nAction Input: JSON",
  generation stops at "Observation:", and tool results continue the assistant turn.
- hermes: Qwen2's `<tools>` JSON in the system prompt; a call is
  `<tool_call>{"name": ..., "arguments": ...}</tool_call>`; results are user turns
  wrapped in `<tool_response>`.
- template: the tokenizer's chat template renders tools and tool messages itself;
  its answers are parsed as hermes (what tool-aware templates such as Qwen2.5 use).

One incremental parser serves both streamed and non-streamed answers (a
non-streamed answer is fed in one piece), so the two always agree.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass, field
from typing import Any

from llmgateway.textgen.tokenizer import TextModel

REACT_STOP = "Observation:"

REACT_TOOL = (
    "{name}: Call this tool to interact with the {name} API. What is the {name} API "
    "useful for? {description} Parameters: {parameters} Format the arguments as a JSON object."
)
REACT_INSTRUCTION = """Answer the following questions as best you can. You have access to the following APIs:

{tools}

Use the following format:

Question: the input question you must answer
Thought: you should always think about what to do
Action: the action to take, should be one of [{names}]
Action Input: the input to the action
Observation: the result of the action
... (this Thought/Action/Action Input/Observation can be repeated zero or more times)
Thought: I now know the final answer
Final Answer: the final answer to the original input question

Begin!"""

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


@dataclass(frozen=True, slots=True)
class ToolPlan:
    """How one request uses tools.

    `functions` are OpenAI function definitions ({name, description, parameters});
    `choice` is none, auto, required or named (then `named` is the function).
    `legacy` answers with `function_call` instead of `tool_calls`. Without `parallel`
    (`parallel_tool_calls: false`) an answer keeps its first call only. `guided`: a
    required or named call that guided decoding writes as JSON (the named function's
    arguments; for required, the calls as {"name", "arguments"} objects, an array of
    them when parallel), read by the guided parsers instead of the format's.
    """

    format: str
    functions: tuple[dict[str, Any], ...] = ()
    choice: str = "auto"
    named: str | None = None
    legacy: bool = False
    parallel: bool = True
    guided: bool = False

    @property
    def active(self) -> bool:
        return bool(self.functions) and self.choice != "none"

    @property
    def forced(self) -> bool:
        """The answer must be a call: tool_choice required or a named function."""
        return self.active and self.choice in ("required", "named")

    @property
    def offered(self) -> tuple[dict[str, Any], ...]:
        """The functions shown to the model: only the named one when one is forced."""
        if self.named is not None:
            return tuple(f for f in self.functions if f["name"] == self.named)
        return self.functions

    @property
    def stops(self) -> tuple[str, ...]:
        react = self.active and self.format == "react" and not self.guided
        return (REACT_STOP,) if react else ()

    def finish_reason(self, engine_reason: str | None, called: bool) -> str | None:
        """OpenAI's reason: tool_calls (function_call) for auto/required, stop when named."""
        if not called or engine_reason == "length":
            return engine_reason
        if self.named is not None:
            return "stop"
        return "function_call" if self.legacy else "tool_calls"


# ---- rendering ------------------------------------------------------------------------


@dataclass(slots=True)
class Rendered:
    prompt: str
    # The prompt ends inside an assistant turn after a ReAct observation.
    continues_thought: bool = False


def _instruction(plan: ToolPlan) -> str:
    offered = plan.offered
    if plan.format == "react":
        text = REACT_INSTRUCTION.format(
            tools="\n\n".join(
                REACT_TOOL.format(
                    name=f["name"],
                    description=f.get("description") or "",
                    parameters=json.dumps(f.get("parameters") or {}, ensure_ascii=False),
                )
                for f in offered
            ),
            names=", ".join(f["name"] for f in offered),
        )
    else:
        text = HERMES_INSTRUCTION.format(
            tools="\n".join(
                json.dumps({"type": "function", "function": f}, ensure_ascii=False) for f in offered
            )
        )
    if plan.named is not None:
        text += f"\n\nYou must call the function {plan.named}."
    elif plan.choice == "required":
        text += "\n\nYou must call at least one of the functions."
    return text


def _with_system(messages: list[dict[str, Any]], instruction: str) -> list[dict[str, Any]]:
    if messages and messages[0]["role"] == "system":
        system = messages[0]["content"] or ""
        joined = f"{system}\n\n{instruction}" if system else instruction
        return [{"role": "system", "content": joined}, *messages[1:]]
    return [{"role": "system", "content": instruction}, *messages]


def _react_call(call: dict[str, Any], thought: str | None) -> str:
    function = call["function"]
    thought = thought or f"I should call {function['name']}."
    return f"Thought: {thought}\nAction: {function['name']}\nAction Input: {function['arguments']}"


def _react_messages(messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str | None]:
    """Plain ChatML turns, and the open assistant scratchpad if the last turn is a result.

    Tool calls and their observations form one assistant turn, as Qwen's ReAct
    prompting does; the next call waits until the previous one's result is in.
    """
    out: list[dict[str, Any]] = []
    scratch: list[str] | None = None
    pending: list[dict[str, Any]] = []
    for message in messages:
        role, content = message["role"], message.get("content")
        if role == "assistant" and message.get("tool_calls"):
            calls = list(message["tool_calls"])
            if scratch is None:
                scratch = []
            else:
                scratch.append("\n")
            scratch.append(_react_call(calls[0], content))
            pending = calls[1:]
        elif role == "tool" and scratch is not None:
            scratch.append(f"\nObservation: {content or ''}")
            if pending:
                scratch.append("\n" + _react_call(pending.pop(0), None))
        elif role == "assistant" and scratch is not None:
            scratch.append(f"\nThought: I now know the final answer\nFinal Answer: {content or ''}")
            out.append({"role": "assistant", "content": "".join(scratch)})
            scratch = None
        else:
            if scratch is not None:
                out.append({"role": "assistant", "content": "".join(scratch)})
                scratch = None
            out.append({"role": role, "content": content or ""})
    return out, ("".join(scratch) if scratch is not None else None)


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


def prompt_render(
    text_model: TextModel, messages: list[dict[str, Any]], plan: ToolPlan
) -> Rendered:
    """The prompt text for `messages` (OpenAI shape, string contents) under `plan`.

    Raises whatever the chat template raises (jinja TemplateError, TokenizerError).
    """
    if plan.format == "template":
        tools = [{"type": "function", "function": f} for f in plan.offered] if plan.active else None
        plain = [{**m, "content": m.get("content") or ""} for m in messages]
        return Rendered(text_model.render_chat(plain, tools=tools))
    if plan.format == "react":
        turns, scratch = _react_messages(messages)
    else:
        turns, scratch = _hermes_messages(messages), None
    if plan.active:
        turns = _with_system(turns, _instruction(plan))
    prompt = text_model.render_chat(turns)
    if scratch is not None:
        return Rendered(prompt + scratch + "\nThought:", continues_thought=True)
    return Rendered(prompt)


# ---- parsing --------------------------------------------------------------------------


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


def _partial_suffix(buffer: str, marker: str) -> int:
    """Length of the longest suffix of `buffer` that is a proper prefix of `marker`."""
    for size in range(min(len(marker) - 1, len(buffer)), 0, -1):
        if buffer.endswith(marker[:size]):
            return size
    return 0


class _JSONValueScanner:
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


class HermesParser(OutputParser):
    OPEN, CLOSE = "<tool_call>", "</tool_call>"
    HEAD = re.compile(r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"arguments"\s*:')

    def __init__(self) -> None:
        super().__init__()
        self._state = "content"
        self._scanner = _JSONValueScanner()

    def _step(self, out: list[Event]) -> bool:
        buffer = self._buffer
        if self._state == "content":
            at = buffer.find(self.OPEN)
            if at == -1:
                keep = _partial_suffix(buffer, self.OPEN)
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
                self._scanner = _JSONValueScanner()
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
            self._buffer = buffer[len(buffer) - _partial_suffix(buffer, self.CLOSE) :]
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

    def finish(self) -> list[Event]:
        out: list[Event] = []
        if self._state == "content":
            self._content(self._buffer, out)
        elif self._state == "head":
            self._whole_call(self._buffer, out, closed=False)
        self._buffer = ""
        self._flush_space(out)
        return out


class ReactParser(OutputParser):
    """Qwen's ReAct: "Thought: ...\\nAction: NAME\\nAction Input: ARGS[\\nObservation:]".

    An answer that starts like a Thought (or Action) is held until it shows an
    Action (a tool call; the thought is dropped), a Final Answer (its text is the
    content), or ends (the held text is the content).
    """

    STARTS = ("Thought:", "Action:")

    def __init__(self, *, continues_thought: bool = False) -> None:
        super().__init__()
        self._state = "thought" if continues_thought else "start"
        # Drop the space after "Final Answer:" or "Action Input:" however it arrives.
        self._lstrip = False

    def _step(self, out: list[Event]) -> bool:
        buffer = self._buffer
        if self._lstrip:
            buffer = self._buffer = buffer.lstrip()
            self._lstrip = not buffer
        if self._state == "start":
            head = buffer.lstrip()
            if any(head.startswith(s) for s in self.STARTS):
                self._state = "thought"
                return True
            if any(s.startswith(head) for s in self.STARTS):
                return False
            self._state = "content"
            return True
        if self._state == "content":
            self._content(buffer, out)
            self._buffer = ""
            return False
        if self._state == "thought":
            final = buffer.find("Final Answer:")
            action = buffer.find("Action:")
            action_input = buffer.find("\nAction Input:", action)
            if final != -1 and (action == -1 or final < action):
                self._buffer = buffer[final + len("Final Answer:") :]
                self._state, self._lstrip = "content", True
                return True
            if action != -1 and action_input != -1:
                self._start_call(buffer[action + len("Action:") : action_input].strip(), out)
                self._buffer = buffer[action_input + len("\nAction Input:") :]
                self._state, self._lstrip = "arguments", True
                return True
            return False
        if self._state == "arguments":
            stop = buffer.find(REACT_STOP)
            if stop != -1:
                out.append(ToolCallDelta(self.calls - 1, arguments=buffer[:stop].rstrip()))
                self._buffer, self._state = "", "done"
                return False
            keep = _partial_suffix(buffer, REACT_STOP)
            safe = buffer[: len(buffer) - keep]
            emit = safe.rstrip()
            if emit:
                out.append(ToolCallDelta(self.calls - 1, arguments=emit))
            self._buffer = safe[len(emit) :] + buffer[len(buffer) - keep :]
            return False
        self._buffer = ""
        return False

    def finish(self) -> list[Event]:
        out: list[Event] = []
        if self._state in ("start", "content"):
            self._content(self._buffer, out)
        elif self._state == "thought":
            self._content(self._buffer.strip(), out)
        self._buffer = ""
        self._flush_space(out)
        return out


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
        self._scanner: _JSONValueScanner | None = None
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
                self._scanner, self._item = _JSONValueScanner(), ""
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


class FirstCallOnly:
    """An answer's events without the tool calls after its first (parallel_tool_calls:
    false); content passes as it is."""

    def __init__(self, inner: OutputParser | GuidedCallsParser) -> None:
        self.inner = inner

    def feed(self, text: str) -> list[Event]:
        return self._first(self.inner.feed(text))

    def finish(self) -> list[Event]:
        return self._first(self.inner.finish())

    @staticmethod
    def _first(events: list[Event]) -> list[Event]:
        return [e for e in events if isinstance(e, str) or e.index == 0]


Parser = OutputParser | GuidedArgumentsParser | GuidedCallsParser | FirstCallOnly


def parser_for(plan: ToolPlan, *, continues_thought: bool = False) -> Parser | None:
    """The parser for one choice's answer, or None when tools are not in play."""
    if not plan.active:
        return None
    if plan.guided and plan.named is not None:
        return GuidedArgumentsParser(plan.named)
    parser: OutputParser | GuidedCallsParser
    if plan.guided:
        parser = GuidedCallsParser()
    elif plan.format == "react":
        parser = ReactParser(continues_thought=continues_thought)
    else:
        parser = HermesParser()
    return parser if plan.parallel else FirstCallOnly(parser)


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


# ---- legacy messages ------------------------------------------------------------------


def legacy_messages_convert(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`function_call` on assistant turns and `role: function` results, as tool calls."""
    out: list[dict[str, Any]] = []
    last_id = None
    for message in messages:
        if message["role"] == "assistant" and message.get("function_call"):
            last_id = new_call_id()
            call = {"id": last_id, "type": "function", "function": message["function_call"]}
            out.append({**message, "tool_calls": [call]})
        elif message["role"] == "function":
            out.append({"role": "tool", "tool_call_id": last_id, "content": message["content"]})
        else:
            out.append(message)
    return out
