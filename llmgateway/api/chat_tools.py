"""Tools and structured outputs in a chat request: what OpenAI checks of them, the tool
plan, and the guides that hold decoding to a format or to a call."""

from __future__ import annotations

from typing import Any

import orjson
from django.conf import settings

from llmgateway.api.openai_schemas import (
    ChatCompletionIn,
    FunctionDef,
    Message,
    NamedFunction,
    NamedToolChoice,
)
from llmgateway.engine import Engine
from llmgateway.errors import invalid, missing
from llmgateway.models import ModelConfig
from llmgateway.textgen.tokenizer import TextModel
from llmgateway.textgen.tools.plan import ToolPlan

# OpenAI's message, word for word.
JSON_WORD_MISSING = (
    "'messages' must contain the word 'json' in some form, to use 'response_format' of type "
    "'json_object'."
)
# What JSON mode guarantees: a JSON object.
ANY_OBJECT = '{"type": "object"}'


def _mentions_json(messages: list[Message]) -> bool:
    for message in messages:
        content = message.content
        texts = [content] if isinstance(content, str) else [p.text for p in content or ()]
        if any(text and "json" in text.lower() for text in texts):
            return True
    return False


def response_format_validate(payload: ChatCompletionIn) -> None:
    """What OpenAI checks of response_format, and what guided decoding cannot do."""
    fmt = payload.response_format
    if fmt is None or fmt.type == "text":
        return
    if fmt.type == "json_object" and not _mentions_json(payload.messages):
        raise invalid(JSON_WORD_MISSING, "messages")
    if fmt.type == "json_schema" and fmt.json_schema is None:
        raise missing("response_format.json_schema")
    tools = payload.tools if payload.tool_choice != "none" else None
    if tools or (payload.functions and payload.function_call != "none"):
        # A guide holds every token to the schema, so the model could not call a tool.
        raise invalid(
            f"response_format {fmt.type!r} cannot be combined with tools on this server: "
            "guided decoding keeps the answer to the format, so the model could not call a "
            "tool. Send tool_choice 'none', or leave response_format unset.",
            "response_format",
        )


def _guide_json(schema: dict[str, Any], param: str) -> str:
    try:
        return orjson.dumps(schema).decode()
    except orjson.JSONEncodeError as exc:  # nested deeper than orjson goes (254 levels)
        raise invalid(f"The schema nests too deeply: {exc}.", param) from exc


def response_guide(payload: ChatCompletionIn) -> tuple[str, str | None] | None:
    """The TensorRT-LLM guide for the request's response_format (validated), or None.

    JSON mode is the schema {"type": "object"}: OpenAI promises an object, and
    TensorRT-LLM's plain `json` guide would also let an array through.
    """
    fmt = payload.response_format
    if fmt is None or fmt.type == "text":
        return None
    schema = fmt.json_schema.json_schema if fmt.json_schema is not None else None
    if fmt.type == "json_object" or schema is None:
        return ("json_schema", ANY_OBJECT)
    guide = _guide_json(schema, "response_format.json_schema.schema")
    limit = settings.GUIDED_DECODING_MAX_SCHEMA_BYTES
    if len(guide) > limit:
        raise invalid(
            f"The schema is {len(guide)} bytes as JSON; this server takes at most {limit}.",
            "response_format.json_schema.schema",
        )
    return ("json_schema", guide)


def _forces_call(payload: ChatCompletionIn) -> bool:
    """tool_choice required or a named function (or the legacy function_call's name)."""
    if payload.functions:
        return isinstance(payload.function_call, NamedFunction)
    return bool(payload.tools) and (
        payload.tool_choice == "required" or isinstance(payload.tool_choice, NamedToolChoice)
    )


async def guide_check(payload: ChatCompletionIn, config: ModelConfig, engine: Engine) -> bool:
    """Whether the request's decoding is guided. A response_format needs a model that
    guides decoding (a 400 otherwise); a forced tool call is guided where the model can."""
    kind = payload.response_format.type if payload.response_format else "text"
    if kind == "text" and not _forces_call(payload):
        return False
    guides = (await engine.spec()).guides_decoding
    if kind != "text" and not guides:
        raise invalid(
            f"response_format {kind!r} needs guided decoding, which model {config.name!r} "
            "does not offer: its Triton model needs TensorRT-LLM 0.19 or later with "
            "guided_decoding_backend set (xgrammar).",
            "response_format",
        )
    return guides


def _parameters(function: FunctionDef) -> dict[str, Any]:
    return function.parameters or {"type": "object"}


def call_guide(payload: ChatCompletionIn, plan: ToolPlan) -> tuple[str, str] | None:
    """The guide for a forced call: the named function's parameters, or the calls as
    {"name", "arguments"} objects (an array of them when calls may be parallel).
    None when it is over GUIDED_DECODING_MAX_SCHEMA_BYTES: the call is then asked for
    in the prompt alone, as on a model without guided decoding."""
    functions = [t.function for t in payload.tools] if payload.tools else payload.functions or []
    if plan.named is not None:
        schema = _parameters(next(f for f in functions if f.name == plan.named))
    else:
        calls = [
            {
                "type": "object",
                "properties": {"name": {"enum": [f.name]}, "arguments": _parameters(f)},
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
            for f in functions
        ]
        schema = calls[0] if len(calls) == 1 else {"anyOf": calls}
        if plan.parallel:
            schema = {"type": "array", "items": schema, "minItems": 1}
    guide = _guide_json(schema, "tools")
    return (
        ("json_schema", guide) if len(guide) <= settings.GUIDED_DECODING_MAX_SCHEMA_BYTES else None
    )


def tool_plan_build(payload: ChatCompletionIn, config: ModelConfig, text: TextModel) -> ToolPlan:
    """The request's tools, their definitions' control tokens quoted (TextModel.quote)."""
    if payload.functions:
        choice = payload.function_call
        return ToolPlan(
            format=config.tool_format,
            functions=tuple(
                text.quote_value(f.model_dump(exclude_none=True)) for f in payload.functions
            ),
            choice="named" if isinstance(choice, NamedFunction) else (choice or "auto"),
            named=choice.name if isinstance(choice, NamedFunction) else None,
            legacy=True,
        )
    choice = payload.tool_choice
    named = choice.function.name if isinstance(choice, NamedToolChoice) else None
    return ToolPlan(
        format=config.tool_format,
        functions=tuple(
            text.quote_value(t.function.model_dump(exclude_none=True, exclude={"strict"}))
            for t in payload.tools or []
        ),
        choice="named" if named else (choice or "auto"),  # type: ignore[arg-type]
        named=named,
        parallel=payload.parallel_tool_calls is not False,
    )
