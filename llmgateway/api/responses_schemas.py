"""The /v1/responses request, in OpenAI's field names (the Responses API reference).

Unlike chat's schemas, an unknown top-level field is refused as OpenAI refuses it
(`Unknown parameter`): the Responses API is new enough that clients send only what it
defines. `input` items are checked by hand (responses_input.py), so each error names
the item as OpenAI does (`input[2].content[0].type`). `responses_validate` checks what
the types cannot, and refuses what is not built here.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from ninja import Field

from llmgateway.api.openai_schemas import OpenAISchema, Temperature, TopP
from llmgateway.api.responses_input import invalid_value
from llmgateway.errors import APIError, invalid


class TextFormat(OpenAISchema):
    type: Literal["text", "json_object", "json_schema"]
    name: Annotated[str, Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")] | None = None
    description: str | None = None
    # `schema` would shadow a BaseModel attribute.
    json_schema: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class TextConfig(OpenAISchema):
    format: TextFormat | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


class ReasoningConfig(OpenAISchema):
    effort: str | None = None
    summary: Literal["auto", "concise", "detailed"] | None = None
    generate_summary: Literal["auto", "concise", "detailed"] | None = None


class ResponseCreateIn(OpenAISchema):
    model: str
    input: str | list[Any]
    instructions: str | None = None
    max_output_tokens: int | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    reasoning: ReasoningConfig | None = None
    metadata: dict[str, str] | None = None
    user: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    store: bool = True
    previous_response_id: str | None = None
    include: list[str] | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    truncation: Literal["auto", "disabled"] | None = None
    service_tier: str | None = None
    background: bool | None = None
    max_tool_calls: int | None = None
    # Refused when set (responses.py says why); accepted as null.
    conversation: Any = None
    prompt: Any = None
    context_management: Any = None
    moderation: Any = None
    # Accepted and ignored: the Agents SDK forwards them from ModelSettings.
    prompt_cache_retention: Any = None
    prompt_cache_options: Any = None


INCLUDABLE = (
    "file_search_call.results",
    "web_search_call.results",
    "web_search_call.action.sources",
    "message.input_image.image_url",
    "computer_call_output.output.image_url",
    "code_interpreter_call.outputs",
    "reasoning.encrypted_content",
    "message.output_text.logprobs",
)
UNSUPPORTED = ("conversation", "prompt", "context_management", "moderation")
MIN_OUTPUT_TOKENS = 16


def unsupported(param: str) -> APIError:
    return invalid(
        f"Unsupported parameter: '{param}' is not supported with this model.",
        param,
        "unsupported_parameter",
    )


def responses_validate(payload: ResponseCreateIn) -> None:
    """What OpenAI checks of the request beyond its types, and what is not built here."""
    for name in payload.model_extra or {}:
        raise invalid(f"Unknown parameter: '{name}'.", name, "unknown_parameter")
    if payload.conversation is not None and payload.previous_response_id is not None:
        raise invalid(
            "Mutually exclusive parameters: Ensure you are only providing one of: "
            "'previous_response_id' or 'conversation'.",
            "conversation",
            "mutually_exclusive_parameters",
        )
    for name in UNSUPPORTED:
        if getattr(payload, name) is not None:
            raise unsupported(name)
    if payload.background:
        raise unsupported("background")
    if payload.truncation == "auto":
        raise invalid(
            "truncation 'auto' is not supported by this server: an input over the model's "
            "context is refused (truncation 'disabled').",
            "truncation",
            "unsupported_value",
        )
    tokens = payload.max_output_tokens
    if tokens is not None and tokens < MIN_OUTPUT_TOKENS:
        raise invalid(
            "Invalid 'max_output_tokens': integer below minimum value. Expected a value >= "
            f"{MIN_OUTPUT_TOKENS}, but got {tokens} instead.",
            "max_output_tokens",
            "integer_below_min_value",
        )
    if payload.top_logprobs:
        raise invalid(
            "top_logprobs is not supported: TensorRT-LLM returns only the chosen token's logprob.",
            "top_logprobs",
        )
    for index, value in enumerate(payload.include or ()):
        if value not in INCLUDABLE:
            raise invalid_value(value, INCLUDABLE, f"include[{index}]")
    if payload.stream_options is not None and not payload.stream:
        raise invalid("stream_options is only allowed when stream is true.", "stream_options")
    metadata = payload.metadata or {}
    if len(metadata) > 16:
        raise invalid("Invalid 'metadata': too many properties (at most 16).", "metadata")
    for key, value in metadata.items():
        if len(key) > 64 or len(value) > 512:
            raise invalid(
                f"Invalid 'metadata.{key}': keys are at most 64 characters, values 512.",
                "metadata",
            )
    fmt = payload.text.format if payload.text else None
    if fmt is not None and fmt.type == "json_schema":
        if fmt.name is None:
            raise invalid(
                "Missing required parameter: 'text.format.name'.",
                "text.format.name",
                "missing_required_parameter",
            )
        if fmt.json_schema is None:
            raise invalid(
                "Missing required parameter: 'text.format.schema'.",
                "text.format.schema",
                "missing_required_parameter",
            )
