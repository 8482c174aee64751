"""What an endpoint module gives the runner, and what it gets to shape answers with.

An endpoint is an `Endpoint` (its parsed request: `check` and `prepare` it for a
`Target`) and a `Shaper` (its wire format: the collected `response`, the streamed
`chunks`, the `failed` event); the runner (lifecycle.py) does the rest.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from llmgateway.accounting import Outcome
from llmgateway.engine import (
    BatchGeneration,
    Delta,
    Engine,
    Generation,
    GenerationRequest,
    TokenLogprob,
)
from llmgateway.errors import APIError
from llmgateway.models import ModelConfig
from llmgateway.vision.service import VisionPrompt

# Called once with the request's Outcome when it settles (after it was admitted).
SettleHook = Callable[[Outcome], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Target:
    """The model a request is for: its config and its engine."""

    config: ModelConfig
    engine: Engine


@dataclass(slots=True)
class Prepared:
    """What an endpoint's prepare phase gives: its generation, ready for Triton.

    `requests` are the generation's (several for a batch); `vision` holds the images
    still to load into requests[0].
    """

    generation: Generation | BatchGeneration
    requests: list[GenerationRequest]
    vision: VisionPrompt | None = None


@dataclass(slots=True)
class ChoiceResult:
    index: int
    text_parts: list[str] = field(default_factory=list)
    tokens: list[TokenLogprob] = field(default_factory=list)  # with logprobs: as in Delta
    finish_reason: str | None = None

    @property
    def text(self) -> str:
        return "".join(self.text_parts)


class Shaper(Protocol):
    """An endpoint's wire format for one request's answer."""

    # Filled by chunks() as choices finish (choice index → reason), for the request log.
    finish_reasons: dict[int, str]

    def response(self, results: list[ChoiceResult]) -> Any:
        """The whole answer (a JSON-serialisable body) from the collected choices."""

    def chunks(self) -> AsyncIterator[bytes]:
        """The streamed answer, from the generation's deltas to the stream's end."""

    def failed(self, error: APIError) -> bytes:
        """What ends a stream that fails after it started (its error event)."""


class Endpoint(ABC):
    """What a generating endpoint gives the runner: its request, parsed, and its format.

    Made per request from the parsed body, whose `model` is the model asked for (None:
    the one configured) and whose `stream`, if it has one, asks for a stream.
    `on_settle`, when set, is called once with the Outcome of an admitted request.
    """

    route: ClassVar[str]  # "/v1/chat/completions": the request log's endpoint
    # The parameter holding the prompt, as errors about its length name it.
    prompt_param: ClassVar[str] = "prompt"
    on_settle: SettleHook | None = None

    def __init__(self, payload: Any) -> None:
        self.payload = payload
        self.model: str | None = payload.model
        self.stream = bool(getattr(payload, "stream", False))

    async def check(self, target: Target) -> None:  # noqa: B027 - optional for endpoints
        """Checks of the request against its model (its config, its Triton interface),
        before anything is prepared; raise APIError to refuse."""

    def prompt_lengths(self) -> Iterable[int]:
        """Characters of each prompt the request tokenizes (one per generation request),
        counting only what the client wrote into it: a lower bound of the text
        tokenized, for refusing text that cannot fit before tokenizing any. Cheap."""
        return ()

    @abstractmethod
    def prepare(self, target: Target, request_id: str) -> Prepared:
        """Render and tokenize the prompt, plan the images, build the generation request(s)
        with their limits. CPU only: no awaits, nothing sent anywhere, nothing that
        needs the event loop (a large request's runs in a worker thread)."""

    @abstractmethod
    def shaper(self, target: Target, prepared: Prepared) -> Shaper:
        """The answer's shaper (made once the request is admitted)."""


def deltas(generation: Generation | BatchGeneration) -> contextlib.aclosing[AsyncIterator[Delta]]:
    """`async with deltas(g) as stream: async for delta in stream: ...` iterates a
    generation and always closes it, which cancels its Triton work.

    A context manager rather than a wrapping generator: every layer of async
    generators costs each streamed token a pass through it.
    """
    return contextlib.aclosing(generation.__aiter__())


async def generation_collect(generation: Generation | BatchGeneration) -> list[ChoiceResult]:
    results = [ChoiceResult(i) for i in range(generation.choice_count)]
    async with deltas(generation) as stream:
        async for delta in stream:
            result = results[delta.index]
            if delta.text:
                result.text_parts.append(delta.text)
            if delta.tokens:
                result.tokens.extend(delta.tokens)
            if delta.finish_reason is not None:
                result.finish_reason = delta.finish_reason
    return results
