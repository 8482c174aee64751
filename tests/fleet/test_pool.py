"""The endpoint pool and a stream's failover, in process, against real dev Tritons.

The pools here are not started (no background probes): each test drives probes itself,
so what it sees comes from the calls it makes.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from llmgateway.devtriton.server import free_port
from llmgateway.textgen.tokenizer import load_text_model
from llmgateway.triton.errors import DeadlineExceeded, TritonUnavailable
from llmgateway.triton.pool import EndpointPool
from llmgateway.triton.stream import TritonStream, build_request
from tests.conftest import TOKENIZER

TEXT = load_text_model(TOKENIZER)


def _request(spec, text: str, *, request_id: str):
    ids = np.asarray(TEXT.encode(TEXT.render_chat([{"role": "user", "content": text}])))
    return build_request(
        spec,
        request_id=request_id,
        inputs={
            "input_ids": ids,
            "input_lengths": len(ids),
            "request_output_len": 32,
            "end_id": TEXT.end_id,
            "streaming": True,
        },
        outputs=["output_ids", "sequence_length"],
    )


async def _text(stream: TritonStream) -> str:
    tokens = [
        int(t)
        for r in [r async for r in stream.responses()]
        if "output_ids" in r.outputs
        for t in r.outputs["output_ids"].reshape(-1)
    ]
    return TEXT.decode([t for t in tokens if t != TEXT.end_id])


def _dead_address() -> str:
    return f"127.0.0.1:{free_port()}"  # nothing listens there


async def test_the_least_busy_endpoint_takes_the_request_ties_in_turn(fleet):
    pool = EndpointPool(fleet.addresses())
    addresses = [e.address for e in pool.endpoints]
    order = []
    for _ in range(6):  # nothing in flight: every endpoint ties, so they take turns
        endpoint = pool.acquire("m")
        order.append(endpoint.address)
        pool.release(endpoint)
    assert order == addresses * 2
    held = [pool.acquire("m") for _ in range(3)]
    assert {e.address for e in held} == set(addresses)  # one each, not all on the first
    pool.release(held[1])
    assert pool.acquire("m") is held[1]  # the only one with nothing in flight
    assert [e.in_flight for e in pool.endpoints] == [1, 1, 1]


async def test_unavailable_marks_down_at_once_and_the_stream_moves_once(fleet, devtriton):
    pool = EndpointPool(f"{_dead_address()},{devtriton.grpc_url}")
    dead, live = pool.endpoints
    spec = await pool.model_spec("tensorrt_llm")  # the dead one failed it, the live one gave it
    assert dead.up is False and dead.errors == 1 and "unavailable" in dead.last_error
    dead.up = None  # as if never probed: it takes traffic again
    pool._turn = 0
    stream = TritonStream(
        pool, spec, _request(spec, "[[say:moved]]", request_id="move-1"), deadline_s=5
    )
    assert await _text(stream) == "moved"
    assert dead.up is False and dead.failovers == 1 and live.errors == 0
    assert [e.in_flight for e in pool.endpoints] == [0, 0]
    devtriton.wait_for_event("finished", "move-1")


async def test_a_request_moves_at_most_once(devtriton):
    live = EndpointPool(devtriton.grpc_url)
    spec = await live.model_spec("tensorrt_llm")
    pool = EndpointPool(f"{_dead_address()},{_dead_address()}")
    stream = TritonStream(pool, spec, _request(spec, "hi", request_id="twice"), deadline_s=5)
    with pytest.raises(TritonUnavailable):
        await stream.connected()
    assert [(e.errors, e.failovers, e.up) for e in pool.endpoints] == [(1, 1, False), (1, 0, False)]
    assert [e.in_flight for e in pool.endpoints] == [0, 0]
    with pytest.raises(TritonUnavailable):  # nothing serves now: refused without a call
        pool.acquire("tensorrt_llm")


async def test_a_moved_request_keeps_its_deadline(devtriton):
    pool = EndpointPool(f"{_dead_address()},{devtriton.grpc_url}")
    pool._specs["tensorrt_llm"] = spec = await EndpointPool(devtriton.grpc_url).model_spec(
        "tensorrt_llm"
    )
    started = time.monotonic()
    slow = _request(spec, "[[delay:100]][[long:30]]", request_id="deadline-kept")
    stream = TritonStream(pool, spec, slow, deadline_s=0.6)
    with pytest.raises(DeadlineExceeded):
        await _text(stream)
    assert pool.endpoints[0].failovers == 1
    assert time.monotonic() - started < 1.0  # 0.6 s in all, not 0.6 s more after the move


async def test_a_model_missing_on_one_triton_moves_there_only_for_that_model(fleet, devtriton):
    """The fleet's Tritons serve tensorrt_llm only; the session's also serves tensorrt_llm_v08."""
    other = fleet.servers[0]
    pool = EndpointPool(f"{devtriton.grpc_url},{other.grpc_url}")
    spec = await pool.model_spec("tensorrt_llm_v08")  # read from the first endpoint
    request = _request(spec, "[[say:found]]", request_id="v08-moved")
    # The second endpoint's turn: Triton answers "unknown model", and the stream moves.
    assert await _text(TritonStream(pool, spec, request, deadline_s=5)) == "found"
    serving, missing = pool.endpoints
    assert missing.up is None and missing.not_ready == {"tensorrt_llm_v08"}
    assert missing.failovers == 1 and "model_not_ready" in missing.last_error
    assert pool.acquire("tensorrt_llm_v08") is serving
    assert pool.acquire("tensorrt_llm", avoid=serving) is missing  # still up for the rest


async def test_a_probe_that_passes_gives_the_endpoint_a_new_channel(fleet_restored):
    server = fleet_restored.servers[2]
    pool = EndpointPool(server.grpc_url)
    pool.models.add("tensorrt_llm")
    (endpoint,) = pool.endpoints
    await pool.probe_now()
    assert endpoint.up is True and endpoint.last_probe_at is not None
    fleet_restored.kill(2)
    await pool.probe_now()
    assert endpoint.up is False and endpoint.last_error.startswith("probe:")
    old = endpoint.backend
    server.restart()
    await pool.probe_now()
    assert endpoint.up is True and endpoint.not_ready == frozenset(), endpoint.last_error
    assert endpoint.backend is not old  # not the channel that saw the outage
