"""POST /v1/completions (the legacy text completions): the request checked and prepared
for the runner, and the answer shaped as OpenAI's `text_completion`."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from typing import Any

from django.http import HttpRequest, HttpResponse
from ninja import Router

from llmgateway.api.openai_common import (
    SYSTEM_FINGERPRINT,
    V1Shaper,
    chosen_tokens,
    log_ignored,
    params_build,
    sampling_validate,
)
from llmgateway.api.openai_schemas import CompletionIn
from llmgateway.api.respond import respond
from llmgateway.api.sse import DONE, ChunkFrame, TextChunks
from llmgateway.engine import BatchGeneration, Engine, GenerationRequest, TokenLogprob
from llmgateway.errors import invalid
from llmgateway.limits import deadline_resolve, max_tokens_resolve
from llmgateway.runner.endpoint import ChoiceResult, Endpoint, Prepared, Target, deltas

router = Router(tags=["openai"])

# OpenAI's default for the legacy completions endpoint.
COMPLETIONS_DEFAULT_MAX_TOKENS = 16


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
        if max(ids) >= vocab:  # type: ignore[type-var]
            raise invalid(f"Token ids in the prompt must be below {vocab}.", "prompt")
        out.append((engine.text.tokenizer.decode(ids), list(ids)))  # type: ignore[arg-type]
    return out


class CompletionEndpoint(Endpoint):
    route = "/v1/completions"

    payload: CompletionIn
    prompts: tuple[str, ...] = ()  # the prompts' texts (prepare)

    def prompt_lengths(self) -> list[int]:
        prompt = self.payload.prompt
        if isinstance(prompt, str):
            return [len(prompt)]
        if not isinstance(prompt[0], str):
            return []  # token ids: see check()
        return [len(p) for p in prompt]

    async def check(self, target: Target) -> None:
        """Token-id prompts over the context are refused before their ids are checked
        against the vocabulary (a body of millions of ids would take a while)."""
        prompt, context = self.payload.prompt, target.config.context_length
        if isinstance(prompt, str) or isinstance(prompt[0], str):
            return
        for ids in [prompt] if isinstance(prompt[0], int) else prompt:
            if len(ids) >= context:  # type: ignore[arg-type]
                max_tokens_resolve(
                    config=target.config,
                    requested=None,
                    prompt_tokens=len(ids),  # type: ignore[arg-type]
                    param="max_tokens",
                    prompt_param="prompt",
                )

    def prepare(self, target: Target, request_id: str) -> Prepared:
        payload, config, engine = self.payload, target.config, target.engine
        prompts = _prompts(payload, engine)
        logprobs = payload.logprobs is not None
        requests = []
        for number, (_, ids) in enumerate(prompts):
            requested = payload.max_tokens
            max_tokens = max_tokens_resolve(
                config=config,
                requested=requested if requested is not None else COMPLETIONS_DEFAULT_MAX_TOKENS,
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
                    stream=self.stream,
                )
            )
        self.prompts = tuple(text for text, _ in prompts)
        generations = [engine.generate(r) for r in requests]
        generation = generations[0] if len(generations) == 1 else BatchGeneration(generations)
        return Prepared(generation, requests)

    def shaper(self, target: Target, prepared: Prepared) -> CompletionShaper:
        payload = self.payload
        n = payload.n
        return CompletionShaper(
            generation=prepared.generation,
            model=target.config.name,
            engine=target.engine,
            include_usage=bool(payload.stream_options and payload.stream_options.include_usage),
            logprobs=payload.logprobs is not None,
            echo=[text if payload.echo else "" for text in self.prompts for _ in range(n)],
        )


class CompletionShaper(V1Shaper):
    """Shapes one completions request's answer: the `text_completion` object, or its
    stream of chunks. `echo` is the text before each choice (the prompt, or "")."""

    id_prefix = "cmpl-"

    def __init__(self, *, echo: list[str], **common: Any) -> None:
        super().__init__(**common)
        self.echo = echo

    def _logprobs(self, tokens: list[TokenLogprob]) -> dict | None:
        if not self.logprobs:
            return None
        chosen = chosen_tokens(self.engine, tokens)
        return {
            "tokens": [name for name, _, _, _ in chosen],
            "token_logprobs": [lp for _, _, lp, _ in chosen],
            "top_logprobs": [{name: lp} for name, _, lp, _ in chosen],
            "text_offset": [offset for _, _, _, offset in chosen],
        }

    def _body(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": choices,
        }

    @functools.cached_property
    def _frame(self) -> ChunkFrame:
        shared = self._body([])
        del shared["choices"]
        return ChunkFrame(shared, usage_null=self.include_usage)

    @functools.cached_property
    def _text_chunk(self) -> TextChunks:
        """`_chunk(index, text)`, serialising only the text."""
        return self._frame.text_chunks(
            b'{"index":%d,"text":', b',"logprobs":null,"finish_reason":null}'
        )

    def response(self, results: list[ChoiceResult]) -> dict[str, Any]:
        body = self._body(
            [
                {
                    "index": r.index,
                    "text": self.echo[r.index] + r.text,
                    "logprobs": self._logprobs(r.tokens),
                    "finish_reason": r.finish_reason,
                }
                for r in results
            ]
        )
        body["usage"] = self.generation.usage.as_dict()
        return body

    def _chunk(self, index: int, text: str, finish_reason=None, logprobs=None) -> bytes:
        return self._frame.choice(
            {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}
        )

    async def chunks(self) -> AsyncIterator[bytes]:
        for index, text in enumerate(self.echo):
            if text:
                yield self._chunk(index, text)
        async with deltas(self.generation) as stream:
            async for delta in stream:
                if not delta.text:
                    pass
                elif self.logprobs:  # a delta's tokens start in its text (Delta.tokens)
                    logprobs = self._logprobs(delta.tokens)
                    yield self._chunk(delta.index, delta.text, logprobs=logprobs)
                else:
                    yield self._text_chunk(delta.index, delta.text)
                if delta.finish_reason is not None:
                    self.finish_reasons[delta.index] = delta.finish_reason
                    yield self._chunk(delta.index, "", delta.finish_reason)
        if self.include_usage:
            yield self._frame.usage(self.generation.usage.as_dict())
        yield DONE


@router.post("/completions")
async def completions(request: HttpRequest, payload: CompletionIn) -> HttpResponse:
    log_ignored(payload, CompletionEndpoint.route)
    completion_validate(payload)
    return await respond(request, CompletionEndpoint(payload))
