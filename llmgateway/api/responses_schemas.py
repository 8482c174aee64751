"""The /v1/responses request, in OpenAI's field names (the Responses API reference).

Unlike chat's schemas, an unknown top-level field is refused as OpenAI refuses it
(`Unknown parameter`): the Responses API is new enough that clients send only what it
defines. `input` items are checked by hand (responses_input.py), so each error names
the item as OpenAI does (`input[2].content[0].type`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from ninja import Field

from llmgateway.api.openai_schemas import OpenAISchema, Temperature, TopP


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
