"""What /openapi.json declares beyond Ninja's bare 200s: each route's bodies and errors.

The routes build their responses by hand (orjson bodies, SSE streams), so Ninja knows no
response model for them. Their bodies are declared here instead, in one table keyed by
method and path (not by view function, so rewriting a route's code leaves its document
alone), together with OpenAI's error envelope for every error status a route answers.
`document_responses` applies the table to the schema Ninja generates.

These models describe; nothing validates responses against them at run time.
tests/api/test_openapi.py checks real responses against them, so the document stays true.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, Field
from pydantic.json_schema import models_json_schema

REF_PREFIX = "#/components/schemas/"
S = TypeVar("S", bound=dict[str, Any])


class ErrorDetail(BaseModel):
    message: str = Field(description="What went wrong, for a person to read.")
    type: str = Field(description="invalid_request_error, rate_limit_error, server_error, ...")
    param: str | None = Field(description="The request field at fault, e.g. messages[0].role.")
    code: str | None = Field(description="Machine-readable reason, e.g. model_not_found.")


class ErrorResponse(BaseModel):
    """OpenAI's error envelope, the body of every error the API answers."""

    error: ErrorDetail


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    completion_tokens_details: dict[str, int] | None = Field(
        None, description="reasoning_tokens, on a model with a reasoning format."
    )


class Model(BaseModel):
    id: str = Field(description="The name clients send as `model`.")
    object: Literal["model"]
    created: int
    owned_by: str
    max_model_len: int = Field(description="Prompt plus output tokens the model accepts.")


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[Model]


class FunctionCallOut(BaseModel):
    name: str
    arguments: str = Field(description="The arguments as a JSON text.")


class ToolCallOut(BaseModel):
    id: str
    type: Literal["function"]
    function: FunctionCallOut


class ChatMessageOut(BaseModel):
    role: Literal["assistant"]
    content: str | None
    refusal: None = None
    annotations: list[Any] = []
    tool_calls: list[ToolCallOut] | None = Field(
        None, description="Present when the model called tools."
    )
    function_call: FunctionCallOut | None = Field(
        None, description="The legacy `functions` API's one call."
    )
    reasoning_content: str | None = Field(
        None, description="A reasoning model's reasoning, apart from `content`."
    )


class ChatChoice(BaseModel):
    index: int
    message: ChatMessageOut
    logprobs: dict[str, Any] | None
    finish_reason: Literal["stop", "length", "tool_calls", "function_call"]


class ChatCompletion(BaseModel):
    """The answer of POST /v1/chat/completions without `stream`."""

    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    system_fingerprint: str | None
    choices: list[ChatChoice]
    usage: Usage


class ChatChunkChoice(BaseModel):
    index: int
    delta: dict[str, Any] = Field(description="role, content, tool_calls: what is new.")
    logprobs: dict[str, Any] | None
    finish_reason: Literal["stop", "length", "tool_calls", "function_call"] | None


class ChatCompletionChunk(BaseModel):
    """One `data:` event of POST /v1/chat/completions with `stream: true`."""

    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    system_fingerprint: str | None
    choices: list[ChatChunkChoice]
    usage: Usage | None = Field(None, description="With stream_options.include_usage.")


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: dict[str, Any] | None
    finish_reason: Literal["stop", "length"] | None


class Completion(BaseModel):
    """The answer of POST /v1/completions (and each `data:` event with `stream: true`)."""

    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    system_fingerprint: str | None
    choices: list[CompletionChoice]
    usage: Usage | None = Field(None, description="Absent from stream events but the last.")


class GenerateOut(BaseModel):
    """The answer of POST /generate (the seed's API)."""

    text: str
    id: str = Field(description="`uuid` when the request sent one, else the request id.")


class GenerateEvent(BaseModel):
    """One `data:` event of POST /generate with `stream: true`; the last has usage."""

    text: str
    id: str
    finish_reason: Literal["stop", "length"] | None = None
    usage: Usage | None = None


class BatchGenerateOut(BaseModel):
    texts: list[str] = Field(description="One answer per prompt, in order.")
    id: str


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready", "unavailable"]
    database: Literal["ok", "unavailable"]
    models: dict[str, Literal["ready", "unavailable"]] = Field(
        description="Each enabled model: whether its Triton model is ready."
    )


ERROR_DESCRIPTIONS = {
    400: "Invalid request; `param` names the field at fault.",
    401: "No API key, or one that is unknown, revoked or expired.",
    404: "No such model, or one this key may not use (code model_not_found).",
    413: "The body is larger than GATEWAY_MAX_BODY_BYTES.",
    429: "A limit of the key is reached (requests or tokens per minute, concurrency, "
    "budget); retry-after says when to retry.",
    500: "The model failed while generating, or the gateway did.",
    503: "Triton is unreachable or not ready; retry-after says when to retry.",
    504: "The request's deadline passed before generation finished.",
}
# What every inference route may answer besides its success.
INFERENCE_ERRORS = (400, 401, 404, 413, 429, 500, 503, 504)


class ResponseUsage(BaseModel):
    input_tokens: int
    input_tokens_details: dict[str, int]
    output_tokens: int
    output_tokens_details: dict[str, int] = Field(description="reasoning_tokens among them.")
    total_tokens: int


class ResponseObject(BaseModel):
    """A Responses API answer (OpenAI's `response` object; docs/openai-compat.md)."""

    id: str = Field(description="resp_…")
    object: Literal["response"]
    created_at: int
    status: Literal["completed", "incomplete", "failed", "in_progress"]
    error: dict[str, Any] | None
    incomplete_details: dict[str, Any] | None
    instructions: str | None
    model: str
    output: list[dict[str, Any]] = Field(
        description="Items: message (output_text), function_call, reasoning."
    )
    tools: list[dict[str, Any]]
    tool_choice: Any
    parallel_tool_calls: bool
    temperature: float | None
    top_p: float | None
    metadata: dict[str, str]
    store: bool
    previous_response_id: str | None
    text: dict[str, Any]
    usage: ResponseUsage | None


