"""The seed's plain API: POST /generate and POST /batch_generate.

Compatible with fastapi_tritonserver's fields. Choices written down here:
- `prompt` is one user turn: the model's chat template wraps it when the
  tokenizer has one (as the seed did for qwen2-chat), else it is sent raw.
- `max_output_len` defaults to the model config's default_max_tokens.
- `timeout` is in seconds, capped by GATEWAY_REQUEST_TIMEOUT; it covers the whole
  request, images fetched and encoded included.
- `only_return_output: false` returns the prompt followed by the answer; left
  out (or true), only the answer, as the seed's README shows.
- `num_beams > 1` runs beam search and returns the best beam.
- `stream: true` sends server-sent events `{"text": <delta>, "id": ...}`, a last
  event with `finish_reason` and `usage`, then `data: [DONE]`.
"""

from __future__ import annotations

import time
from typing import Annotated

import orjson
from django.http import HttpRequest, HttpResponse
from ninja import Field, Router
from pydantic import AfterValidator, BaseModel

from llmgateway.accounting import Reservation, admit
from llmgateway.api.openai_schemas import INT32_MAX
from llmgateway.api.sse import event, sse_response
from llmgateway.engine import BatchGeneration, Engine, GenerationRequest, SamplingParams
from llmgateway.errors import invalid
from llmgateway.generation import (
    cancel_on_close,
    collect_settled,
    deadline_resolve,
    deltas,
    max_tokens_resolve,
    model_resolve,
    stream_settled,
    stream_start,
)
from llmgateway.models import ModelConfig
from llmgateway.vision.service import vision_inputs_load, vision_prompt_generate

router = Router(tags=["generate"])

MAX_BEAMS = 8
MAX_BATCH_PROMPTS = 64


def _image_ref(value: str) -> str:
    if not value.startswith(("data:image/", "http://", "https://", "/")):
        raise ValueError("an image must be a data:image URL, an http(s) URL or a path")
    return value


ImageRef = Annotated[str, AfterValidator(_image_ref)]


