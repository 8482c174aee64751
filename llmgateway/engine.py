"""The small interface between the API layer and the Triton core.

The API layer asks an `Engine` to generate; it gets back `Delta`s (text per
choice, with a finish reason on each choice's last one) and a running `Usage`.
Only this module and `llmgateway.triton` know about tensors.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import numpy as np
from django.conf import settings

from llmgateway import tracing
from llmgateway.accounting import Usage
from llmgateway.textgen.detokenizer import ByteDetokenizer, IncrementalDetokenizer
from llmgateway.textgen.stops import StopMatcher, ThoughtGate
from llmgateway.textgen.tokenizer import TextModel, load_text_model
from llmgateway.triton.client import ModelSpec
from llmgateway.triton.errors import DeadlineExceeded
from llmgateway.triton.pool import EndpointPool, get_pool
from llmgateway.triton.stream import TritonResponse, TritonStream, build_request

logger = logging.getLogger(__name__)

UINT64_MASK = (1 << 64) - 1
# A Triton call is not started with less time than this left: nothing useful fits in it.
MIN_CALL_S = 0.01


@dataclass(frozen=True, slots=True)
class SamplingParams:
    max_tokens: int
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    seed: int | None = None
    min_tokens: int | None = None
    beam_width: int = 1
    stop: tuple[str, ...] = ()
    logprobs: bool = False
    # Guided decoding (TensorRT-LLM 0.19+): (guided_decoding_guide_type, guide or None).
    guide: tuple[str, str | None] | None = None
    # A reasoning model's (start, end) tags (ModelConfig.reasoning_format): stop strings
    # apply only after the reasoning, and its tokens are counted apart.
    reasoning: tuple[str, str] | None = None


@dataclass(slots=True)
class GenerationRequest:
    # The prompt's token ids: a list as prepared, then the int32 tensor once that is made
    # (`input_ids`), so an open stream does not hold both (a Python int list costs
    # ~36 bytes per token, the tensor 4).
    prompt_ids: list[int] | np.ndarray
    params: SamplingParams
    request_id: str
    # When the whole request must be over, on time.monotonic(): images fetched and
    # encoded, and generation, all fit before it (see generation.deadline_resolve).
    deadline: float
    n: int = 1
    stream: bool = False
    # Extra per-request tensors (vision: prompt_embedding_table, prompt_vocab_size).
    extra_inputs: dict[str, np.ndarray] = field(default_factory=dict)
    _input_ids: np.ndarray | None = field(default=None, repr=False, compare=False)

    def input_ids(self) -> np.ndarray:
        """`prompt_ids` as Triton's int32 tensor, made once. A long prompt's takes a
        while (~1.5 ms per 32k tokens), so the prepare pool makes it beside the rest of
        the prompt's work rather than on the event loop (lifecycle.prepare_off_loop)."""
        if self._input_ids is None:
            self._input_ids = np.asarray(self.prompt_ids, dtype=np.int32)
            self.prompt_ids = self._input_ids
        return self._input_ids

    def time_left(self) -> float:
        """Seconds to the deadline, at least MIN_CALL_S, for the next Triton call's timeout.

        Raises DeadlineExceeded (504 `timeout` for the client) when less than that is left.
        """
        left = self.deadline - time.monotonic()
        if left < MIN_CALL_S:
            raise DeadlineExceeded("The request's deadline passed before generation finished.")
        return left


# A token shown in logprobs: (token id, logprob or None, offset of its text in the
# choice's returned text, in characters).
TokenLogprob = tuple[int, float | None, int]


@dataclass(slots=True)
class Delta:
    index: int
    text: str
    # With logprobs requested: the tokens whose text starts in this delta's `text`
    # (_Choice.feed). Special tokens (end of turn) and tokens past a stop are left out.
    tokens: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None


