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

from collections.abc import AsyncIterator
from typing import Annotated, Any

from django.http import HttpRequest, HttpResponse
from ninja import Field, Router
from pydantic import AfterValidator, BaseModel

from llmgateway.api.caps import sequences_cap, stops_cap
from llmgateway.api.openai_schemas import INT32_MAX
from llmgateway.api.respond import respond
from llmgateway.api.sse import DONE, event, failure
from llmgateway.engine import BatchGeneration, Engine, Generation, GenerationRequest, SamplingParams
from llmgateway.errors import APIError, invalid
from llmgateway.limits import (
    beams_check,
    deadline_resolve,
    max_tokens_resolve,
    prompt_chars_check,
)
from llmgateway.models import ModelConfig
from llmgateway.runner.endpoint import ChoiceResult, Endpoint, Prepared, Target, deltas
from llmgateway.vision.service import vision_prompt_generate

router = Router(tags=["generate"])

MAX_BATCH_PROMPTS = 64


def _image_ref(value: str) -> str:
    if not value.startswith(("data:image/", "http://", "https://", "/")):
        raise ValueError("an image must be a data:image URL, an http(s) URL or a path")
    return value


ImageRef = Annotated[str, AfterValidator(_image_ref)]


class SamplingFields(BaseModel):
    model: str | None = None
    max_output_len: Annotated[int, Field(ge=1)] | None = None
    # Its ceilings: the Triton model's max_beam_width (beams_fit) and GATEWAY_MAX_SEQUENCES.
    num_beams: Annotated[int, Field(ge=1)] = 1
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


def _prompt_ids(config: ModelConfig, engine: Engine, prompt: str, param: str) -> list[int]:
    text = engine.text
    if text.has_chat_template:
        prompt = text.render_chat([{"role": "user", "content": prompt}])
    prompt_chars_check(config=config, text=text, chars=len(prompt), param=param)
    return text.encode(prompt)


def sampling_caps(payload: SamplingFields) -> None:
    stops_cap("stop_words", payload.stop_words)
    sequences_cap("num_beams", payload.num_beams)


async def beams_fit(payload: SamplingFields, target: Target) -> None:
    """More beams than the Triton model's max_beam_width: a 400 naming num_beams."""
    if payload.num_beams > 1:
        spec = await target.engine.spec()
        beams_check(parameters=spec.parameters, beams=payload.num_beams, param="num_beams")


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


class GenerateEndpoint(Endpoint):
    route = "/generate"

    payload: GenerateIn
    request_id = ""

    def prompt_lengths(self) -> list[int]:
        return [len(self.payload.prompt)]

    async def check(self, target: Target) -> None:
        await beams_fit(self.payload, target)

    def prepare(self, target: Target, request_id: str) -> Prepared:
        payload, config, engine = self.payload, target.config, target.engine
        self.request_id = payload.uuid or request_id
        vision = None
        if payload.images:
            vision = vision_prompt_generate(
                config=config, engine=engine, prompt=payload.prompt, images=payload.images
            )
        prompt_ids = (
            vision.prompt_ids if vision else _prompt_ids(config, engine, payload.prompt, "prompt")
        )
        gen_request = _request(
            payload,
            config=config,
            prompt_ids=prompt_ids,
            request_id=self.request_id,
            stream=payload.stream,
        )
        return Prepared(engine.generate(gen_request), [gen_request], vision)

    def shaper(self, target: Target, prepared: Prepared) -> GenerateShaper:
        prefix = _prefix(self.payload, self.payload.prompt)
        return GenerateShaper(prepared.generation, self.request_id, [prefix])


class BatchGenerateEndpoint(Endpoint):
    route = "/batch_generate"
    prompt_param = "prompts"
    payload: BatchGenerateIn
    request_id = ""

    def prompt_lengths(self) -> list[int]:
        return [len(prompt) for prompt in self.payload.prompts]

    async def check(self, target: Target) -> None:
        await beams_fit(self.payload, target)
        if self.payload.images:
            raise invalid(
                "/batch_generate does not take images: send one /generate request per prompt "
                "and its images.",
                "images",
            )

    def prepare(self, target: Target, request_id: str) -> Prepared:
        payload, engine = self.payload, target.engine
        self.request_id = payload.uuid or request_id
        gen_requests = [
            _request(
                payload,
                config=target.config,
                prompt_ids=_prompt_ids(target.config, engine, prompt, "prompts"),
                request_id=f"{self.request_id}|{i}",
                stream=False,
            )
            for i, prompt in enumerate(payload.prompts)
        ]
        generation = BatchGeneration([engine.generate(r) for r in gen_requests])
        return Prepared(generation, gen_requests)

    def shaper(self, target: Target, prepared: Prepared) -> GenerateShaper:
        prefixes = [_prefix(self.payload, prompt) for prompt in self.payload.prompts]
        return GenerateShaper(prepared.generation, self.request_id, prefixes, batch=True)


class GenerateShaper:
    """The seed's answers: {"text", "id"} ({"texts", "id"} for a batch), or a stream of
    {"text", "id"} events ending with the finish reason and usage, then [DONE]."""

    def __init__(
        self,
        generation: Generation | BatchGeneration,
        request_id: str,
        prefixes: list[str],
        *,
        batch: bool = False,
    ) -> None:
        self.generation = generation
        self.request_id = request_id
        self.prefixes = prefixes  # per prompt: echoed before its answer, or ""
        self.batch = batch
        self.finish_reasons: dict[int, str] = {}

    def response(self, results: list[ChoiceResult]) -> dict[str, Any]:
        texts = [prefix + r.text for prefix, r in zip(self.prefixes, results, strict=True)]
        if self.batch:
            return {"texts": texts, "id": self.request_id}
        return {"text": texts[0], "id": self.request_id}

    async def chunks(self) -> AsyncIterator[bytes]:
        request_id, (prefix,) = self.request_id, self.prefixes
        if prefix:
            yield event({"text": prefix, "id": request_id})
        async with deltas(self.generation) as stream:
            async for delta in stream:
                if delta.text:
                    yield event({"text": delta.text, "id": request_id})
                if delta.finish_reason is not None:
                    self.finish_reasons[delta.index] = delta.finish_reason
        last = {
            "text": "",
            "id": request_id,
            "finish_reason": self.finish_reasons.get(0),
            "usage": self.generation.usage.as_dict(),
        }
        yield event(last) + DONE

    def failed(self, error: APIError) -> bytes:
        return failure(error)


@router.post("/generate")
async def generate(request: HttpRequest, payload: GenerateIn) -> HttpResponse:
    sampling_caps(payload)
    return await respond(request, GenerateEndpoint(payload))


@router.post("/batch_generate")
async def batch_generate(request: HttpRequest, payload: BatchGenerateIn) -> HttpResponse:
    sampling_caps(payload)
    return await respond(request, BatchGenerateEndpoint(payload))
