"""/v1/responses: OpenAI's Responses API on the shared runner, and its stored answers.

A request is checked as OpenAI checks it, its conversation (earlier turns rebuilt from
storage by `previous_response_id`, then `input`) becomes chat messages, and chat's
endpoint prepares the generation: the same prompt rendering, tool formats, guided
decoding and images as /v1/chat/completions. Only the wire format differs
(responses_shaper.py). docs/openai-compat.md lists what is supported and refused.
"""

from __future__ import annotations

import logging
from typing import Any

from django.http import HttpRequest, HttpResponse
from ninja import Router

from llmgateway.api.chat import ChatEndpoint, chat_validate
from llmgateway.api.openai_schemas import ChatCompletionIn
from llmgateway.api.respond import json_response, respond
from llmgateway.api.responses_input import chat_messages, input_normalize, invalid_value
from llmgateway.api.responses_schemas import ResponseCreateIn, responses_validate
from llmgateway.api.responses_shaper import ResponsesShaper
from llmgateway.api.responses_tools import tool_choice_chat, tools_check
from llmgateway.api.storable import nul_refused
from llmgateway.errors import APIError, invalid
from llmgateway.models import StoredResponse
from llmgateway.responses_store import (
    conversation_of,
    items_page,
    response_delete,
    response_get,
    response_save,
    responses_storable,
)
from llmgateway.runner.endpoint import Prepared, Target
from llmgateway.textgen.reasoning import reasoning_format

logger = logging.getLogger(__name__)
router = Router(tags=["openai"])

JSON_WORD_MISSING = (
    "Response input messages must contain the word 'json' in some form to use 'text.format' "
    "of type 'json_object'."
)
LOGPROBS = "message.output_text.logprobs"
# Chat's parameter names as the Responses request calls them.
PARAMS = {
    "messages": "input",
    "max_completion_tokens": "max_output_tokens",
    "response_format": "text.format",
}


def _response_format(payload: ResponseCreateIn) -> dict[str, Any] | None:
    fmt = payload.text.format if payload.text else None
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return {"type": "json_object"}
    schema = {"name": fmt.name, "schema": fmt.json_schema, "strict": fmt.strict}
    return {"type": "json_schema", "json_schema": schema}


def _renamed(error: APIError) -> APIError:
    """A chat check's error, its parameter named as the Responses request names it."""
    param = error.param or ""
    head, dot, rest = param.partition(".")
    name = head.split("[")[0]
    if name in PARAMS:
        error.param = PARAMS[name] + head[len(name) :] + dot + rest
    if error.message.startswith("'messages' must contain the word 'json'"):
        error.message = JSON_WORD_MISSING
    error.message = error.message.replace("response_format", "text.format")
    return error


def chat_payload(
    payload: ResponseCreateIn, items: list[dict[str, Any]], functions: list[dict[str, Any]]
) -> ChatCompletionIn:
    """The request as chat's endpoint takes it (checked as chat checks it)."""
    body: dict[str, Any] = {
        "model": payload.model,
        "messages": chat_messages(items, payload.instructions),
        "stream": payload.stream,
    }
    if not body["messages"]:
        raise invalid("The input has no messages to answer.", "input")
    optional = {
        "max_completion_tokens": payload.max_output_tokens,
        "temperature": payload.temperature,
        "top_p": payload.top_p,
        "parallel_tool_calls": payload.parallel_tool_calls,
        "logprobs": True if LOGPROBS in (payload.include or ()) else None,
        "response_format": _response_format(payload),
        "user": payload.user,
    }
    if functions:
        optional["tools"] = [{"type": "function", "function": f} for f in functions]
        optional["tool_choice"] = tool_choice_chat(payload.tool_choice)
    body.update({k: v for k, v in optional.items() if v is not None})
    try:
        chat = ChatCompletionIn.model_validate(body)
        chat_validate(chat)
    except APIError as exc:
        raise _renamed(exc) from None
    except ValueError as exc:  # pydantic: a message the chat schema does not take
        raise invalid(f"The input could not be read as a conversation: {exc}", "input") from None
    return chat


class ResponsesEndpoint(ChatEndpoint):
    """Chat's endpoint (prompt, tools, guides, images) with the Responses wire format."""

    route = "/v1/responses"

    def __init__(
        self,
        chat: ChatCompletionIn,
        *,
        request: ResponseCreateIn,
        template: dict[str, Any],
        context: list[dict[str, Any]],
        owner_id: int | None,
    ) -> None:
        super().__init__(chat)
        self.request_in = request
        self.template = template
        self.context = context
        self.owner_id = owner_id
        self.responses_shaper: ResponsesShaper | None = None
        if template["store"] and request.stream:
            self.on_settle = self.stored

    async def check(self, target: Target) -> None:
        if self.payload.logprobs and reasoning_format(target.config.reasoning_format).reasons:
            # Which tokens are the answer's is not exact where a token straddles the
            # reasoning's end, so logprobs are not offered rather than offered approximately.
            raise invalid(
                f"include '{LOGPROBS}' is not supported with a reasoning model on this server.",
                "include",
            )
        await super().check(target)

    def shaper(self, target: Target, prepared: Prepared) -> ResponsesShaper:  # type: ignore[override]
        reasoning = self.request_in.reasoning
        self.responses_shaper = ResponsesShaper(
            generation=prepared.generation,
            template={**self.template, "model": target.config.name},
            plan=self.plan,
            continues_thought=self.continues_thought,
            reasoning=reasoning_format(target.config.reasoning_format),
            summary=bool(reasoning and (reasoning.summary or reasoning.generate_summary)),
            engine=target.engine,
            logprobs=bool(self.payload.logprobs),
        )
        return self.responses_shaper

    async def stored(self, outcome: Any = None) -> None:
        """Keep the answer (`store`), once it ended completed or incomplete.

        A database that fails here costs the stored copy, not the answer the client
        was charged for (logged; a later GET answers 404)."""
        shaper = self.responses_shaper
        if shaper is None or shaper.final is None:
            return  # failed or cut off: nothing to continue from
        try:
            await response_save(owner_id=self.owner_id, body=shaper.final, context=self.context)
        except Exception:
            logger.exception("storing response %s failed", shaper.id)