class _Choice:
    """Per-sequence state: detokenizer, stop matcher, counts and finish reason.

    With logprobs, each token is placed at the character where its text starts in
    what the detokenizer gave (a character's later bytes at that character), and is
    shown once the text sent to the client reaches past that point. So logprobs
    cover exactly the text returned: a token that straddles a stop string's cut is
    kept (its text starts before the cut), the tokens of the stop string after it
    and a character left unfinished at the output limit are not, and the
    logprobs of held-back text go out with that text, whether it streams or not.
    """

    __slots__ = (
        "index",
        "detok",
        "stops",
        "count",
        "finish_reason",
        "transcript",
        "gate",
        "reasoning_count",
        "_end_ids",
        "_limit",
        "_pending",
        "_special",
        "_decoded",
        "_sent",
    )

    def __init__(
        self,
        index: int,
        text_model: TextModel,
        prompt_ids: list[int] | np.ndarray,
        params: SamplingParams,
        record: bool = False,
    ):
        self.index = index
        table = text_model.stream_bytes
        self.detok = (
            ByteDetokenizer(table, text_model.special_ids)
            if table is not None
            else IncrementalDetokenizer(text_model.tokenizer, text_model.special_ids, prompt_ids)
        )
        self.stops = StopMatcher(params.stop)
        self.count = 0
        self.finish_reason: str | None = None
        # The text sent, kept only when request logs store it (REQUEST_LOG_CONTENT).
        self.transcript: list[str] | None = [] if record else None
        self.gate = ThoughtGate(*params.reasoning) if params.reasoning else None
        self.reasoning_count = 0
        self._end_ids = frozenset((text_model.end_id, *text_model.extra_stop_ids))
        self._limit = params.max_tokens
        # Logprobs only: tokens not shown yet, with where their text starts; characters
        # the detokenizer has given, and characters sent.
        self._pending: list[TokenLogprob] | None = [] if params.logprobs else None
        self._special = text_model.special_ids
        self._decoded = 0
        self._sent = 0

    def feed(self, ids: list[int], logprobs: list[float] | None, per_token: bool) -> Delta | None:
        """Consume generated ids; return what they add for the client, if anything."""
        if self.finish_reason is not None:
            return None
        end_ids = self._end_ids
        pending = self._pending
        # Placing each token needs the text each one adds.
        # Placing the end of the reasoning (stops apply after it) needs it too.
        gate = self.gate
        per_token = per_token or pending is not None or gate is not None
        text_parts: list[str] = []
        batch: list[int] = []
        for position, token in enumerate(ids):
            if token < 0:
                continue
            self.count += 1
            if token in end_ids:
                self.finish_reason = "stop"
                break
            if per_token:
                piece = self.detok.push([token])
                if pending is not None and token not in self._special:
                    logprob = logprobs[position] if logprobs is not None else None
                    pending.append((token, logprob, self._decoded))
                    self._decoded += len(piece)
                if gate is not None and gate.thinking:
                    self.reasoning_count += 1
                    reasoning, piece = gate.push(piece)
                    text_parts.append(reasoning)
                    if not gate.thinking and not gate.reasoned:
                        self.reasoning_count = 0  # the answer did not open with reasoning
                text_parts.append(self.stops.push(piece))
                if self.stops.matched is not None:
                    self.finish_reason = "stop"
                    break
            else:
                batch.append(token)
            if self.count >= self._limit:
                self.finish_reason = "length"
                break
        if batch:
            text_parts.append(self.stops.push(self.detok.push(batch)))
            if self.stops.matched is not None:
                self.finish_reason = "stop"
        if self.finish_reason is not None:
            text_parts.append(self._drain())
        text = "".join(text_parts)
        if not text and self.finish_reason is None:
            return None
        if self.transcript is not None:
            self.transcript.append(text)
        shown = self._shown(text) if pending is not None else []
        return Delta(self.index, text, shown, self.finish_reason)

    def finish(self) -> Delta | None:
        """The request ended (final response) with this sequence still open."""
        if self.finish_reason is not None:
            return None
        self.finish_reason = "length" if self.count >= self._limit else "stop"
        text = self._drain()
        if self.transcript is not None:
            self.transcript.append(text)
        shown = self._shown(text) if self._pending is not None else []
        return Delta(self.index, text, shown, self.finish_reason)

    def _shown(self, text: str) -> list[TokenLogprob]:
        """The pending tokens whose text starts before the end of the text sent so far,
        now that `text` is sent too; once finished, the others are dropped."""
        pending = self._pending
        self._sent += len(text)
        sent = self._sent
        count = 0
        for _, _, start in pending:
            if start >= sent:
                break
            count += 1
        shown = pending[:count]
        if self.finish_reason is not None:
            pending.clear()
        else:
            del pending[:count]
        return shown

    def _drain(self) -> str:
        if self.stops.matched is not None:
            return ""
        tail = self.detok.flush()
        gate = self.gate
        if gate is not None and gate.thinking:
            reasoning, tail = gate.push(tail)
            return reasoning + gate.flush() + self.stops.push(tail) + self.stops.flush()
        return self.stops.push(tail) + self.stops.flush()


