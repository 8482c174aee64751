"""How one request uses tools (`ToolPlan`), and what every format's prompt shares."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class ToolPlan:
    """How one request uses tools.

    `format` names the model's tool format (ModelConfig.tool_format; tools/formats/).
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

    def finish_reason(self, engine_reason: str | None, called: bool) -> str | None:
        """OpenAI's reason: tool_calls (function_call) for auto/required, stop when named."""
        if not called or engine_reason == "length":
            return engine_reason
        if self.named is not None:
            return "stop"
        return "function_call" if self.legacy else "tool_calls"


@dataclass(slots=True)
class Rendered:
    prompt: str
    # The prompt ends inside an assistant turn after a ReAct observation.
    continues_thought: bool = False


def choice_instruction(plan: ToolPlan) -> str:
    """What a prompt adds when the answer must be a call ("" when it need not)."""
    if plan.named is not None:
        return f"\n\nYou must call the function {plan.named}."
    if plan.choice == "required":
        return "\n\nYou must call at least one of the functions."
    return ""


def with_system(messages: list[dict[str, Any]], instruction: str) -> list[dict[str, Any]]:
    """`messages` with `instruction` at the end of the system message (one is added)."""
    if messages and messages[0]["role"] == "system":
        system = messages[0]["content"] or ""
        joined = f"{system}\n\n{instruction}" if system else instruction
        return [{"role": "system", "content": joined}, *messages[1:]]
    return [{"role": "system", "content": instruction}, *messages]
