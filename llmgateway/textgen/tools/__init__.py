"""Tools in the prompt and tool calls out of the answer, in each model's own format.

The formats are a registry: one module per format under tools/formats/, each with the
one interface of tools/format.py (render the tools into the prompt; parse the answer,
streamed or whole), looked up by ModelConfig.tool_format. What does not depend on
the format: the request's ToolPlan (plan.py), the parser machinery (parsing.py), the
calls guided decoding writes (guided.py), legacy function messages (messages.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from llmgateway.textgen.registry import FormatRegistry
from llmgateway.textgen.tools import formats
from llmgateway.textgen.tools.guided import GuidedArgumentsParser, GuidedCallsParser
from llmgateway.textgen.tools.parsing import FirstCallOnly, Parser

if TYPE_CHECKING:
    from llmgateway.textgen.tokenizer import TextModel
    from llmgateway.textgen.tools.format import ToolFormat
    from llmgateway.textgen.tools.plan import Rendered, ToolPlan


_registry: FormatRegistry[ToolFormat] = FormatRegistry(formats, "tool")


def tool_format(name: str) -> ToolFormat:
    """The format called `name`; LookupError for one no module defines."""
    return _registry.get(name)


def tool_format_choices() -> list[tuple[str, str]]:
    """(name, label) of every format, for ModelConfig.tool_format."""
    return _registry.choices()


def prompt_render(
    text_model: TextModel, messages: list[dict[str, Any]], plan: ToolPlan
) -> Rendered:
    """The prompt text for `messages` (OpenAI shape, string contents) under `plan`.

    Raises whatever the chat template raises (jinja TemplateError, TokenizerError).
    """
    return tool_format(plan.format).render(text_model, messages, plan)


def tool_stops(plan: ToolPlan) -> tuple[str, ...]:
    """The stop strings the plan adds to the request's own."""
    if not plan.active or plan.guided:
        return ()
    return tool_format(plan.format).stops


def parser_for(plan: ToolPlan, *, continues_thought: bool = False) -> Parser | None:
    """The parser for one choice's answer, or None when tools are not in play."""
    if not plan.active:
        return None
    if plan.guided and plan.named is not None:
        return GuidedArgumentsParser(plan.named)
    parser: Parser
    if plan.guided:
        parser = GuidedCallsParser()
    else:
        parser = tool_format(plan.format).parser(continues_thought=continues_thought)
    return parser if plan.parallel else FirstCallOnly(parser)