@functools.lru_cache(maxsize=1024)
def _stop_words_list(text_model: TextModel, stops: tuple[str, ...]) -> np.ndarray | None:
    """TensorRT-LLM's [2, N] format: concatenated ids, then cumulative end offsets.

    Cached: most requests send the same few stop lists (none, the model's own).
    The array is only ever read (copied into the request's protobuf).
    """
    words = [text_model.encode(s) for s in stops if s]
    words += [[i] for i in text_model.extra_stop_ids]
    words = [w for w in words if w]
    if not words:
        return None
    flat = [i for w in words for i in w]
    offsets = np.cumsum([len(w) for w in words]).tolist()
    offsets += [-1] * (len(flat) - len(offsets))
    return np.array([flat, offsets], dtype=np.int32)


class Engine:
    """A configured model: its tokenizer, its Triton model, and how to call it."""

    def __init__(self, *, name: str, text_model: TextModel, triton_url: str, triton_model: str):
        self.name = name
        self.text = text_model
        self.triton_url = triton_url
        self.triton_model = triton_model

    @property
    def backend(self) -> EndpointPool:
        """The Tritons serving this model (triton_url: one or more addresses)."""
        return get_pool(self.triton_url)

    async def spec(self) -> ModelSpec:
        return await self.backend.model_spec(self.triton_model)

    def generate(self, request: GenerationRequest) -> Generation:
        return Generation(self, request)

    def _inputs(
        self,
        spec: ModelSpec,
        request: GenerationRequest,
        *,
        streaming: bool,
        seed: int | None,
        sequences: int,
    ) -> dict[str, np.ndarray | bool | int | float | str]:
        """The request's tensors; one-element inputs as Python scalars (build_request)."""
        p = request.params
        ids = request.input_ids()
        inputs: dict[str, np.ndarray | bool | int | float | str] = {
            "input_ids": ids,
            "input_lengths": len(ids),
            "request_output_len": p.max_tokens,
            "end_id": self.text.end_id,
            "pad_id": self.text.pad_id,
            "streaming": streaming,
            "exclude_input_in_output": True,
            "beam_width": p.beam_width,
        }
        optional = {
            "temperature": p.temperature,
            "runtime_top_p": p.top_p,
            "runtime_top_k": p.top_k,
            "repetition_penalty": p.repetition_penalty,
            "presence_penalty": p.presence_penalty,
            "frequency_penalty": p.frequency_penalty,
        }
        for name, value in optional.items():
            if value is not None:
                inputs[name] = value
        if seed is not None:
            # OpenAI seeds are signed; TensorRT-LLM's are uint64.
            seed_name = "seed" if spec.accepts("seed") else "random_seed"
            inputs[seed_name] = seed & UINT64_MASK
        if p.min_tokens:
            inputs["min_tokens" if spec.accepts("min_tokens") else "min_length"] = p.min_tokens
        if sequences > 1:
            inputs["num_return_sequences"] = sequences
        if p.logprobs:
            inputs["return_log_probs"] = True
        if p.guide is not None:
            inputs["guided_decoding_guide_type"] = p.guide[0]
            if p.guide[1] is not None:
                inputs["guided_decoding_guide"] = p.guide[1]
        # Triton cannot hold stop words off the reasoning: a reasoning model's stops are
        # matched on text only (the generation streams from Triton to cancel it then).
        stop_words = _stop_words_list(self.text, p.stop if p.reasoning is None else ())
        if stop_words is not None:
            inputs["stop_words_list"] = stop_words
        inputs.update(request.extra_inputs)
        return inputs


