"""OpenAI's API: /v1/models, /v1/chat/completions, /v1/completions.

Wire format as OpenAI sends it (docs/openai-compat.md lists every choice made
here). Each route parses, calls the services below (prompt building, the
generation request), and shapes the response; streams are server-sent events
ending in `data: [DONE]`, with an error event before it if generation fails.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import AsyncIterator
from typing import Any, Protocol

import orjson
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from ninja import Router

from llmgateway.accounting import admit, model_visible
from llmgateway.api.openai_responses import ChatShaper, CompletionShaper, Job
from llmgateway.api.openai_schemas import (
    ChatCompletionIn,
    CompletionIn,
    ContentPart,
    FunctionCall,
    FunctionDef,
    Message,
    NamedFunction,
    NamedToolChoice,
    OpenAISchema,
    SamplingIn,
)
from llmgateway.api.sse import sse_response
from llmgateway.engine import (
    BatchGeneration,
    Engine,
    GenerationRequest,
    SamplingParams,
)
from llmgateway.errors import APIError, invalid, missing, model_not_found
from llmgateway.generation import (
    ChoiceResult,
    cancel_on_close,
    collect_settled,
    deadline_resolve,
    max_tokens_resolve,
    model_resolve,
    stream_settled,
    stream_start,
)
from llmgateway.models import ModelConfig
from llmgateway.services import model_get, model_list
from llmgateway.textgen.tokenizer import TextModel
from llmgateway.textgen.tools import prompt_render, tool_stops
from llmgateway.textgen.tools.messages import legacy_messages_convert
from llmgateway.textgen.tools.plan import ToolPlan
from llmgateway.vision.service import vision_chat_plan, vision_inputs_load

logger = logging.getLogger(__name__)

router = Router(tags=["openai"])

OWNED_BY = "llmgateway"
# OpenAI's default for the legacy completions endpoint.
COMPLETIONS_DEFAULT_MAX_TOKENS = 16


# ---- models ---------------------------------------------------------------------------


def _model_card(config: ModelConfig) -> dict[str, Any]:
    return {
        "id": config.name,
        "object": "model",
        "created": int(config.created_at.timestamp()) if config.created_at else 0,
        "owned_by": OWNED_BY,
        "max_model_len": config.context_length,
    }


@router.get("/models")
async def models_list(request: HttpRequest) -> HttpResponse:
    cards = [_model_card(c) for c in await model_list() if model_visible(request, c.name)]
    return _json({"object": "list", "data": cards})


@router.get("/models/{path:model_id}")
async def models_retrieve(request: HttpRequest, model_id: str) -> HttpResponse:
    config = await model_get(name=model_id)
    if config is None or not model_visible(request, model_id):
        raise model_not_found(model_id)
    return _json(_model_card(config))


# ---- shared services ------------------------------------------------------------------


def _log_ignored(payload: OpenAISchema, endpoint: str) -> None:
    extra = payload.model_extra
    if extra:
        logger.info("%s: ignoring unknown fields %s", endpoint, sorted(extra))


def sampling_validate(payload: SamplingIn) -> None:
    if payload.stream_options is not None and not payload.stream:
        raise invalid("stream_options is only allowed when stream is true.", "stream_options")
    if payload.logit_bias:
        raise invalid("logit_bias is not supported by this server.", "logit_bias")


def _stops(stop: str | list[str] | None) -> tuple[str, ...]:
    if stop is None:
        return ()
    return tuple(s for s in ([stop] if isinstance(stop, str) else stop) if s)


def _or(value: Any, default: Any) -> Any:
    return value if value is not None else default


def params_build(
    payload: SamplingIn,
    *,
    config: ModelConfig,
    max_tokens: int,
    extra_stops: tuple[str, ...] = (),
    logprobs: bool = False,
    guide: tuple[str, str | None] | None = None,
) -> SamplingParams:
    top_k = _or(payload.top_k, config.default_top_k)
    top_p = _or(payload.top_p, config.default_top_p)
    if top_p == 0:
        # A nucleus of probability mass 0 is the single most likely token: greedy.
        # TensorRT-LLM takes top_p in (0, 1], so it is said as top_k 1.
        top_p, top_k = None, 1
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=_or(payload.temperature, config.default_temperature),
        top_p=top_p,
        top_k=max(top_k, 0) if top_k is not None else None,  # -1 (vLLM's "off") is TRT-LLM's 0
        repetition_penalty=_or(payload.repetition_penalty, config.default_repetition_penalty),
        presence_penalty=payload.presence_penalty,
        frequency_penalty=payload.frequency_penalty,
        seed=payload.seed,
        min_tokens=payload.min_tokens,
        stop=_stops(payload.stop) + extra_stops,
        logprobs=logprobs,
        guide=guide,
    )


def _with_headers(response: HttpResponse, headers: dict[str, str]) -> HttpResponse:
    for name, value in headers.items():
        response[name] = value
    return response


def _json(body: dict[str, Any]) -> HttpResponse:
    return HttpResponse(orjson.dumps(body), content_type="application/json")


class Shaper(Protocol):
    def response(self, results: list[ChoiceResult]) -> dict[str, Any]: ...

    def chunks(self) -> AsyncIterator[bytes]: ...


async def job_run(request: HttpRequest, job: Job, engine: Engine, shaper: Shaper) -> HttpResponse:
    """Admit the job, then answer it: a stream, or the collected results."""
    started = time.monotonic()
    # Reach Triton before admitting, so a server that is down answers 503, not a 200 stream.
    await engine.spec()
    # A vision job's inputs exist only after its images load, so it cannot start early.
    admission = await admit(
        request, job.reservation, early=job.generation if job.vision is None else None
    )
    if job.vision is not None:
        await vision_inputs_load(job.vision, request=job.requests[0], admission=admission)
    if job.stream:
        await stream_start(job.generation, admission, started=started)
        body = stream_settled(
            shaper.chunks(),
            generation=job.generation,
            admission=admission,
            started=started,
            finish_reasons=job.finish_reasons,
        )
        response = sse_response(body)
        cancel_on_close(response, job.generation)
    else:
        results = await collect_settled(job.generation, admission, started=started)
        response = _json(shaper.response(results))
    return _with_headers(response, admission.headers)


# ---- chat completions -----------------------------------------------------------------


def chat_validate(payload: ChatCompletionIn) -> None:
    sampling_validate(payload)
    if payload.top_logprobs:
        if not payload.logprobs:
            raise invalid("top_logprobs requires logprobs to be true.", "top_logprobs")
        raise invalid(
            "top_logprobs is not supported: TensorRT-LLM returns only the chosen token's "
            "logprob. Use logprobs=true with top_logprobs 0 or unset.",
            "top_logprobs",
        )
    response_format_validate(payload)
    if payload.tools and payload.functions:
        raise invalid("Send either tools or functions, not both.", "functions")
    choice = payload.tool_choice
    if (choice == "required" or isinstance(choice, NamedToolChoice)) and not payload.tools:
        raise invalid("tool_choice requires tools to be given.", "tool_choice")
    if isinstance(choice, NamedToolChoice) and choice.function.name not in {
        t.function.name for t in payload.tools or []
    }:
        raise invalid(
            f"tool_choice names the function {choice.function.name!r}, which is not in tools.",
            "tool_choice",
        )
    legacy = payload.function_call
    if isinstance(legacy, NamedFunction) and legacy.name not in {
        f.name for f in payload.functions or []
    }:
        raise invalid(
            f"function_call names the function {legacy.name!r}, which is not in functions.",
            "function_call",
        )


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


def _content_text(message: Message, index: int) -> str | None:
    content = message.content
    if content is None or isinstance(content, str):
        return content
    return "\n".join(
        _part_text(part, message.role, f"messages[{index}].content[{position}]")
        for position, part in enumerate(content)
    )


def _part_text(part: ContentPart, role: str, param: str) -> str:
    """A text part's text; an assistant's refusal part reads as what the assistant said."""
    if part.type == "text":
        field, value = "text", part.text
    elif part.type == "refusal" and role == "assistant":
        field, value = "refusal", part.refusal
    elif part.type == "refusal":
        raise invalid("Content parts of type 'refusal' are only for assistant messages.", param)
    else:
        raise invalid(
            f"Content parts of type {part.type!r} are not supported by this model; "
            "send text parts.",
            param,
        )
    if value is None:
        raise missing(f"{param}.{field}")
    return value


# OpenAI's messages, spelling kept. Its checks of the message sequence name the
# message as "messages.[i].role", unlike its schema errors' "messages[i].role".
TOOL_WITHOUT_CALL = (
    "Invalid parameter: messages with role 'tool' must be a response to a preceeding "
    "message with 'tool_calls'."
)
TOOL_CALLS_UNANSWERED = (
    "An assistant message with 'tool_calls' must be followed by tool messages responding "
    "to each 'tool_call_id'. The following tool_call_ids did not have response messages: "
)


def _unanswered(index: int, ids: dict[str, None]) -> APIError:
    return invalid(TOOL_CALLS_UNANSWERED + ", ".join(ids), f"messages.[{index}].role")


def messages_normalize(messages: list[Message]) -> list[dict[str, Any]]:
    """OpenAI messages as plain dicts with string content, legacy function turns as tools.

    Checks what OpenAI checks of each role: `tool` messages carry a `tool_call_id` of
    the assistant message with `tool_calls` they follow (directly or after other
    answers to it), every one of its calls is answered before the next other message,
    and `function` messages carry a `name`.
    """
    out = []
    asked: dict[str, None] = {}  # the ids of the tool calls the messages so far answer
    unanswered: dict[str, None] = {}
    asked_at = 0
    for index, message in enumerate(messages):
        role = "system" if message.role == "developer" else message.role
        if role == "tool":
            call_id = message.tool_call_id
            if call_id is None:
                raise missing(f"messages[{index}].tool_call_id")
            if not asked:
                raise invalid(TOOL_WITHOUT_CALL, f"messages.[{index}].role")
            if call_id not in asked:
                raise invalid(
                    f"Invalid parameter: 'tool_call_id' of '{call_id}' not found in "
                    "'tool_calls' of previous message.",
                    f"messages.[{index}].tool_call_id",
                )
            unanswered.pop(call_id, None)
        else:
            if unanswered:
                raise _unanswered(asked_at, unanswered)
            asked = {}
            if role == "assistant" and message.tool_calls:
                asked = dict.fromkeys(call.id for call in message.tool_calls)
            unanswered, asked_at = dict(asked), index
            if role == "function" and message.name is None:
                raise missing(f"messages[{index}].name")
        content = _content_text(message, index)
        calls = message.tool_calls or message.function_call
        if content is None and (role in ("system", "user") or (role == "assistant" and not calls)):
            raise invalid(
                f"messages[{index}] of role {role!r} needs content.", f"messages[{index}]"
            )
        item: dict[str, Any] = {"role": role, "content": content}
        if message.tool_calls:
            item["tool_calls"] = [c.model_dump(exclude_none=True) for c in message.tool_calls]
        if message.function_call is not None:
            item["function_call"] = message.function_call.model_dump()
        if message.tool_call_id is not None:
            item["tool_call_id"] = message.tool_call_id
        out.append(item)
    if unanswered:
        raise _unanswered(asked_at, unanswered)
    return legacy_messages_convert(out)


def _field_quoted(model: OpenAISchema, field: str, text: TextModel) -> OpenAISchema:
    """`model` with its string `field` quoted: itself when there was nothing to quote."""
    value = getattr(model, field)
    quoted = text.quote(value) if value else value
    return model if quoted is value else model.model_copy(update={field: quoted})


def _call_quoted(call: FunctionCall, text: TextModel) -> FunctionCall:
    return _field_quoted(_field_quoted(call, "name", text), "arguments", text)


def messages_quote(messages: list[Message], text: TextModel) -> list[Message]:
    """The messages with control tokens in their text quoted (TextModel.quote): what a
    client sends as content or as a tool call's name and arguments is encoded as
    text, never as <|im_start|> and the like. (A model's earlier answer can carry
    such text back: the arguments it wrote come back in the next request.)"""
    out = []
    for message in messages:
        update: dict[str, Any] = {}
        if isinstance(message.content, str):
            message = _field_quoted(message, "content", text)
        elif message.content:
            parts = [
                _field_quoted(_field_quoted(part, "text", text), "refusal", text)
                for part in message.content
            ]
            if any(new is not old for new, old in zip(parts, message.content, strict=True)):
                update["content"] = parts
        if message.tool_calls:
            calls = [
                c.model_copy(update={"function": f})
                if (f := _call_quoted(c.function, text)) is not c.function
                else c
                for c in message.tool_calls
            ]
            if any(new is not old for new, old in zip(calls, message.tool_calls, strict=True)):
                update["tool_calls"] = calls
        if message.function_call is not None:
            call = _call_quoted(message.function_call, text)
            if call is not message.function_call:
                update["function_call"] = call
        out.append(message.model_copy(update=update) if update else message)
    return out


def chat_prepare(
    payload: ChatCompletionIn,
    *,
    config: ModelConfig,
    engine: Engine,
    request_id: str,
    guided: bool = False,
) -> Job:
    """`guided`: the model guides decoding and the request wants it (guide_check)."""
    plan = tool_plan_build(payload, config, engine.text)
    guide = response_guide(payload)
    if guided and plan.forced:
        call = call_guide(payload, plan)
        if call is not None:
            plan, guide = dataclasses.replace(plan, guided=True), call
    quoted = messages_quote(payload.messages, engine.text)
    vision = vision_chat_plan(config=config, engine=engine, messages=quoted)
    messages = messages_normalize(vision.messages if vision else quoted)
    try:
        rendered = prompt_render(engine.text, messages, plan)
    except Exception as exc:  # jinja's TemplateError, a template that expects other fields
        raise invalid(
            f"The messages could not be rendered for this model: {exc}", "messages"
        ) from exc
    vision_prompt = vision.finish(rendered.prompt) if vision else None
    prompt_ids = vision_prompt.prompt_ids if vision_prompt else engine.text.encode(rendered.prompt)
    requested, param = payload.max_completion_tokens, "max_completion_tokens"
    if requested is None:
        requested, param = payload.max_tokens, "max_tokens"
    max_tokens = max_tokens_resolve(
        config=config, requested=requested, prompt_tokens=len(prompt_ids), param=param
    )
    params = params_build(
        payload,
        config=config,
        max_tokens=max_tokens,
        extra_stops=tool_stops(plan),
        logprobs=bool(payload.logprobs),
        guide=guide,
    )
    gen_request = GenerationRequest(
        prompt_ids=prompt_ids,
        params=params,
        request_id=request_id,
        deadline=deadline_resolve(None),
        n=payload.n,
        stream=bool(payload.stream),
    )
    return Job(
        endpoint="/v1/chat/completions",
        model=config.name,
        generation=engine.generate(gen_request),
        requests=[gen_request],
        stream=bool(payload.stream),
        include_usage=bool(payload.stream_options and payload.stream_options.include_usage),
        logprobs=bool(payload.logprobs),
        plan=plan if plan.active else None,
        continues_thought=rendered.continues_thought,
        vision=vision_prompt,
    )


@router.post("/chat/completions")
async def chat_completions(request: HttpRequest, payload: ChatCompletionIn) -> HttpResponse:
    _log_ignored(payload, "/v1/chat/completions")
    chat_validate(payload)
    config, engine = await model_resolve(name=payload.model)
    guided = await guide_check(payload, config, engine)
    job = chat_prepare(
        payload, config=config, engine=engine, request_id=request.request_id, guided=guided
    )
    return await job_run(request, job, engine, ChatShaper(job, engine))


# ---- completions ----------------------------------------------------------------------


def completion_validate(payload: CompletionIn) -> None:
    sampling_validate(payload)
    if payload.suffix is not None:
        raise invalid("suffix is not supported by this server.", "suffix")
    if payload.best_of is not None and payload.best_of != payload.n:
        raise invalid("best_of is not supported; leave it unset or equal to n.", "best_of")
    if payload.logprobs is not None and payload.logprobs > 1:
        raise invalid(
            "logprobs above 1 is not supported: TensorRT-LLM returns only the chosen token's "
            "logprob.",
            "logprobs",
        )
    if payload.logprobs is not None and payload.echo:
        raise invalid("echo with logprobs is not supported (no prompt logprobs).", "echo")


def _prompts(payload: CompletionIn, engine: Engine) -> list[tuple[str, list[int]]]:
    """(text, ids) per prompt; token-id prompts are checked against the vocabulary."""
    prompt = payload.prompt
    if isinstance(prompt, str):
        return [(prompt, engine.text.encode(prompt))]
    if isinstance(prompt[0], str):
        return [(p, engine.text.encode(p)) for p in prompt]  # type: ignore[arg-type]
    lists = [prompt] if isinstance(prompt[0], int) else prompt
    vocab = len(engine.text.tokenizer)
    out = []
    for ids in lists:
        if any(i >= vocab for i in ids):  # type: ignore[union-attr]
            raise invalid(f"Token ids in the prompt must be below {vocab}.", "prompt")
        out.append((engine.text.tokenizer.decode(ids), list(ids)))  # type: ignore[arg-type]
    return out


def completion_prepare(
    payload: CompletionIn, *, config: ModelConfig, engine: Engine, request_id: str
) -> Job:
    prompts = _prompts(payload, engine)
    logprobs = payload.logprobs is not None
    requests = []
    for number, (_, ids) in enumerate(prompts):
        max_tokens = max_tokens_resolve(
            config=config,
            requested=_or(payload.max_tokens, COMPLETIONS_DEFAULT_MAX_TOKENS),
            prompt_tokens=len(ids),
            param="max_tokens",
            prompt_param="prompt",
        )
        requests.append(
            GenerationRequest(
                prompt_ids=ids,
                params=params_build(
                    payload, config=config, max_tokens=max_tokens, logprobs=logprobs
                ),
                request_id=request_id if len(prompts) == 1 else f"{request_id}-p{number}",
                deadline=deadline_resolve(None),
                n=payload.n,
                stream=bool(payload.stream),
            )
        )
    generations = [engine.generate(r) for r in requests]
    return Job(
        endpoint="/v1/completions",
        model=config.name,
        generation=generations[0] if len(generations) == 1 else BatchGeneration(generations),
        requests=requests,
        stream=bool(payload.stream),
        include_usage=bool(payload.stream_options and payload.stream_options.include_usage),
        logprobs=logprobs,
        echo=[text if payload.echo else "" for text, _ in prompts for _ in range(payload.n)],
    )


@router.post("/completions")
async def completions(request: HttpRequest, payload: CompletionIn) -> HttpResponse:
    _log_ignored(payload, "/v1/completions")
    completion_validate(payload)
    config, engine = await model_resolve(name=payload.model)
    job = completion_prepare(payload, config=config, engine=engine, request_id=request.request_id)
    return await job_run(request, job, engine, CompletionShaper(job, engine))
