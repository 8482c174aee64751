"""ReAct, as Qwen1.5 was prompted (the seed's format).

The tools are a ReAct instruction in the system prompt; a call is
"Action: NAME\nAction Input: JSON", generation stops at "Observation:", and a tool's
result continues the assistant's turn (calls and observations form one turn, as
Qwen's ReAct prompting does; the next call waits until the previous one's result is in).
"""

from __future__ import annotations

import json
from typing import Any

from llmgateway.textgen.tools.format import InstructedFormat
from llmgateway.textgen.tools.parsing import Event, OutputParser, ToolCallDelta, partial_suffix

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
            keep = partial_suffix(buffer, REACT_STOP)
            safe = buffer[: len(buffer) - keep]
            emit = safe.rstrip()
            if emit:
                out.append(ToolCallDelta(self.calls - 1, arguments=emit))
            self._buffer = safe[len(emit) :] + buffer[len(buffer) - keep :]
            return False
        self._buffer = ""
        return False

    def _rest(self, out: list[Event]) -> None:
        if self._state in ("start", "content"):
            self._content(self._buffer, out)
        elif self._state == "thought":
            self._content(self._buffer.strip(), out)


class ReactFormat(InstructedFormat):
    name = "react"
    label = "ReAct text (Qwen1.5, as the seed did)"
    stops = (REACT_STOP,)

    def instruction(self, functions: tuple[dict[str, Any], ...]) -> str:
        return REACT_INSTRUCTION.format(
            tools="\n\n".join(
                REACT_TOOL.format(
                    name=f["name"],
                    description=f.get("description") or "",
                    parameters=json.dumps(f.get("parameters") or {}, ensure_ascii=False),
                )
                for f in functions
            ),
            names=", ".join(f["name"] for f in functions),
        )

    def turns(self, messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str | None]:
        turns, scratch = _react_messages(messages)
        return turns, (scratch + "\nThought:" if scratch is not None else None)

    def parser(self, *, continues_thought: bool = False) -> OutputParser:
        return ReactParser(continues_thought=continues_thought)


FORMAT = ReactFormat()
