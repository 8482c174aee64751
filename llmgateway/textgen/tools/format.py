"""The interface every tool format implements (one module each under tools/formats/)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar

from llmgateway.textgen.tools.plan import Rendered, ToolPlan, choice_instruction, with_system

if TYPE_CHECKING:
    from llmgateway.textgen.tokenizer import TextModel
    from llmgateway.textgen.tools.parsing import OutputParser


class ToolFormat(ABC):
    """How one model family is shown tools and writes its calls.

    A module under tools/formats/ defines one instance as `FORMAT`; the registry
    (tools/__init__.py) finds it there by `name`, the value of ModelConfig.tool_format.
    """

    name: ClassVar[str]
    # What the admin shows for it.
    label: ClassVar[str]
    # Where generation stops while this format's parser reads the answer (ReAct's
    # "Observation:": the model would go on to invent the tool's result).
    stops: ClassVar[tuple[str, ...]] = ()

    @abstractmethod
    def render(
        self, text_model: TextModel, messages: list[dict[str, Any]], plan: ToolPlan
    ) -> Rendered:
        """The prompt for `messages` (OpenAI's shape, string contents, tool calls and
        tool results included) with `plan`'s tools offered, when it has any.

        Raises whatever the chat template raises (jinja TemplateError, TokenizerError).
        """

    @abstractmethod
    def parser(self, *, continues_thought: bool = False) -> OutputParser:
        """A new parser for one choice's answer, fed as it streams or whole.

        `continues_thought`: the prompt ends inside an assistant turn (Rendered).
        """


class InstructedFormat(ToolFormat):
    """A format whose tools are an instruction in the system message, with past calls
    and their results written into the turns as the format writes them."""

    def render(
        self, text_model: TextModel, messages: list[dict[str, Any]], plan: ToolPlan
    ) -> Rendered:
        turns, open_turn = self.turns(messages)
        if plan.active:
            turns = with_system(turns, self.instruction(plan.offered) + choice_instruction(plan))
        prompt = text_model.render_chat(turns)
        if open_turn is not None:
            return Rendered(prompt + open_turn, continues_thought=True)
        return Rendered(prompt)

    @abstractmethod
    def instruction(self, functions: tuple[dict[str, Any], ...]) -> str:
        """The system prompt's text offering `functions`."""

    @abstractmethod
    def turns(self, messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str | None]:
        """Plain role/content turns for the chat template, and the text that continues
        the prompt after it when the answer goes on inside an open assistant turn."""
