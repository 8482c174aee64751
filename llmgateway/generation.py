"""Services shared by every generating endpoint: pick the model, check limits,
run a generation to completion."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field

from django.conf import settings

from llmgateway import background, metrics
from llmgateway.accounting import Admission, Outcome
from llmgateway.api.sse import DONE, event
from llmgateway.engine import Delta, Engine, Generation, TokenLogprob
from llmgateway.errors import APIError, from_triton, invalid, model_misconfigured, model_not_found
from llmgateway.models import ModelConfig
from llmgateway.services import engine_get, model_get, model_list
from llmgateway.textgen.tokenizer import TokenizerError
from llmgateway.triton.errors import TritonError

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class ChoiceResult:
    index: int
    text_parts: list[str] = field(default_factory=list)
    tokens: list[TokenLogprob] = field(default_factory=list)  # with logprobs: as in Delta
    finish_reason: str | None = None

    @property
    def text(self) -> str:
        return "".join(self.text_parts)


async def model_resolve(*, name: str | None, param: str = "model") -> tuple[ModelConfig, Engine]:
    """The enabled model called `name` and its engine; APIError 404 otherwise.

    With `name` None (the seed's /generate) the only configured model is used.
    """
    if name is None:
        rows = await model_list()
        if len(rows) != 1:
            raise invalid(
                "More than one model is configured: say which one in 'model'."
                if rows
                else "No model is configured.",
                param,
            )
        config = rows[0]
    else:
        config = await model_get(name=name)
        if config is None:
            raise model_not_found(name)
    try:
        engine = await engine_get(config=config)
    except TokenizerError as exc:
        raise model_misconfigured() from exc
    return config, engine


def max_tokens_resolve(
    *,
    config: ModelConfig,
    requested: int | None,
    prompt_tokens: int,
    param: str,
    prompt_param: str = "messages",
) -> int:
    """The output limit for a request, enforcing the model's context and output limits.

    `prompt_param` names the input in errors ("messages" for chat, "prompt" for completions).
    """
    if requested is not None and requested > config.max_output_tokens:
        raise invalid(
            f"{param} is too large: {requested}. This model supports at most "
            f"{config.max_output_tokens} completion tokens.",
            param,
        )
    max_tokens = requested if requested is not None else config.default_max_tokens
    if prompt_tokens >= config.context_length:
        raise invalid(
            f"This model's maximum context length is {config.context_length} tokens. "
            f"However, your {prompt_param} resulted in {prompt_tokens} tokens. "
            f"Please reduce the length of the {prompt_param}.",
            prompt_param,
            code="context_length_exceeded",
        )
    if prompt_tokens + max_tokens > config.context_length:
        if requested is None:
            return config.context_length - prompt_tokens
        raise invalid(
            f"This model's maximum context length is {config.context_length} tokens. "
            f"However, you requested {prompt_tokens + max_tokens} tokens "
            f"({prompt_tokens} in the {prompt_param}, {max_tokens} in the completion). "
            f"Please reduce the length of the {prompt_param} or completion.",
            param,
            code="context_length_exceeded",
        )
    return max_tokens


def deadline_resolve(requested: float | None) -> float:
    """The request's deadline on time.monotonic(): `requested` seconds from now, at most
    GATEWAY_REQUEST_TIMEOUT. Resolved as the request is prepared, so everything after it
    (admission, images fetched and encoded, generation) counts against the one deadline."""
    ceiling = settings.GATEWAY_REQUEST_TIMEOUT
    return time.monotonic() + (min(requested, ceiling) if requested else ceiling)


def deltas(generation: Generation) -> contextlib.aclosing[AsyncIterator[Delta]]:
    """`async with deltas(g) as stream: async for delta in stream: ...` iterates a
    generation and always closes it, which cancels its Triton work.

    A context manager rather than a wrapping generator: every layer of async
    generators costs each streamed token a pass through it.
    """
    return contextlib.aclosing(generation.__aiter__())


async def generation_collect(generation: Generation) -> list[ChoiceResult]:
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


async def settle(
    admission: Admission,
    generation: Generation,
    *,
    status: int,
    started: float,
    streamed: bool,
    finish_reasons: Iterable[str | None] = (),
    error_type: str | None = None,
    cancelled: bool = False,
) -> None:
    """Settle once, even while the request's task is being cancelled.

    `finish_reasons` are the choices'; the log records one when they agree.

    The response waits until the quota store has the settlement (Redis: written
    to its connection, ahead of anything sent later; the database: committed),
    so a client's next request never meets its previous reservation still held.

    An admission that records nothing (the platform off) is not settled at all:
    spawning and awaiting its no-op cost a non-streamed response ~0.09 ms. The
    metrics count every generation either way.
    """
    first = generation.first_token_at
    usage = generation.usage
    metrics.generation_settled(
        model=generation.engine.name,
        streamed=streamed,
        status=status,
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        time_to_first_token=(first - started) if first is not None else None,
        duration=time.monotonic() - started,
    )
    if not admission.records:
        return
    reasons = set(finish_reasons)
    outcome = Outcome(
        status=status,
        usage=usage,
        finish_reason=reasons.pop() if len(reasons) == 1 else None,
        error_type=error_type,
        streamed=streamed,
        time_to_first_token=(first - started) if first is not None else None,
        cancelled=cancelled,
        response_text=generation.output_text(),
    )
    # A separate task, so cancelling this one does not stop it (background.py).
    await asyncio.shield(background.spawn(admission.settle(outcome)))


async def collect_settled(
    generation: Generation, admission: Admission, *, started: float
) -> list[ChoiceResult]:
    """Run a non-streamed generation to the end and settle it, whatever happens."""
    status, error_type, results = 500, "server_error", None
    cancelled = False
    try:
        results = await generation_collect(generation)
        status, error_type = 200, None
        return results
    except TritonError as exc:
        api_error = from_triton(exc)
        status, error_type = api_error.status, api_error.code or api_error.type
        raise api_error from exc
    except asyncio.CancelledError:
        status, error_type, cancelled = 499, "client_disconnected", True
        raise
    finally:
        await settle(
            admission,
            generation,
            status=status,
            started=started,
            streamed=False,
            finish_reasons=[r.finish_reason for r in results or []],
            error_type=error_type,
            cancelled=cancelled,
        )


async def stream_start(generation: Generation, admission: Admission, *, started: float) -> None:
    """Send a streamed generation to Triton before the HTTP response starts.

    Triton computes the first token while the headers and the first chunks go
    out, which takes the gateway's own set-up off the time to first token. A
    Triton that cannot take the request still gets a proper status (503, ...)
    instead of a 200 stream carrying an error.

    grpc.aio sends a call's request from a task of its own, which runs only when
    this task next yields: without the yield here that would be after the
    response's headers were made and sent and the body had started, all of it
    then ahead of Triton's work instead of beside it (0.10-0.24 ms of time to
    first token, bench_stream --previous).
    """
    try:
        await generation.start()
        await asyncio.sleep(0)  # let grpc.aio's task send the request now
    except TritonError as exc:
        api_error = from_triton(exc)
        await settle(
            admission,
            generation,
            status=api_error.status,
            started=started,
            streamed=True,
            error_type=api_error.code or api_error.type,
        )
        raise api_error from exc


def cancel_on_close(response, generation: Generation) -> None:
    """If the client leaves before the stream's body runs, still cancel Triton's work."""
    response._resource_closers.append(generation.cancel)


async def stream_settled(
    chunks: AsyncIterator[bytes],
    *,
    generation: Generation,
    admission: Admission,
    started: float,
    finish_reasons: dict[int, str],
) -> AsyncIterator[bytes]:
    """Frame an SSE body so it always ends in [DONE] and settles exactly once.

    A Triton failure becomes an error event in OpenAI's envelope before [DONE];
    a client disconnect settles as 499 and re-raises. `finish_reasons` is filled
    by `chunks` (choice index → reason) and read for the request log.
    """
    status, error_type, cancelled = 200, None, False
    try:
        async with contextlib.aclosing(chunks) as body:
            async for chunk in body:
                yield chunk
        yield DONE
    except TritonError as exc:
        api_error = from_triton(exc)
        status, error_type = api_error.status, api_error.code or api_error.type
        yield event(api_error.body())
        yield DONE
    except (asyncio.CancelledError, GeneratorExit):
        # Django cancels the task, or closes the generator, when the client goes away.
        status, error_type, cancelled = 499, "client_disconnected", True
        raise
    except Exception:
        logger.exception("stream failed for %s", generation)
        status, error_type = 500, "server_error"
        yield event(
            APIError(
                500, "The server had an error processing your request.", type="server_error"
            ).body()
        )
        yield DONE
    finally:
        await settle(
            admission,
            generation,
            status=status,
            started=started,
            streamed=True,
            finish_reasons=finish_reasons.values(),
            error_type=error_type,
            cancelled=cancelled,
        )
