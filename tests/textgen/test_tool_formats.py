"""The tool formats' registry: a format is a module under textgen/tools/formats/."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest
from django.core.exceptions import ValidationError

from llmgateway.models import ModelConfig
from llmgateway.textgen import tools
from llmgateway.textgen.tools import formats, tool_format, tool_format_choices, tool_stops
from llmgateway.textgen.tools.plan import ToolPlan

WEATHER = {"name": "get_weather", "parameters": {"type": "object"}}

SHOUT = """
from llmgateway.textgen.tools.format import ToolFormat
from llmgateway.textgen.tools.formats.hermes import HermesParser
from llmgateway.textgen.tools.plan import Rendered


class ShoutFormat(ToolFormat):
    name = "shout"
    label = "Tools in capitals"
    stops = ("STOP!",)

    def render(self, text_model, messages, plan):
        return Rendered(" ".join(m["content"].upper() for m in messages))

    def parser(self, *, continues_thought=False):
        return HermesParser()


FORMAT = ShoutFormat()
"""


@pytest.fixture
def shout_module(tmp_path, monkeypatch) -> Iterator[None]:
    """A format module added next to the project's own (on the package's path)."""
    (tmp_path / "shout.py").write_text(SHOUT)
    monkeypatch.setattr(formats, "__path__", [*formats.__path__, str(tmp_path)])
    tools._registry.forget()
    try:
        yield
    finally:
        tools._registry.forget()
        sys.modules.pop(f"{formats.__name__}.shout", None)


def test_each_module_is_a_format_found_by_its_name() -> None:
    assert [name for name, _ in tool_format_choices()] == ["hermes", "react", "template"]
    assert tool_format("react").stops == ("Observation:",)
    with pytest.raises(LookupError):
        tool_format("missing")


def test_adding_a_format_is_adding_a_module(shout_module) -> None:
    assert ("shout", "Tools in capitals") in tool_format_choices()
    plan = ToolPlan(format="shout", functions=(WEATHER,))
    assert tool_stops(plan) == ("STOP!",)
    assert tool_format("shout").render(None, [{"role": "user", "content": "hi"}], plan).prompt == (
        "HI"
    )
    # The model's field offers it without a migration (its choices are the registry's).
    ModelConfig(name="m", tokenizer_path="/t", tool_format="shout").clean_fields()
    with pytest.raises(ValidationError):
        ModelConfig(name="m", tokenizer_path="/t", tool_format="whisper").clean_fields()


def test_a_guided_or_idle_plan_adds_no_stop() -> None:
    assert tool_stops(ToolPlan(format="react", functions=(WEATHER,), guided=True)) == ()
    assert tool_stops(ToolPlan(format="react", functions=(WEATHER,), choice="none")) == ()
    assert tool_stops(ToolPlan(format="react")) == ()