def _owner(request: HttpRequest) -> int | None:
    caller = getattr(request, "auth", None)
    return caller.owner_id if caller is not None else None


def _tools_echo(functions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "type": "function",
            "name": f["name"],
            "description": f.get("description"),
            "parameters": f.get("parameters"),
            "strict": f.get("strict", True) is not False,
        }
        for f in functions
    ]


def _template(
    payload: ResponseCreateIn, functions: list[dict[str, Any]], store: bool
) -> dict[str, Any]:
    """The Response's fields that echo the request, after OpenAI's defaults."""
    text = payload.text.model_dump(by_alias=True, exclude_none=True) if payload.text else {}
    text.setdefault("format", {"type": "text"})
    reasoning = payload.reasoning
    return {
        "instructions": payload.instructions,
        "max_output_tokens": payload.max_output_tokens,
        "max_tool_calls": payload.max_tool_calls,
        "model": payload.model,
        "parallel_tool_calls": payload.parallel_tool_calls is not False,
        "previous_response_id": payload.previous_response_id,
        "reasoning": {
            "effort": reasoning.effort if reasoning else None,
            "summary": (reasoning.summary or reasoning.generate_summary) if reasoning else None,
        },
        "safety_identifier": payload.safety_identifier,
        "prompt_cache_key": payload.prompt_cache_key,
        "service_tier": "default",
        "store": store,
        "temperature": payload.temperature if payload.temperature is not None else 1.0,
        "text": text,
        "tool_choice": payload.tool_choice if payload.tool_choice is not None else "auto",
        "tools": _tools_echo(functions),
        "top_logprobs": payload.top_logprobs or 0,
        "top_p": payload.top_p if payload.top_p is not None else 1.0,
        "truncation": "disabled",
        "user": payload.user,
        "metadata": payload.metadata or {},
    }


async def _earlier(payload: ResponseCreateIn, owner_id: int | None) -> list[dict[str, Any]]:
    """The conversation `previous_response_id` continues (empty without one)."""
    previous = payload.previous_response_id
    if previous is None:
        return []
    stored = await response_get(owner_id=owner_id, response_id=previous)
    if stored is None:
        raise invalid(
            f"Previous response with id '{previous}' not found.",
            "previous_response_id",
            "previous_response_not_found",
        )
    return conversation_of(stored)


@router.post("/responses")
async def responses_create(request: HttpRequest, payload: ResponseCreateIn) -> HttpResponse:
    responses_validate(payload)
    functions = tools_check(payload)
    owner_id = _owner(request)
    earlier = await _earlier(payload, owner_id)
    context = [*earlier, *input_normalize(payload.input, earlier)]
    chat = chat_payload(payload, context, functions)
    store = payload.store and responses_storable()
    endpoint = ResponsesEndpoint(
        chat,
        request=payload,
        template=_template(payload, functions, store),
        context=context,
        owner_id=owner_id,
    )
    try:
        response = await respond(request, endpoint)
    except APIError as exc:
        if exc.code == "model_not_found":
            exc.status = 400  # the Responses API answers an unknown model with 400
        raise _renamed(exc) from exc.__cause__
    if store and not payload.stream:
        await endpoint.stored()
    return response


def _not_found(response_id: str) -> APIError:
    return APIError(404, f"Response with id '{response_id}' not found.", param="response_id")


async def _stored(request: HttpRequest, response_id: str) -> StoredResponse:
    if "\x00" in response_id:  # PostgreSQL refuses it in the lookup (storable.py)
        raise nul_refused("response_id")
    stored = await response_get(owner_id=_owner(request), response_id=response_id)
    if stored is None:
        raise _not_found(response_id)
    return stored


@router.get("/responses/{response_id}")
async def responses_retrieve(request: HttpRequest, response_id: str) -> HttpResponse:
    if request.GET.get("stream") == "true":
        raise invalid(
            "Streaming a stored response is only for background responses, which this "
            "server does not run.",
            "stream",
        )
    return json_response((await _stored(request, response_id)).body)


@router.delete("/responses/{response_id}")
async def responses_delete(request: HttpRequest, response_id: str) -> HttpResponse:
    if "\x00" in response_id:
        raise nul_refused("response_id")
    if not await response_delete(owner_id=_owner(request), response_id=response_id):
        raise _not_found(response_id)
    return json_response({"id": response_id, "object": "response", "deleted": True})


@router.get("/responses/{response_id}/input_items")
async def responses_input_items(request: HttpRequest, response_id: str) -> HttpResponse:
    query = request.GET
    order = query.get("order") or "desc"
    if order not in ("asc", "desc"):
        raise invalid_value(order, ("asc", "desc"), "order")
    try:
        limit = int(query.get("limit") or 20)
    except ValueError:
        limit = 0
    if not 1 <= limit <= 100:
        raise invalid("Invalid 'limit': expected an integer from 1 to 100.", "limit")
    stored = await _stored(request, response_id)
    page = items_page(
        stored.context,
        limit=limit,
        order=order,
        after=query.get("after"),
        before=query.get("before"),
    )
    return json_response(page)


@router.post("/responses/{response_id}/cancel")
async def responses_cancel(request: HttpRequest, response_id: str) -> HttpResponse:
    await _stored(request, response_id)
    raise invalid("Cannot cancel a synchronous response.", None)