class Generation:
    """One generation request; iterate it for `Delta`s, read `usage` at any time.

    However iteration ends (exhausted, an exception, a client disconnect raising
    CancelledError, or the consumer stopping early), every Triton request it
    started is cancelled if still running.
    """

    def __init__(self, engine: Engine, request: GenerationRequest) -> None:
        self.engine = engine
        self.request = request
        self.usage = Usage(
            prompt_tokens=len(request.prompt_ids),
            reasoning_tokens=0 if request.params.reasoning else None,
        )
        self.first_token_at: float | None = None
        # The runner's `triton` span (tracing.PendingSpan), started when this is sent.
        self.trace: tracing.PendingSpan | None = None
        params = request.params
        record = getattr(settings, "REQUEST_LOG_CONTENT", False)
        self._choices = [
            _Choice(i, engine.text, request.prompt_ids, params, record) for i in range(request.n)
        ]
        self._streams: list[tuple[int | None, TritonStream]] | None = None
        self._echo = 0
        self._per_token = False

    def output_text(self) -> str | None:
        """The text generated so far, when request logs keep it; choices separated by a blank line."""
        if self._choices[0].transcript is None:
            return None
        return "\n\n".join("".join(c.transcript or ()) for c in self._choices)

    @property
    def choice_count(self) -> int:
        return self.request.n

    @property
    def choices_finished(self) -> bool:
        return all(c.finish_reason is not None for c in self._choices)

    def __aiter__(self) -> AsyncIterator[Delta]:
        return self._run()

    async def start(self) -> None:
        """Send the request(s) to Triton now, before iterating.

        A caller that starts a generation and may never iterate it must arrange
        for `cancel()` (a streaming response does, through its closers).
        """
        if self._streams is None:
            self._streams = await self._open()

    def cancel(self) -> None:
        for _, stream in self._streams or ():
            stream.cancel()

    async def _open(self) -> list[tuple[int | None, TritonStream]]:
        spec = await self.engine.spec()
        request = self.request
        # Stream from Triton when the client streams, or when stop strings could
        # end generation early: then we can cancel it the moment they match.
        streaming = spec.decoupled and (request.stream or bool(request.params.stop))
        streaming = streaming and request.params.beam_width == 1
        self._per_token = bool(request.params.stop) or streaming
        self._echo = 0 if streaming or not spec.echoes_prompt else len(request.prompt_ids)
        n = request.n
        seed = request.params.seed
        if n > 1 and spec.accepts("num_return_sequences"):
            plans = [(None, seed, n)]
        elif n > 1:
            # Without num_return_sequences (TensorRT-LLM 0.8) run n requests; give
            # each its own seed or they would all sample the same text.
            base = seed if seed is not None else secrets.randbits(63)
            plans = [(i, base + i, 1) for i in range(n)]
        else:
            plans = [(0, seed, 1)]
        streams = []
        metadata = tracing.grpc_metadata(self.trace)  # Triton continues the trace there
        try:
            for choice_index, plan_seed, sequences in plans:
                rid = (
                    request.request_id
                    if len(plans) == 1
                    else f"{request.request_id}-{choice_index}"
                )
                proto = build_request(
                    spec,
                    request_id=rid,
                    inputs=self.engine._inputs(
                        spec, request, streaming=streaming, seed=plan_seed, sequences=sequences
                    ),
                    outputs=self._outputs(n_sequences=sequences),
                )
                stream = TritonStream(
                    self.engine.backend,
                    spec,
                    proto,
                    deadline_s=request.time_left(),
                    metadata=metadata,
                )
                streams.append((choice_index, stream))
                stream.open()
            for _, stream in streams:
                await stream.connected()  # a Triton that is down fails the start, not the body
        except BaseException:
            for _, stream in streams:
                stream.cancel()
            raise
        return streams

    async def _run(self) -> AsyncIterator[Delta]:
        await self.start()
        echo, per_token = self._echo, self._per_token
        # One stream (the common case) is read directly, without a merging generator
        # that every token would pass through.
        (only, first), *more = self._streams
        if more:
            source = _merge([(index, stream.batches()) for index, stream in self._streams])
        else:
            source = first.batches()
        try:
            async with contextlib.aclosing(source) as items:
                async for item in items:
                    choice_index, batch = item if more else (only, item)
                    deltas = self._deltas(choice_index, batch, echo, per_token)
                    for delta in deltas:
                        yield delta
                    # Only a delta that finishes its choice can finish them all.
                    if deltas and deltas[-1].finish_reason is not None and self.choices_finished:
                        return
        finally:
            # Streams whose reader never started (or is being abandoned) are cancelled;
            # finished ones are left alone.
            self.cancel()
        for choice in self._choices:
            delta = choice.finish()
            if delta is not None:
                yield delta

    def _outputs(self, n_sequences: int) -> list[str]:
        names = ["output_ids", "sequence_length"]
        if n_sequences > 1:
            names.append("sequence_index")
        if self.request.params.logprobs:
            names += ["output_log_probs"]
        return names

    def _deltas(
        self, choice_index: int | None, batch: list[TritonResponse], echo: int, per_token: bool
    ) -> list[Delta]:
        """The deltas of responses that arrived together: one per choice, whatever the
        number of its tokens among them (one SSE event for them all; with logprobs the
        delta still lists each token). A lone response is one token, sent at once."""
        if len(batch) == 1:
            found = self._tokens(choice_index, batch[0], echo)
            return self._feed(*found, per_token) if found is not None else []
        tokens: dict[int, tuple[list[int], list[float] | None]] = {}
        for response in batch:
            found = self._tokens(choice_index, response, echo)
            if found is None:
                continue
            index, ids, logprobs = found
            held = tokens.get(index)
            if held is None:
                tokens[index] = (ids, logprobs)
            else:
                held[0].extend(ids)
                if held[1] is not None and logprobs is not None:
                    held[1].extend(logprobs)
        deltas: list[Delta] = []
        for index, (ids, logprobs) in tokens.items():
            deltas += self._feed(index, ids, logprobs, per_token)
        # A finishing delta last, so the caller sees whether all choices are done.
        deltas.sort(key=lambda delta: delta.finish_reason is not None)
        return deltas

    def _tokens(
        self, choice_index: int | None, response: TritonResponse, echo: int
    ) -> tuple[int, list[int], list[float] | None] | None:
        """(choice, generated ids, their logprobs) of one response; None for an empty one."""
        # Only the tensors read are decoded, flat: the best beam is the first row.
        output_ids, lengths, scores, seq = response.flat(*TENSORS_READ)
        if output_ids is None or output_ids[0].size == 0:
            return None  # an empty final response
        flat, width = output_ids
        if choice_index is None:
            choice_index = int(seq[0][0]) if seq is not None and seq[0].size else 0
        length = min(int(lengths[0][0]), width) if lengths is not None else width
        ids = flat[echo:length].tolist()
        logprobs = None
        if scores is not None:
            row = scores[0][: scores[1]]
            logprobs = row[-len(ids) :].tolist() if ids else []
        return choice_index, ids, logprobs

    def _feed(
        self, index: int, ids: list[int], logprobs: list[float] | None, per_token: bool
    ) -> list[Delta]:
        choice = self._choices[index]
        before = choice.count
        delta = choice.feed(ids, logprobs, per_token)
        self.usage.completion_tokens += choice.count - before
        if choice.gate is not None:
            self.usage.reasoning_tokens = sum(c.reasoning_count for c in self._choices)
        if self.first_token_at is None and choice.count:
            self.first_token_at = time.monotonic()
        return [delta] if delta is not None else []


