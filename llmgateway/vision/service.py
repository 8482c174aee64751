"""Images in a request: plan the prompt (an endpoint's prepare), then load the images
into it (the runner's load phase, after admission).

Two steps, so that nothing is fetched or encoded for a request that admission
(keys, quotas) turns away:

    vision = vision_prompt_generate(config=..., engine=..., prompt=..., images=...)
    # or, for chat messages: chat = vision_chat_plan(config=..., engine=..., messages=...)
    #     render chat.messages as usual; vision = chat.finish(rendered_text)
    ... prompt_ids = vision.prompt_ids; admitted with len(prompt_ids) ...
    await vision_inputs_load(vision, request=gen_request)

The prompt ids already hold every image position, so `len(prompt_ids)` (and so
usage.prompt_tokens) counts them. Refusals become 400s naming the field; a
misconfigured model becomes 503 model_misconfigured. Loading runs against the
request's deadline (GenerationRequest.deadline), which generation then gets what
is left of: running out while fetching or encoding is the usual 504 `timeout`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from django.conf import settings

from llmgateway.engine import Engine, GenerationRequest
from llmgateway.errors import invalid, model_misconfigured
from llmgateway.models import ModelConfig
from llmgateway.triton.errors import DeadlineExceeded
from llmgateway.vision.encoder import features_encode
from llmgateway.vision.intake import ImageRefused, image_bytes
from llmgateway.vision.preprocess import images_preprocess
from llmgateway.vision.prompt import (
    Sentinels,
    VisionConfigError,
    image_digest,
    prompt_ids,
    table_inputs,
    vision_tokens,
)

TABLE_INPUT = "prompt_embedding_table"


@dataclass(slots=True)
class VisionPrompt:
    """A prompt with image spans in place; `vision_inputs_load` fetches what fills them."""

    config: ModelConfig
    engine: Engine
    prompt_ids: list[int]
    sources: list[tuple[str, str]] = field(default_factory=list)  # (image source, param)

    @property
    def image_count(self) -> int:
        return len(self.sources)


@dataclass(slots=True)
class VisionChat:
    """Messages with their images replaced by placeholders, waiting to be rendered.

    Render `messages` exactly as text-only messages are rendered (chat template,
    tools and all), then `finish(rendered)` tokenizes the text and puts each
    image's span where its placeholder landed.
    """

    config: ModelConfig
    engine: Engine
    messages: list[Any]
    sources: list[tuple[str, str]]
    sentinels: Sentinels

    def finish(self, rendered: str) -> VisionPrompt:
        try:
            ids = prompt_ids(
                text=self.engine.text,
                tokens=vision_tokens(self.engine.text),
                rendered=rendered,
                sentinels=self.sentinels,
                image_count=len(self.sources),
                image_tokens=self.config.image_tokens,
            )
        except VisionConfigError as exc:
            raise model_misconfigured() from exc
        return VisionPrompt(
            config=self.config, engine=self.engine, prompt_ids=ids, sources=self.sources
        )


def vision_chat_plan(
    *, config: ModelConfig, engine: Engine, messages: list[Any], param: str = "messages"
) -> VisionChat | None:
    """OpenAI messages whose content may hold `image_url` parts; None if none do.

    A message with image parts gets string content in Qwen-VL's layout: each image
    as `Picture N: <img>…</img>\n`, text parts as they are, in part order. Images
    are numbered across the whole conversation. Messages may be dicts or pydantic
    models (copied, never changed). A model that takes no images → 400 naming the
    first image part.
    """
    sources = [
        (_image_url(part), f"{param}[{i}].content[{j}]")
        for i, message in enumerate(messages)
        if isinstance(_get(message, "content"), list)
        for j, part in enumerate(_get(message, "content"))
        if _get(part, "type") == "image_url"
    ]
    return _chat(config, engine, messages, sources) if sources else None


def vision_prompt_generate(
    *, config: ModelConfig, engine: Engine, prompt: str, images: list[str], param: str = "images"
) -> VisionPrompt:
    """/generate: the images as `Picture N:` lines before the prompt, in one user turn,
    wrapped in the chat template when the tokenizer has one (as text prompts are)."""
    content: list[dict[str, Any]] = [
        {"type": "image_url", "image_url": {"url": image}} for image in images
    ]
    content.append({"type": "text", "text": prompt})
    if not config.accepts_images:
        raise invalid(f"The model `{config.name}` does not accept images.", param)
    sources = [(image, f"{param}[{i}]") for i, image in enumerate(images)]
    chat = _chat(config, engine, [{"role": "user", "content": content}], sources)
    text = engine.text
    try:
        rendered = (
            text.render_chat(chat.messages)
            if text.has_chat_template
            else chat.messages[0]["content"]
        )
    except Exception as exc:  # jinja's TemplateError and friends
        raise model_misconfigured() from exc
    return chat.finish(rendered)


async def vision_inputs_load(vision: VisionPrompt, *, request: GenerationRequest) -> None:
    """Fetch, preprocess and encode the images into `request.extra_inputs`.

    Call it after admission (the runner settles a request it fails, as nothing was
    generated). Refusals are APIErrors (400 naming the image, 503 misconfigured);
    it all happens before `request.deadline` or fails as DeadlineExceeded (504
    `timeout`), like any other TritonError from the visual encoder.
    """
    request.extra_inputs.update(await _inputs_in_time(vision, request=request))


# ---- planning ----------------------------------------------------------------------------


def _chat(
    config: ModelConfig, engine: Engine, messages: list[Any], sources: list[tuple[str, str]]
) -> VisionChat:
    _check(config, sources)
    sentinels = Sentinels()
    return VisionChat(config, engine, _flatten(messages, sentinels), sources, sentinels)


def _check(config: ModelConfig, sources: list[tuple[str, str]]) -> None:
    if not config.accepts_images:
        raise invalid(f"The model `{config.name}` does not accept images.", sources[0][1])
    limit = settings.VISION_MAX_IMAGES
    if len(sources) > limit:
        raise invalid(f"At most {limit} images are accepted per request.", sources[limit][1])
    for source, param in sources:
        if not source:
            raise invalid("An image_url part needs an object with a `url`.", param)


def _flatten(messages: list[Any], sentinels: Sentinels) -> list[Any]:
    flat, count = [], 0
    for message in messages:
        content = _get(message, "content")
        if not isinstance(content, list) or not any(
            _get(p, "type") == "image_url" for p in content
        ):
            flat.append(message)
            continue
        text = ""
        for part in content:
            if _get(part, "type") == "image_url":
                count += 1
                text += f"Picture {count}: {sentinels(count - 1)}\n"
            elif _get(part, "type") == "text":
                text += _get(part, "text") or ""
        if isinstance(message, dict):
            flat.append({**message, "content": text})
        else:
            flat.append(message.model_copy(update={"content": text}))
    return flat


def _image_url(part: Any) -> str:
    """The part's `image_url.url` ("" if missing: refused by `_check`).

    A bare string `image_url` is refused as OpenAI refuses it: the field is an object.
    """
    value = _get(part, "image_url")
    if isinstance(value, str):
        return ""
    return str(_get(value, "url") or "") if value is not None else ""


def _get(item: Any, name: str) -> Any:
    return item.get(name) if isinstance(item, dict) else getattr(item, name, None)


# ---- loading -----------------------------------------------------------------------------


async def _inputs_in_time(
    vision: VisionPrompt, *, request: GenerationRequest
) -> dict[str, np.ndarray]:
    """`_inputs` cut off at the request's deadline.

    Each fetch keeps its own VISION_FETCH_TIMEOUT (a 400 naming the image when that is
    what runs out); this bounds all of it, preprocessing included, by what is left.
    """
    limit = asyncio.timeout(request.time_left())
    try:
        async with limit:
            return await _inputs(vision, request=request)
    except TimeoutError:
        if not limit.expired():
            raise
        raise DeadlineExceeded("The request's deadline passed while loading its images.") from None


async def _inputs(vision: VisionPrompt, *, request: GenerationRequest) -> dict[str, np.ndarray]:
    config, engine = vision.config, vision.engine
    spec = await engine.spec()
    table = spec.inputs.get(TABLE_INPUT)
    if table is None:
        raise model_misconfigured()
    blobs = await _fetch_all(vision.sources)
    try:
        pixels = await images_preprocess(
            [(blob, param) for blob, (_, param) in zip(blobs, vision.sources, strict=True)],
            size=config.image_size,
        )
    except ImageRefused as exc:
        raise invalid(exc.message, exc.param) from None
    features = await features_encode(
        backend=engine.backend,
        model=config.visual_model_name,
        pixels=pixels,
        tokens=config.image_tokens,
        request_id=request.request_id,
        time_left=request.time_left,
    )
    return table_inputs(
        features=features,
        table_dtype=table.np_type,
        prompt=vision.prompt_ids,
        tokens=vision_tokens(engine.text),
        image_digests=[image_digest(blob) for blob in blobs],
    )


async def _fetch_all(sources: list[tuple[str, str]]) -> list[bytes]:
    """Every image's bytes, concurrently; the first refusal cancels the rest."""
    tasks = [asyncio.ensure_future(image_bytes(source=s, param=p)) for s, p in sources]
    try:
        return list(await asyncio.gather(*tasks))
    except ImageRefused as exc:
        raise invalid(exc.message, exc.param) from None
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
