"""What /v1/chat/completions and /v1/completions share: their sampling fields as
SamplingParams, unknown fields logged, the tokens shown in logprobs, and the base of
their shapers."""

from __future__ import annotations

import logging
import secrets
import time
from typing import Any, ClassVar

from llmgateway.api.caps import sequences_cap, stops_cap
from llmgateway.api.openai_schemas import OpenAISchema, SamplingIn
from llmgateway.api.sse import failure
from llmgateway.engine import BatchGeneration, Engine, Generation, SamplingParams, TokenLogprob
from llmgateway.errors import APIError, invalid
from llmgateway.models import ModelConfig

logger = logging.getLogger(__name__)

# OpenAI's backend configuration id. The gateway has none to offer (the engine behind
# Triton is not known here), so it sends the key with null, as OpenAI may.
SYSTEM_FINGERPRINT = None


# Unknown field names already reported: newer SDKs send the same extras on every
# request, so each name is logged once per process (the rest at DEBUG). Bounded, as a
# client may invent names.
_reported: set[str] = set()
MAX_REPORTED = 256


def log_ignored(payload: OpenAISchema, endpoint: str) -> None:
    extra = payload.model_extra
    if not extra:
        return
    new = [name for name in extra if name not in _reported]
    if new and len(_reported) < MAX_REPORTED:
        _reported.update(new)
        logger.info("%s: ignoring unknown fields %s (logged once each)", endpoint, sorted(new))
    else:
        logger.debug("%s: ignoring unknown fields %s", endpoint, sorted(extra))


def sampling_validate(payload: SamplingIn) -> None:
    sequences_cap("n", payload.n)
    stops_cap("stop", payload.stop)
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
    reasoning: tuple[str, str] | None = None,
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
        reasoning=reasoning,
    )


class V1Shaper:
    """What the shapers of chat and completions share: the generation they shape, its
    model, whether usage and logprobs are asked for, and the answer's id and time."""

    id_prefix: ClassVar[str]

    def __init__(
        self,
        *,
        generation: Generation | BatchGeneration,
        model: str,
        engine: Engine,
        include_usage: bool,
        logprobs: bool,
    ) -> None:
        self.generation = generation
        self.model = model
        self.engine = engine
        self.include_usage = include_usage
        self.logprobs = logprobs
        self.finish_reasons: dict[int, str] = {}
        self.id = self.id_prefix + secrets.token_hex(12)
        self.created = int(time.time())

    def failed(self, error: APIError) -> bytes:
        return failure(error)


def chosen_tokens(
    engine: Engine, tokens: list[TokenLogprob]
) -> list[tuple[str, bytes, float | None, int]]:
    """(name, bytes, logprob, text offset) of each token shown (token_bytes.py)."""
    pieces = engine.text.token_pieces
    names, raw, size = pieces.names, pieces.raw, len(pieces)
    return [
        (names[t], raw[t], lp, offset) if t < size else ("", b"", lp, offset)
        for t, lp, offset in tokens
    ]