# What _deltas reads of a response, in its order (TritonResponse.flat).
TENSORS_READ = ("output_ids", "sequence_length", "output_log_probs", "sequence_index")


class BatchGeneration:
    """Several generations run together as one; their choices are numbered in order
    (generation 0's choices first, then generation 1's, ...)."""

    def __init__(self, generations: list[Generation]) -> None:
        self.generations = generations

    @property
    def engine(self) -> Engine:
        return self.generations[0].engine

    @property
    def choice_count(self) -> int:
        return sum(g.choice_count for g in self.generations)

    @property
    def usage(self) -> Usage:
        return Usage(
            prompt_tokens=sum(g.usage.prompt_tokens for g in self.generations),
            completion_tokens=sum(g.usage.completion_tokens for g in self.generations),
        )

    @property
    def first_token_at(self) -> float | None:
        times = [g.first_token_at for g in self.generations if g.first_token_at is not None]
        return min(times) if times else None

    async def start(self) -> None:
        try:
            for generation in self.generations:
                await generation.start()
        except BaseException:
            self.cancel()
            raise

    def cancel(self) -> None:
        for generation in self.generations:
            generation.cancel()

    @property
    def trace(self) -> tracing.PendingSpan | None:
        return self.generations[0].trace

    @trace.setter
    def trace(self, pending: tracing.PendingSpan | None) -> None:
        for generation in self.generations:
            generation.trace = pending

    def output_text(self) -> str | None:
        texts = [g.output_text() for g in self.generations]
        return None if texts[0] is None else "\n\n".join(t or "" for t in texts)

    def __aiter__(self) -> AsyncIterator[Delta]:
        return self._run()

    async def _run(self) -> AsyncIterator[Delta]:
        offsets = [0]
        for generation in self.generations:
            offsets.append(offsets[-1] + generation.choice_count)
        streams = [(i, g.__aiter__()) for i, g in enumerate(self.generations)]
        async with contextlib.aclosing(_merge(streams)) as merged:
            async for index, delta in merged:
                delta.index += offsets[index]
                yield delta


