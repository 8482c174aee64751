"""One lifecycle for every generating endpoint, owned here and written once.

    resolve (access) → precheck → fits → check → prepare → reach → admit → load → start
                                                → stream | collect → settle (once)

Cheap checks first: nothing about a model, and no work for it, before the caller is
known to be allowed it, and no tokenizing before the request could be admitted.

- resolve: the model asked for; a model the caller may not use answers exactly as a
  missing one (404), before its engine, its config's limits or its Triton are looked
  at; then its engine;
- precheck: a key already at its rpm, tpm or budget is refused (429) before anything
  else is checked or prepared, for a large request (one prepared off the loop) or a
  key this process last refused (accounts.admission.precheck_due): admission comes
  before checks that reveal the model's limits, at no cost to keys in good standing;
- fits: text that cannot fit in the model's context is refused without tokenizing it
  (limits.prompt_chars_check);
- check: the endpoint's own checks against that model (`Endpoint.check`);
- prepare: the endpoint renders and tokenizes its prompt and plans its images
  (`Endpoint.prepare`: CPU only, no awaits; its output is a `Prepared`), in the
  prepare thread pool for a large request (runner/prepare.py);
- reach: the model's interface is read from Triton, so a Triton that is down answers
  503 before anything is admitted or streamed;
- admit: the platform reserves the request's quota (accounts/admission.py), or nothing
  is enforced when the platform is off;
- load: a vision request's images are fetched and encoded into its inputs;
- start (streams): the generation is sent to Triton before the response starts;
- stream or collect: the endpoint's `Shaper` turns deltas into its wire format;
- settle: exactly once, however the request ends; the `Outcome` is built in `Run._outcome`
  and nowhere else, and an endpoint's `on_settle` hook (a store) runs with it.

An endpoint module (llmgateway/api/) gives the runner an `Endpoint` and a `Shaper`
and keeps only its wire format. Each phase is a method of `Run`, so a phase can be
moved or wrapped (tracing spans) in one place.

The hot path stays flat: a streamed token passes through the shaper's chunk generator
and `Run.stream`, the one layer that turns failures into the shaper's error event and
settles (see `deltas` for why no more layers are added).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from django.http import HttpRequest

from accounts.admission import admit as platform_admit
from accounts.admission import admit_precheck, precheck_due
from accounts.services import Caller
from llmgateway import background, metrics, tracing
from llmgateway.accounting import Admission, NullAdmission, Outcome, Reservation, Usage
from llmgateway.context import RequestContext, request_context
from llmgateway.engine import BatchGeneration, Generation
from llmgateway.errors import (
    APIError,
    invalid,
    model_misconfigured,
    model_not_found,
    server_error,
)
from llmgateway.limits import prompt_chars_check
from llmgateway.logconfig import describe_exception
from llmgateway.runner import prepare as prepare_pool
from llmgateway.runner.endpoint import (
    ChoiceResult,
    Endpoint,
    Prepared,
    SettleHook,
    Shaper,
    Target,
    generation_collect,
)
from llmgateway.services import engine_get, model_get, model_list
from llmgateway.textgen.tokenizer import TokenizerError
from llmgateway.triton.errors import (
    DeadlineExceeded,
    TritonError,
    TritonInferenceError,
    TritonUnavailable,
)
from llmgateway.vision.service import vision_inputs_load

logger = logging.getLogger(__name__)

# Seconds a client should wait before retrying when Triton is unreachable.
UNAVAILABLE_RETRY_AFTER = 1


@dataclass(slots=True)
class Answer:
    """What the edge sends: `body` (collected) or `events` (streamed), with `headers`.

    A stream's `on_close` must be called when its response closes: it cancels Triton's
    work and settles a stream whose body never ran (the client left first).
    """

    headers: dict[str, str]
    body: Any = None
    events: AsyncIterator[bytes] | None = None
    on_close: Callable[[], None] | None = None


def run(request: HttpRequest, *, caller: Caller | None, endpoint: Endpoint) -> Awaitable[Answer]:
    """Serve one generating request from its model to its settlement (await it).

    `caller` is authentication's (None with the platform off). Raises APIError for a
    request refused or failed before its answer starts.

    Not a coroutine of its own: each await level is a frame every resumption of the
    request's task passes through.
    """
    return Run(request, caller=caller, endpoint=endpoint).answer()


class Run:
    """One request's lifecycle; the phases in the order `answer` runs them."""

    __slots__ = (
        "request",
        "caller",
        "endpoint",
        "started",
        "admission",
        "generation",
        "used",
        "settled",
        "span",
    )

    def __init__(self, request: HttpRequest, *, caller: Caller | None, endpoint: Endpoint):
        self.request = request
        self.caller = caller
        self.endpoint = endpoint
        self.started = time.monotonic()
        self.admission: Admission | None = None
        self.generation: Generation | BatchGeneration | None = None
        # Whether the generation went to Triton (then its usage and metrics count).
        self.used = False
        self.settled = False
        # The `triton` span (tracing on): from the generation's sending to its settlement.
        self.span: tracing.PendingSpan | None = None

    async def answer(self) -> Answer:
        target = await self.resolve()
        inline = prepare_pool.inline(self.request)
        caller = self.caller
        if caller is not None and precheck_due(caller, large=not inline):
            await admit_precheck(caller=caller)
        self.fits(target)
        await self.endpoint.check(target)
        with tracing.span("prepare"):
            prepared = await self.prepare(target, inline)
        await self.reach(target)
        # Before admission, which may send the generation early (accounts/admission.py).
        self.span = prepared.generation.trace = tracing.pending_span(
            "triton", **{"gen_ai.request.model": target.config.name}
        )
        with tracing.span("admission"):
            try:
                await self.admit(target, prepared)
            except BaseException as exc:  # refused: an early start's span ends here
                tracing.span_end(self.span, error=getattr(exc, "kind", "refused"))
                raise
        return await self.admitted(target, prepared)

    # ---- before admission: refusals settle nothing ---------------------------------------

    async def resolve(self) -> Target:
        """The enabled model asked for, if the caller may use it, and its engine;
        APIError 404 otherwise, alike for a missing model and a hidden one.

        Without a name (the seed's /generate) the only configured model is used.
        """
        name = self.endpoint.model
        context = self._context()
        if context is not None:  # for log lines
            context.model = name
        if name is None:
            rows = [c for c in await model_list() if model_visible(self.caller, c.name)]
            if len(rows) != 1:
                raise invalid(
                    "More than one model is configured: say which one in 'model'."
                    if rows
                    else "No model is configured.",
                    "model",
                )
            config = rows[0]
            if context is not None:
                context.model = config.name
        else:
            config = await model_get(name=name)
            if config is None:
                raise model_not_found(name)
        # Before the engine loads (a misconfigured model's 503), before its limits are
        # checked and before its Triton is reached: a hidden model shows nothing of itself.
        if not model_visible(self.caller, config.name):
            raise model_not_found(name if name is not None else config.name)
        try:
            engine = await engine_get(config=config)
        except TokenizerError as exc:
            raise model_misconfigured() from exc
        return Target(config, engine)

    def fits(self, target: Target) -> None:
        """Refuse text that cannot fit in the model's context, without tokenizing it."""
        text, param = target.engine.text, self.endpoint.prompt_param
        for chars in self.endpoint.prompt_lengths():
            prompt_chars_check(config=target.config, text=text, chars=chars, param=param)

    async def prepare(self, target: Target, inline: bool) -> Prepared:
        request_id = request_context(self.request).request_id
        if inline:
            prepared = self.endpoint.prepare(target, request_id)
        else:
            prepared = await prepare_pool.off_loop(
                prepare_off_loop, self.endpoint, target, request_id
            )
        self.generation = prepared.generation
        return prepared

    async def reach(self, target: Target) -> None:
        """Read the model's interface from Triton (cached): a Triton that cannot be
        reached answers 503 here, before admission and before any stream starts."""
        await target.engine.spec()

    async def admit(self, target: Target, prepared: Prepared) -> None:
        """Reserve the request's quota (429 and the like when refused).

        A generation without images may be sent to Triton while the quota store
        decides (accounting.py); a vision request's inputs exist only once its images
        load, after admission.
        """
        if self.caller is None:
            self.admission = NullAdmission()
            return
        reservation = Reservation(
            model=target.config.name,
            endpoint=self.endpoint.route,
            prompt_tokens=sum(len(r.prompt_ids) for r in prepared.requests),
            max_tokens=sum(r.params.max_tokens * r.n for r in prepared.requests),
            stream=self.endpoint.stream,
            prices=target.config.prices,
        )
        early = prepared.generation if prepared.vision is None else None
        started = time.monotonic()
        try:
            self.admission = await platform_admit(
                self.request, caller=self.caller, reservation=reservation, early=early
            )
        finally:  # refusals (429, 503) waited too
            metrics.admission_waited(target.config.name, time.monotonic() - started)

    # ---- admitted: settled exactly once from here on ---------------------------------------

    async def admitted(self, target: Target, prepared: Prepared) -> Answer:
        stream = self.endpoint.stream
        try:
            shaper = self.endpoint.shaper(target, prepared)
            # Nothing reads the parsed body after this: an open stream need not hold it
            # (~2 KB per stream for a one-line chat, its whole prompt for a long one).
            self.endpoint.payload = None
            if prepared.vision is not None:
                await self.load(prepared)
            self.used = True
            context = self._context()
            arrived = context.started if context is not None else self.started
            metrics.queue_waited(target.config.name, time.monotonic() - arrived)
            if stream:
                await self.start(prepared)
            else:
                results = await self.collect(prepared)
        except BaseException as exc:
            error = await self.settle_failure(exc)
            if error is not exc:
                raise error from exc
            raise
        headers = self.admission.headers
        if stream:
            return Answer(headers, events=self.stream(shaper), on_close=self.closer())
        await self.settle(200, finish_reasons=[r.finish_reason for r in results])
        return Answer(headers, body=shaper.response(results))

    async def load(self, prepared: Prepared) -> None:
        """Fetch and encode the images into the request's inputs (within its deadline)."""
        await vision_inputs_load(prepared.vision, request=prepared.requests[0])

    async def start(self, prepared: Prepared) -> None:
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
        await prepared.generation.start()
        await asyncio.sleep(0)  # let grpc.aio's task send the request now

    def collect(self, prepared: Prepared) -> Awaitable[list[ChoiceResult]]:
        """The generation's choices, collected (await it; see `run` for why not async)."""
        return generation_collect(prepared.generation)

    async def stream(self, shaper: Shaper) -> AsyncIterator[bytes]:
        """The shaper's chunks, ended by its error event if generation fails; settled
        exactly once, a client disconnect as 499 (then re-raised)."""
        status, error_type, cancelled = 200, None, False
        try:
            async with contextlib.aclosing(shaper.chunks()) as body:
                async for chunk in body:
                    yield chunk
        except TritonError as exc:
            error = from_triton(exc)
            status, error_type = error.status, error.kind
            yield shaper.failed(error)
        except (asyncio.CancelledError, GeneratorExit):
            # Django cancels the task, or closes the generator, when the client goes away.
            status, error_type, cancelled = 499, "client_disconnected", True
            raise
        except Exception:
            logger.exception("stream failed for %s", self.generation)
            error = server_error()
            status, error_type = error.status, error.kind
            yield shaper.failed(error)
        finally:
            await self.settle(
                status,
                error_type=error_type,
                cancelled=cancelled,
                finish_reasons=shaper.finish_reasons.values(),
            )

    def closer(self) -> Callable[[], None]:
        """For the response's close: cancel Triton's work (the client may have left
        before the stream's body ran), and settle a stream that never started.

        Django may close a response from a worker thread: the work is handed to the loop.
        """
        loop = asyncio.get_running_loop()

        def closed() -> None:
            self.generation.cancel()
            if not self.settled:
                background.spawn(self.settle(499, error_type="client_disconnected", cancelled=True))

        return lambda: loop.call_soon_threadsafe(closed)

    async def settle_failure(self, exc: BaseException) -> BaseException:
        """Settle a request that failed after admission; return what to raise for it
        (an APIError for a Triton failure, else `exc` itself)."""
        if isinstance(exc, TritonError):
            error = from_triton(exc)
            await self.settle(error.status, error_type=error.kind)
            return error
        if isinstance(exc, APIError):
            await self.settle(exc.status, error_type=exc.kind)
        elif isinstance(exc, asyncio.CancelledError):
            await self.settle(499, error_type="client_disconnected", cancelled=True)
        else:
            await self.settle(500, error_type="server_error")
        return exc

    async def settle(
        self,
        status: int,
        *,
        error_type: str | None = None,
        cancelled: bool = False,
        finish_reasons: Iterable[str | None] = (),
    ) -> None:
        """Settle once, even while the request's task is being cancelled.

        The response waits until the quota store has the settlement (Redis: written
        to its connection, ahead of anything sent later; the database: committed),
        so a client's next request never meets its previous reservation still held.

        An admission that records nothing (the platform off) with no settle hook is
        not settled at all: spawning and awaiting its no-op cost a non-streamed
        response ~0.09 ms. The metrics count every generation sent to Triton either way.
        """
        if self.settled:
            return
        self.settled = True
        generation = self.generation
        first = generation.first_token_at if self.used else None
        ttft = (first - self.started) if first is not None else None
        context = self._context()
        if context is not None:  # for the access line
            context.time_to_first_token, context.error_type = ttft, error_type
        if self.used:
            usage = generation.usage
            if context is not None:
                context.prompt_tokens = usage.prompt_tokens
                context.completion_tokens = usage.completion_tokens
            tracing.span_end(
                self.span,
                first_token_at=first,
                error=error_type,
                **{
                    "llmgateway.status": status,
                    "gen_ai.usage.input_tokens": usage.prompt_tokens,
                    "gen_ai.usage.output_tokens": usage.completion_tokens,
                },
            )
            metrics.generation_settled(
                model=generation.engine.name,
                streamed=self.endpoint.stream,
                status=status,
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
                time_to_first_token=ttft,
                duration=time.monotonic() - self.started,
                choices=generation.choice_count,
            )
        hook = self.endpoint.on_settle
        if not self.admission.records and hook is None:
            return
        outcome = self._outcome(status, error_type, cancelled, finish_reasons, ttft)
        # Settled in this step where the store can (Redis, connected: the script is
        # written before the response): no task, and the request's coroutines are not
        # suspended and resumed once more for it.
        if hook is None and self.admission.settle_now(outcome):
            return
        # A separate task, so cancelling this one does not stop it (background.py).
        await asyncio.shield(background.spawn(self._record(outcome, hook)))

    def _context(self) -> RequestContext | None:
        """The request's context; None for a request that never passed the edge (a
        runner driven directly, as some tests do)."""
        return getattr(self.request, "gateway", None)

    def _outcome(
        self,
        status: int,
        error_type: str | None,
        cancelled: bool,
        finish_reasons: Iterable[str | None],
        ttft: float | None,
    ) -> Outcome:
        """How the request ended. A request that failed before its generation went to
        Triton (its images did not load) used nothing. `finish_reasons` are the
        choices'; the log records one when they agree."""
        reasons = set(finish_reasons)
        used = self.used
        return Outcome(
            status=status,
            usage=self.generation.usage if used else Usage(),
            finish_reason=reasons.pop() if len(reasons) == 1 else None,
            error_type=error_type,
            streamed=self.endpoint.stream,
            time_to_first_token=ttft,
            cancelled=cancelled,
            response_text=self.generation.output_text() if used else None,
        )

    async def _record(self, outcome: Outcome, hook: SettleHook | None) -> None:
        await self.admission.settle(outcome)
        if hook is not None:
            try:
                await hook(outcome)
            except Exception:
                logger.exception("the endpoint's settle hook failed")