class ResponseStreamEvent(BaseModel):
    """One event of a streamed Responses answer (`event: <type>` names it too)."""

    type: str = Field(description="response.created, response.output_text.delta, …")
    sequence_number: int


class ResponseDeleted(BaseModel):
    id: str
    object: Literal["response"]
    deleted: Literal[True]


class ResponseItemList(BaseModel):
    object: Literal["list"]
    data: list[dict[str, Any]]
    first_id: str | None
    last_id: str | None
    has_more: bool


@dataclass(frozen=True)
class RouteDoc:
    """One operation's document: its body, its stream's events, its errors."""

    operation_id: str
    body: type[BaseModel]
    errors: tuple[int, ...] = ()
    events: type[BaseModel] | None = None  # the `data:` events with `stream: true`
    status_bodies: tuple[tuple[int, type[BaseModel], str], ...] = ()  # non-envelope answers
    done: bool = True  # the stream ends with `data: [DONE]` (not the Responses API's)


ROUTES: dict[tuple[str, str], RouteDoc] = {
    ("get", "/health"): RouteDoc("health", Health),
    ("get", "/health/ready"): RouteDoc(
        "readiness",
        Readiness,
        status_bodies=((503, Readiness, "Nothing can be served: database or every model down."),),
    ),
    ("post", "/generate"): RouteDoc("generate", GenerateOut, INFERENCE_ERRORS, GenerateEvent),
    ("post", "/batch_generate"): RouteDoc("batchGenerate", BatchGenerateOut, INFERENCE_ERRORS),
    ("get", "/v1/models"): RouteDoc("listModels", ModelList, (401, 500)),
    ("get", "/v1/models/{model_id}"): RouteDoc("retrieveModel", Model, (401, 404, 500)),
    ("post", "/v1/chat/completions"): RouteDoc(
        "createChatCompletion", ChatCompletion, INFERENCE_ERRORS, ChatCompletionChunk
    ),
    ("post", "/v1/completions"): RouteDoc(
        "createCompletion", Completion, INFERENCE_ERRORS, Completion
    ),
    ("post", "/v1/responses"): RouteDoc(
        "createResponse", ResponseObject, INFERENCE_ERRORS, ResponseStreamEvent, done=False
    ),
    ("get", "/v1/responses/{response_id}"): RouteDoc(
        "getResponse", ResponseObject, (400, 401, 404, 500)
    ),
    ("delete", "/v1/responses/{response_id}"): RouteDoc(
        "deleteResponse", ResponseDeleted, (401, 404, 500)
    ),
    ("get", "/v1/responses/{response_id}/input_items"): RouteDoc(
        "listInputItems", ResponseItemList, (400, 401, 404, 500)
    ),
    ("post", "/v1/responses/{response_id}/cancel"): RouteDoc(
        "cancelResponse", ResponseObject, (400, 401, 404, 500)
    ),
}
# Operations this table does not know yet (a route added later) still get the envelope
# for what any route may answer: a bad request, a missing key, a server error.
DEFAULT_ERRORS = (400, 401, 500)


def _schemas() -> dict[str, Any]:
    models = {ErrorResponse, *(m for doc in ROUTES.values() for m in _models(doc))}
    _, top = models_json_schema(
        [(model, "serialization") for model in sorted(models, key=lambda m: m.__name__)],
        ref_template=REF_PREFIX + "{model}",
    )
    return top.get("$defs", {})


def _models(doc: RouteDoc) -> list[type[BaseModel]]:
    return [doc.body, *([doc.events] if doc.events else []), *(m for _, m, _ in doc.status_bodies)]


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": REF_PREFIX + model.__name__}


def _success(doc: RouteDoc) -> dict[str, Any]:
    content: dict[str, Any] = {"application/json": {"schema": _ref(doc.body)}}
    description = "OK"
    if doc.events is not None:
        content["text/event-stream"] = {
            "schema": {
                "type": "string",
                "description": f"Server-sent events: `data: <{doc.events.__name__}>` "
                + (
                    "lines, then `data: [DONE]`."
                    if doc.done
                    else "lines, each after its `event:` line."
                ),
            }
        }
        description = f"OK. With `stream: true`, server-sent {doc.events.__name__} events."
    return {"description": description, "content": content}


def _error(status: int) -> dict[str, Any]:
    return {
        "description": ERROR_DESCRIPTIONS[status],
        "content": {"application/json": {"schema": _ref(ErrorResponse)}},
    }


def _document(operation: dict[str, Any], doc: RouteDoc | None) -> None:
    responses = operation.setdefault("responses", {})
    if doc is None:
        for status in DEFAULT_ERRORS:
            responses.setdefault(status, _error(status))
        return
    operation["operationId"] = doc.operation_id
    responses[200] = _success(doc)
    for status, model, description in doc.status_bodies:
        responses[status] = {
            "description": description,
            "content": {"application/json": {"schema": _ref(model)}},
        }
    for status in doc.errors:
        responses[status] = _error(status)


def document_responses(schema: S) -> S:
    """Add every operation's response bodies and error envelopes to `schema` (in place)."""
    components = schema.setdefault("components", {})
    components.setdefault("schemas", {}).update(_schemas())
    for path, operations in schema.get("paths", {}).items():
        for method, operation in operations.items():
            _document(operation, ROUTES.get((method, path)))
    return schema