async def _merge(streams: list) -> AsyncIterator[tuple[int | None, object]]:
    """Items from several async iterators as they arrive, tagged with their index.

    Leaving early, or an error in one of them, closes (and so cancels) all of them.
    """
    if len(streams) == 1:
        index, stream = streams[0]
        try:
            async for response in stream:
                yield index, response
        finally:
            await stream.aclose()
        return
    queue: asyncio.Queue = asyncio.Queue()
    done = object()

    async def pump(index, stream) -> None:
        try:
            async for response in stream:
                await queue.put((index, response))
        except Exception as exc:  # handed to the consumer, which re-raises it
            await queue.put((index, exc))
        finally:
            await queue.put((index, done))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in streams]
    remaining = len(tasks)
    try:
        while remaining:
            index, item = await queue.get()
            if item is done:
                remaining -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield index, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def load_engine(
    *,
    name: str,
    tokenizer_path: str,
    triton_url: str,
    triton_model: str,
    trust_remote_code: bool = False,
) -> Engine:
    """Build an engine; the tokenizer loads in a thread so the event loop keeps serving."""
    text_model = await asyncio.to_thread(
        load_text_model, tokenizer_path, trust_remote_code=trust_remote_code
    )
    return Engine(
        name=name, text_model=text_model, triton_url=triton_url, triton_model=triton_model
    )