class SamplingFields(BaseModel):
    model: str | None = None
    max_output_len: Annotated[int, Field(ge=1)] | None = None
    num_beams: Annotated[int, Field(ge=1, le=MAX_BEAMS)] = 1
    repetition_penalty: Annotated[float, Field(gt=0, le=2)] | None = None
    top_k: Annotated[int, Field(ge=-1, le=INT32_MAX)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    random_seed: int | None = None
    stop_words: list[str] | None = None
    images: list[ImageRef] | None = None
    timeout: Annotated[float, Field(gt=0)] | None = None
    uuid: Annotated[str, Field(max_length=200)] | None = None
    only_return_output: bool | None = None


class GenerateIn(SamplingFields):
    prompt: Annotated[str, Field(min_length=1)]
    stream: bool = False


class BatchGenerateIn(SamplingFields):
    prompts: Annotated[
        list[Annotated[str, Field(min_length=1)]], Field(min_length=1, max_length=MAX_BATCH_PROMPTS)
    ]


def _prompt_ids(engine: Engine, prompt: str) -> list[int]:
    text = engine.text
    if text.has_chat_template:
        prompt = text.render_chat([{"role": "user", "content": prompt}])
    return text.encode(prompt)


def _request(
    payload: SamplingFields,
    *,
    config: ModelConfig,
    prompt_ids: list[int],
    request_id: str,
    stream: bool,
) -> GenerationRequest:
    max_tokens = max_tokens_resolve(
        config=config,
        requested=payload.max_output_len,
        prompt_tokens=len(prompt_ids),
        param="max_output_len",
    )
    top_k = payload.top_k if payload.top_k is not None else config.default_top_k
    params = SamplingParams(
        max_tokens=max_tokens,
        temperature=payload.temperature
        if payload.temperature is not None
        else config.default_temperature,
        top_p=payload.top_p if payload.top_p is not None else config.default_top_p,
        top_k=max(top_k, 0)
        if top_k is not None
        else None,  # the seed's -1 means "off", TRT-LLM's 0
        repetition_penalty=payload.repetition_penalty
        if payload.repetition_penalty is not None
        else config.default_repetition_penalty,
        presence_penalty=payload.presence_penalty,
        seed=payload.random_seed,
        beam_width=payload.num_beams,
        stop=tuple(payload.stop_words or ()),
    )
    return GenerationRequest(
        prompt_ids=prompt_ids,
        params=params,
        request_id=request_id,
        deadline=deadline_resolve(payload.timeout),
        stream=stream,
    )


def _prefix(payload: SamplingFields, prompt: str) -> str:
    return prompt if payload.only_return_output is False else ""


def _apply_headers(response: HttpResponse, headers: dict[str, str]) -> HttpResponse:
    for name, value in headers.items():
        response[name] = value
    return response


@router.post("/generate")
async def generate(request: HttpRequest, payload: GenerateIn) -> HttpResponse:
    started = time.monotonic()
    config, engine = await model_resolve(name=payload.model)
    request_id = payload.uuid or request.request_id
    vision = None
    if payload.images:
        vision = vision_prompt_generate(
            config=config, engine=engine, prompt=payload.prompt, images=payload.images
        )
    prompt_ids = vision.prompt_ids if vision else _prompt_ids(engine, payload.prompt)
    gen_request = _request(
        payload, config=config, prompt_ids=prompt_ids, request_id=request_id, stream=payload.stream
    )
    generation = engine.generate(gen_request)
    admission = await admit(
        request,
        Reservation(
            model=config.name,
            endpoint="/generate",
            prompt_tokens=len(prompt_ids),
            max_tokens=gen_request.params.max_tokens,
            stream=payload.stream,
        ),
        # A vision request's inputs exist only after its images load: no early start.
        early=generation if vision is None else None,
    )
    if vision is not None:
        await vision_inputs_load(vision, request=gen_request, admission=admission)
    prefix = _prefix(payload, payload.prompt)
    if payload.stream:
        await stream_start(generation, admission, started=started)
        finish_reasons: dict[int, str] = {}
        body = stream_settled(
            _chunks(generation, request_id, prefix, finish_reasons),
            generation=generation,
            admission=admission,
            started=started,
            finish_reasons=finish_reasons,
        )
        response = sse_response(body)
        cancel_on_close(response, generation)
        return _apply_headers(response, admission.headers)
    (result,) = await collect_settled(generation, admission, started=started)
    return _apply_headers(
        _json({"text": prefix + result.text, "id": request_id}), admission.headers
    )


async def _chunks(generation, request_id: str, prefix: str, finish_reasons: dict[int, str]):
    if prefix:
        yield event({"text": prefix, "id": request_id})
    async with deltas(generation) as stream:
        async for delta in stream:
            if delta.text:
                yield event({"text": delta.text, "id": request_id})
            if delta.finish_reason is not None:
                finish_reasons[delta.index] = delta.finish_reason
    yield event(
        {
            "text": "",
            "id": request_id,
            "finish_reason": finish_reasons.get(0),
            "usage": generation.usage.as_dict(),
        }
    )


@router.post("/batch_generate")
async def batch_generate(request: HttpRequest, payload: BatchGenerateIn) -> HttpResponse:
    started = time.monotonic()
    config, engine = await model_resolve(name=payload.model)
    request_id = payload.uuid or request.request_id
    if payload.images:
        raise invalid(
            "/batch_generate does not take images: send one /generate request per prompt "
            "and its images.",
            "images",
        )
    gen_requests = [
        _request(
            payload,
            config=config,
            prompt_ids=_prompt_ids(engine, prompt),
            request_id=f"{request_id}|{i}",
            stream=False,
        )
        for i, prompt in enumerate(payload.prompts)
    ]
    batch = BatchGeneration([engine.generate(r) for r in gen_requests])
    admission = await admit(
        request,
        Reservation(
            model=config.name,
            endpoint="/batch_generate",
            prompt_tokens=sum(len(r.prompt_ids) for r in gen_requests),
            max_tokens=sum(r.params.max_tokens for r in gen_requests),
            stream=False,
        ),
        early=batch,
    )
    results = await collect_settled(batch, admission, started=started)
    texts = [_prefix(payload, p) + r.text for p, r in zip(payload.prompts, results, strict=True)]
    return _apply_headers(_json({"texts": texts, "id": request_id}), admission.headers)


def _json(body: dict) -> HttpResponse:
    return HttpResponse(orjson.dumps(body), content_type="application/json")
