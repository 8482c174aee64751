"""Request schemas for /v1, in OpenAI's field names.

Unknown fields are ignored (and logged by the router), as vLLM and OpenAI's own
SDKs expect: clients send fields such as `store` or `metadata` freely. Range
checks live here so pydantic names the parameter; rules spanning several fields
live in `openai.py` (`*_validate`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from ninja import Field
from pydantic import BaseModel, ConfigDict, GetCoreSchemaHandler, field_validator
from pydantic_core import CoreSchema
from pydantic_core import core_schema as cs

MAX_PROMPTS = 64
INT64 = 2**63
# TensorRT-LLM's integer inputs (top_k, min_tokens) are int32.
INT32_MAX = 2**31 - 1

Temperature = Annotated[float, Field(ge=0, le=2)]
TopP = Annotated[float, Field(ge=0, le=1)]  # 0: greedy (openai.params_build)
Penalty = Annotated[float, Field(ge=-2, le=2)]
Seed = Annotated[int, Field(ge=-INT64, lt=INT64)]
PositiveInt = Annotated[int, Field(ge=1)]


_NEVER = object()


def _null_as(default: Any) -> CoreSchema:
    """Takes null alone and gives `default`: no other value passes `_NEVER`'s literal, and
    pydantic-core's on_error="default" turns that failure into the default."""
    return cs.chain_schema(
        [
            cs.none_schema(),
            cs.with_default_schema(
                cs.literal_schema([_NEVER]), default=default, on_error="default"
            ),
        ]
    )


def _null_is_default(schema: CoreSchema) -> None:
    """In place: each field whose default is not None takes null as that default."""
    if schema["type"] == "definitions":
        schema = schema["schema"]
    if schema["type"] != "model" or schema["schema"]["type"] != "model-fields":
        raise TypeError(f"unexpected model schema {schema['type']!r}")  # pydantic changed
    for field in schema["schema"]["fields"].values():
        default = field["schema"]
        if default["type"] != "default" or default.get("default") is None:
            continue
        inner = default["schema"]
        if inner["type"] == "nullable":
            inner = inner["schema"]
        default["schema"] = cs.union_schema(
            [inner, _null_as(default["default"])], mode="left_to_right"
        )


class OpenAISchema(BaseModel):
    """Every /v1 request object.

    Strict: JSON types are checked, not coerced ("stream": "yes" or 1 is a 400, as at
    OpenAI). pydantic's strict mode still takes an int for a float (temperature: 1).

    Null means the default, as OpenAI takes it: a field with a default other than
    None (`n`, `stream`, `echo`, `include_usage`, ...) takes null as that default.
    Done once here, in the core schema, so pydantic-core does it without a Python
    call, and a field added later gets it too.
    """

    model_config = ConfigDict(extra="allow", strict=True)

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: type[BaseModel], handler: GetCoreSchemaHandler
    ) -> CoreSchema:
        schema = handler(source)
        _null_is_default(schema)
        return schema


class StreamOptions(OpenAISchema):
    include_usage: bool = False


class ContentPart(OpenAISchema):
    type: str
    text: str | None = None
    refusal: str | None = None  # an assistant's {"type": "refusal", "refusal": ...}
    # {"url": ..., "detail": ...}; checked (and a bare string refused) by llmgateway.vision.
    image_url: dict[str, Any] | str | None = None


class FunctionCall(OpenAISchema):
    name: str
    arguments: str = ""


class ToolCall(OpenAISchema):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(OpenAISchema):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    function_call: FunctionCall | None = None


class FunctionDef(OpenAISchema):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.\-]{1,64}$")]
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(OpenAISchema):
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(OpenAISchema):
    name: str


class NamedToolChoice(OpenAISchema):
    type: Literal["function"]
    function: NamedFunction


class JSONSchemaFormat(OpenAISchema):
    name: Annotated[str, Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]
    description: str | None = None
    # `schema` would shadow a BaseModel attribute.
    json_schema: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(OpenAISchema):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None


class SamplingIn(OpenAISchema):
    model: str
    max_tokens: PositiveInt | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    n: Annotated[int, Field(ge=1)] = 1  # its ceiling: caps.sequences_cap, a setting
    # Unions are checked by hand below so errors name "stop"/"prompt", not a union member.
    stop: Any = None
    seed: Seed | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    # Extras (vLLM's names), sent through extra_body.
    top_k: Annotated[int, Field(ge=-1, le=INT32_MAX)] | None = None
    repetition_penalty: Annotated[float, Field(gt=0, le=2)] | None = None
    min_tokens: Annotated[int, Field(ge=0, le=INT32_MAX)] | None = None

    @field_validator("stop")
    @classmethod
    def _stop(cls, value: Any) -> str | list[str] | None:
        if value is None or isinstance(value, str):
            return value
        if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
            raise ValueError("must be a string or a list of strings")
        return value  # its length: caps.stops_cap, a setting


class ChatCompletionIn(SamplingIn):
    messages: Annotated[list[Message], Field(min_length=1)]
    max_completion_tokens: PositiveInt | None = None
    logprobs: bool = False
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    tools: Annotated[list[Tool], Field(min_length=1)] | None = None
    tool_choice: Any = None  # "none" | "auto" | "required" | NamedToolChoice
    parallel_tool_calls: bool | None = None
    functions: Annotated[list[FunctionDef], Field(min_length=1)] | None = None
    function_call: Any = None  # "none" | "auto" | NamedFunction
    response_format: ResponseFormat | None = None

    @field_validator("tool_choice")
    @classmethod
    def _tool_choice(cls, value: Any) -> str | NamedToolChoice | None:
        if value is None or value in ("none", "auto", "required"):
            return value
        if isinstance(value, dict):
            return NamedToolChoice.model_validate(value)
        raise ValueError('must be "none", "auto", "required" or a named function')

    @field_validator("function_call")
    @classmethod
    def _function_call(cls, value: Any) -> str | NamedFunction | None:
        if value is None or value in ("none", "auto"):
            return value
        if isinstance(value, dict):
            return NamedFunction.model_validate(value)
        raise ValueError('must be "none", "auto" or {"name": ...}')


def _is_ids(value: Any) -> bool:
    """A non-empty list of non-negative ints (bools are not ids). map(type) and min() run
    in C: a body of millions of ids is checked in a third of the time a generator takes,
    on the event loop."""
    return (
        isinstance(value, list)
        and bool(value)
        and set(map(type, value)) == {int}
        and min(value) >= 0
    )


class CompletionIn(SamplingIn):
    # A string, a list of strings, a list of token ids, or a list of those.
    prompt: Any
    echo: bool = False
    logprobs: Annotated[int, Field(ge=0, le=5)] | None = None
    suffix: str | None = None
    best_of: Annotated[int, Field(ge=1)] | None = None

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, value: Any) -> str | list[str] | list[int] | list[list[int]]:
        if (isinstance(value, str) and value) or _is_ids(value):
            return value
        many = isinstance(value, list) and 0 < len(value) <= MAX_PROMPTS
        if many and (
            all(isinstance(p, str) and p for p in value) or all(_is_ids(p) for p in value)
        ):
            return value
        raise ValueError(
            "must be a non-empty string, a list of non-empty strings, a list of token ids "
            f"or a list of token-id lists (at most {MAX_PROMPTS} prompts)"
        )
