"""Reasoning ("thinking") formats: how a model marks its reasoning apart from its answer.

A registry like tools/: one module per format under reasoning/formats/, each defining
`FORMAT` (a `ReasoningFormat`), looked up by ModelConfig.reasoning_format. The format
gives the splitter that separates a streamed or whole answer into reasoning and answer
text (the endpoints' shapers), and the marker after which the answer begins (the
engine applies stop strings only after it).
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache

from llmgateway.textgen.reasoning import formats
from llmgateway.textgen.reasoning.format import ReasoningFormat, ReasoningSplitter

__all__ = ["ReasoningFormat", "ReasoningSplitter", "reasoning_format", "reasoning_format_choices"]


@cache
def _formats() -> dict[str, ReasoningFormat]:
    found: dict[str, ReasoningFormat] = {}
    for module_info in pkgutil.iter_modules(formats.__path__):
        module = importlib.import_module(f"{formats.__name__}.{module_info.name}")
        fmt: ReasoningFormat = module.FORMAT
        found[fmt.name] = fmt
    return found


def reasoning_format(name: str) -> ReasoningFormat:
    """The format called `name`; LookupError for one no module defines."""
    try:
        return _formats()[name]
    except KeyError:
        raise LookupError(f"no reasoning format is called {name!r}") from None


def reasoning_format_choices() -> list[tuple[str, str]]:
    """(name, label) of every format, for ModelConfig.reasoning_format."""
    return [(name, f.label) for name, f in sorted(_formats().items())]
