"""No reasoning: the whole answer is the answer."""

from __future__ import annotations

from llmgateway.textgen.reasoning.format import ReasoningFormat


class NoReasoning(ReasoningFormat):
    name = "none"
    label = "None: the model does not reason apart from its answer"


FORMAT = NoReasoning()
