"""The tokenizer's chat template renders tools and tool messages itself; its answers
are read as `<tool_call>` JSON, what tool-aware templates such as Qwen2.5's ask for."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from llmgateway.textgen.tools.format import ToolFormat
from llmgateway.textgen.tools.formats.hermes import HermesParser
from llmgateway.textgen.tools.parsing import OutputParser
from llmgateway.textgen.tools.plan import Rendered, ToolPlan

if TYPE_CHECKING:
    from llmgateway.textgen.tokenizer import TextModel


class TemplateFormat(ToolFormat):
    name = "template"
    label = "The tokenizer's chat template renders tools"

    def render(
        self, text_model: TextModel, messages: list[dict[str, Any]], plan: ToolPlan
    ) -> Rendered:
        tools = [{"type": "function", "function": f} for f in plan.offered] if plan.active else None
        plain = [{**m, "content": m.get("content") or ""} for m in messages]
        return Rendered(text_model.render_chat(plain, tools=tools))

    def parser(self, *, continues_thought: bool = False) -> OutputParser:
        return HermesParser()


FORMAT = TemplateFormat()
