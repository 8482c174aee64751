"""Tokens that arrive together become one delta (one SSE event), and nothing else changes.

The threaded reader (TRITON_STREAM_READER=thread) hands the engine every response
queued since it last looked. A consumer slower than the dev Triton makes them queue,
so its deltas carry several tokens: their joined text, usage and logprobs must be
exactly those of the same request unstreamed and of the one-token-per-event reader.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from llmgateway.engine import Delta, Engine, GenerationRequest, SamplingParams, load_engine
from llmgateway.runner.endpoint import generation_collect
from llmgateway.triton.reader import ThreadedCall
from llmgateway.triton.stream import TritonStream
from tests.conftest import TOKENIZER

PROMPTS = ["[[long:120]]", "[[utf8]]", "[[say:Héllo wörld, 你好 👍 done]]"]


@pytest.fixture
async def engine(devtriton) -> Engine:
    return await load_engine(
        name="batches",
        tokenizer_path=TOKENIZER,
        triton_url=devtriton.grpc_url,
        triton_model="tensorrt_llm",
    )


def request(engine: Engine, content: str, *, stream: bool, **params) -> GenerationRequest:
    text = engine.text
    ids = text.encode(text.render_chat([{"role": "user", "content": content}]))
    return GenerationRequest(
        prompt_ids=ids,
        params=SamplingParams(max_tokens=params.pop("max_tokens", 200), **params),
        request_id=f"batches-{time.monotonic_ns()}",
        deadline=time.monotonic() + 30,
        stream=stream,
    )


async def slow_deltas(engine: Engine, req: GenerationRequest) -> tuple[list[Delta], object]:
    """The stream's deltas, read with a pause after each so that tokens queue meanwhile."""
    generation = engine.generate(req)
    deltas = []
    async for delta in generation:
        deltas.append(delta)
        await asyncio.sleep(0.02)
    return deltas, generation


@pytest.fixture
def threaded(settings):
    settings.TRITON_STREAM_READER = "thread"


@pytest.mark.parametrize("content", PROMPTS)
async def test_coalesced_deltas_join_to_the_unstreamed_answer(engine, threaded, content):
    deltas, generation = await slow_deltas(engine, request(engine, content, stream=True))
    whole = engine.generate(request(engine, content, stream=False))
    [result] = await generation_collect(whole)
    assert "".join(d.text for d in deltas) == result.text
    assert "\ufffd" not in result.text
    assert deltas[-1].finish_reason == result.finish_reason
    assert generation.usage == whole.usage
    # The pauses made tokens queue: fewer events than tokens.
    assert len(deltas) < generation.usage.completion_tokens


async def test_logprobs_stay_per_token_in_coalesced_deltas(engine, threaded):
    content = "[[say:Héllo wörld, 你好 👍 and more words to stream]]"
    deltas, generation = await slow_deltas(
        engine, request(engine, content, stream=True, logprobs=True)
    )
    whole = engine.generate(request(engine, content, stream=False, logprobs=True))
    [result] = await generation_collect(whole)
    tokens = [t for d in deltas for t in d.tokens]
    assert tokens == result.tokens  # each token once, its own logprob, its own offset
    assert any(len(d.tokens) > 1 for d in deltas)  # several tokens in one event
    text = ""
    for delta in deltas:  # each delta's tokens start in its own text
        assert all(
            len(text) <= offset < len(text) + len(delta.text) for _, _, offset in delta.tokens
        )
        text += delta.text


async def test_a_stop_string_never_leaks_from_a_coalesced_delta(engine, threaded):
    content = "[[say:one two STOP three four]]"
    deltas, _ = await slow_deltas(engine, request(engine, content, stream=True, stop=("STOP",)))
    assert "".join(d.text for d in deltas) == "one two "
    assert deltas[-1].finish_reason == "stop"


async def test_the_threaded_reader_gives_the_aio_readers_responses(devtriton, engine, settings):
    """Same responses, same order; and leaving early cancels the call."""
    spec = await engine.spec()

    async def read(reader: str, content: str) -> list[list[int]]:
        settings.TRITON_STREAM_READER = reader
        generation = engine.generate(request(engine, content, stream=True))
        await generation.start()
        [(_, stream)] = generation._streams
        assert isinstance(stream, TritonStream)
        assert isinstance(stream._call, ThreadedCall) == (reader == "thread")
        return [r.outputs["output_ids"].reshape(-1).tolist() async for r in stream.responses()]

    assert spec.decoupled
    assert await read("thread", "[[long:50]]") == await read("aio", "[[long:50]]")


async def test_leaving_a_threaded_stream_cancels_it_in_triton(engine, threaded, devtriton):
    generation = engine.generate(request(engine, "[[delay:20]][[long:500]]", stream=True))
    async with contextlib.aclosing(generation.__aiter__()) as deltas:
        async for _ in deltas:
            break  # the consumer leaves: closing the generation cancels the call
    [(_, stream)] = generation._streams
    call = stream._call._call
    for _ in range(100):
        if call.done():
            break
        await asyncio.sleep(0.02)
    assert call.done() and call.cancelled()