def prepare_off_loop(endpoint: Endpoint, target: Target, request_id: str) -> Prepared:
    """The prepare phase in the prepare pool: the endpoint's, then each request's input
    tensor, which for a long prompt is itself a few milliseconds of work (issue 19: no
    step of a long prompt on the event loop)."""
    prepared = endpoint.prepare(target, request_id)
    for request in prepared.requests:
        request.input_ids()
    return prepared


def model_visible(caller: Caller | None, name: str) -> bool:
    """Whether the caller may see the model called `name` (every model without keys).

    Models a key may not use are hidden, not forbidden: /v1/models leaves them
    out and asking for one answers 404 model_not_found, as for a missing model.
    """
    return caller is None or caller.allows(name)


def from_triton(exc: TritonError) -> APIError:
    """Map a Triton failure to what the client sees (never internal details); the log
    gets the cause: Triton's message and the gRPC status."""
    cause = exc.__cause__  # a gRPC error: its status code and details
    detail = describe_exception(cause) if cause is not None else getattr(exc, "detail", "")
    logger.warning(
        "Triton failed the request: %s%s", describe_exception(exc), f" ({detail})" if detail else ""
    )
    if isinstance(exc, TritonUnavailable):
        return APIError(
            503,
            "The inference server is unavailable. Please retry shortly.",
            type="server_error",
            code="service_unavailable",
            headers={"retry-after": str(UNAVAILABLE_RETRY_AFTER)},
        )
    if isinstance(exc, DeadlineExceeded):
        return APIError(
            504,
            "The request timed out before generation finished.",
            type="server_error",
            code="timeout",
        )
    if isinstance(exc, TritonInferenceError):
        return APIError(
            500,
            "The model failed while generating a response.",
            type="server_error",
            code="inference_error",
        )
    return server_error()
