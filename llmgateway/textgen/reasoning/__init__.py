"""Reasoning ("thinking") formats: how a model marks its reasoning apart from its answer.

A registry like tools/: one module per format under reasoning/formats/, each defining
`FORMAT` (a `ReasoningFormat`), looked up by ModelConfig.reasoning_format. The format
gives the splitter that separates a streamed or whole answer into reasoning and answer
text (the endpoints' shapers), and the marker after which the answer begins (the
engine applies stop strings only after it).
"""

from __future__ import annotations

from llmgateway.textgen.reasoning import formats
from llmgateway.textgen.reasoning.format import ReasoningFormat, ReasoningSplitter
from llmgateway.textgen.registry import FormatRegistry

__all__ = ["ReasoningFormat", "ReasoningSplitter", "reasoning_format", "reasoning_format_choices"]


_registry: FormatRegistry[ReasoningFormat] = FormatRegistry(formats, "reasoning")


def reasoning_format(name: str) -> ReasoningFormat:
    """The format called `name`; LookupError for one no module defines."""
    return _registry.get(name)


def reasoning_format_choices() -> list[tuple[str, str]]:
    """(name, label) of every format, for ModelConfig.reasoning_format."""
    return _registry.choices()
