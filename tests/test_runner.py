"""The runner's settle-once contract, against the dev Triton: whatever way a request
ends, its admission is settled once, and an endpoint's on_settle hook runs once with
the same Outcome. (Every endpoint's live tests exercise the rest of the lifecycle.)"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator

import numpy as np
import pytest
from django.test import RequestFactory

from llmgateway.accounting import NullAdmission, Outcome
from llmgateway.api.generate import GenerateEndpoint, GenerateIn
from llmgateway.context import RequestContext
from llmgateway.engine import load_engine
from llmgateway.models import ModelConfig
from llmgateway.runner.endpoint import Target
from llmgateway.runner.lifecycle import Answer, Run
from tests.conftest import CHAT_MODEL, DEV_LIMITS, TOKENIZER


class RecordingAdmission(NullAdmission):
    records = True

    def __init__(self) -> None:
        super().__init__()
        self.outcomes: list[Outcome] = []

    async def settle(self, outcome: Outcome) -> None:
        self.settled = True
        self.outcomes.append(outcome)


@pytest.fixture
async def target(devtriton) -> Target:
    config = ModelConfig(
        name=CHAT_MODEL,
        triton_url=devtriton.grpc_url,
        triton_model="tensorrt_llm",
        tokenizer_path=TOKENIZER,
        **DEV_LIMITS,
    )
    engine = await load_engine(
        name=CHAT_MODEL,
        tokenizer_path=TOKENIZER,
        triton_url=config.triton_url,
        triton_model=config.triton_model,
    )
    return Target(config, engine)


async def admitted(
    target: Target,
    *,
    stream: bool,
    admission: type[RecordingAdmission] = RecordingAdmission,
    hook: bool = True,
) -> tuple[Answer, RecordingAdmission, list]:
    """A /generate request run from its prepare phase, admitted by a recording admission,
    its endpoint's on_settle hook recording what it is called with."""
    request = RequestFactory().post("/generate")
    request.gateway = RequestContext("runner-test")
    endpoint = GenerateEndpoint(GenerateIn(prompt="[[say:hello]]", stream=stream))
    hooked: list[Outcome] = []

    async def on_settle(outcome: Outcome) -> None:
        hooked.append(outcome)

    if hook:
        endpoint.on_settle = on_settle
    run = Run(request, caller=None, endpoint=endpoint)
    prepared = await run.prepare(target, True)
    await run.reach(target)
    run.admission = recording = admission()
    return await run.admitted(target, prepared), recording, hooked


async def drain(events: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in events])


async def test_a_collected_answer_settles_once(target) -> None:
    answer, admission, hooked = await admitted(target, stream=False)
    assert answer.body == {"text": "hello", "id": "runner-test"}
    (outcome,) = admission.outcomes
    assert (outcome.status, outcome.finish_reason, outcome.streamed) == (200, "stop", False)
    assert outcome.usage.completion_tokens == len("hello") + 1  # and the end of the turn
    assert hooked == [outcome]


async def test_a_stream_settles_once_when_it_ends(target) -> None:
    answer, admission, hooked = await admitted(target, stream=True)
    body = await drain(answer.events)
    assert body.endswith(b"data: [DONE]\n\n") and b'"finish_reason":"stop"' in body
    answer.on_close()  # the response closes after its body: nothing left to settle
    await asyncio.sleep(0.05)
    (outcome,) = admission.outcomes
    assert (outcome.status, outcome.streamed, outcome.cancelled) == (200, True, False)
    assert outcome.time_to_first_token is not None
    assert hooked == [outcome]


async def test_an_open_stream_does_not_hold_its_parsed_body(target) -> None:
    request = RequestFactory().post("/generate")
    request.gateway = RequestContext("runner-test")
    endpoint = GenerateEndpoint(GenerateIn(prompt="[[say:hello]]", stream=True))
    run = Run(request, caller=None, endpoint=endpoint)
    prepared = await run.prepare(target, True)
    await run.reach(target)
    run.admission = RecordingAdmission()
    answer = await run.admitted(target, prepared)
    # The shaper is made and Triton has the request: the body is let go before the
    # stream's first byte, and the stream still carries everything it asked for.
    assert endpoint.payload is None
    body = await drain(answer.events)
    assert body.endswith(b"data: [DONE]\n\n") and b'"finish_reason":"stop"' in body


async def test_a_stream_whose_body_never_ran_settles_as_a_disconnect(target) -> None:
    answer, admission, hooked = await admitted(target, stream=True)
    answer.on_close()  # the client left before the body started
    await asyncio.sleep(0.05)
    (outcome,) = admission.outcomes
    assert (outcome.status, outcome.error_type, outcome.cancelled) == (
        499,
        "client_disconnected",
        True,
    )
    # It reached Triton: its prompt counts, nothing generated was sent.
    assert outcome.usage.prompt_tokens > 0 and outcome.usage.completion_tokens == 0
    assert hooked == [outcome]
    await answer.events.aclose()


class SettledAtOnce(RecordingAdmission):
    """Settles in the caller's step where asked to, as the Redis store's admission does
    on an open connection; `how` says which way each settlement went."""

    def __init__(self) -> None:
        super().__init__()
        self.how: list[str] = []

    def settle_now(self, outcome: Outcome) -> bool:
        self.settled = True
        self.outcomes.append(outcome)
        self.how.append("now")
        return True

    async def settle(self, outcome: Outcome) -> None:
        await super().settle(outcome)
        self.how.append("task")


@pytest.mark.parametrize(("hook", "how"), [(False, "now"), (True, "task")])
async def test_a_settlement_the_store_can_make_at_once_takes_no_task(target, hook, how) -> None:
    """Without an endpoint's settle hook the runner settles in its own step (no task and
    no suspension when the store can); with one, both run in the settling task."""
    answer, admission, hooked = await admitted(
        target, stream=False, admission=SettledAtOnce, hook=hook
    )
    assert answer.body == {"text": "hello", "id": "runner-test"}
    assert admission.how == [how]
    (outcome,) = admission.outcomes
    assert (outcome.status, outcome.finish_reason) == (200, "stop")
    assert hooked == ([outcome] if hook else [])


class ThreadRecordingEndpoint(GenerateEndpoint):
    threads: list[str]

    def prepare(self, target: Target, request_id: str):
        self.threads.append(threading.current_thread().name)
        return super().prepare(target, request_id)


@pytest.mark.parametrize(("inline", "thread"), [(True, "MainThread"), (False, "prepare")])
async def test_a_large_request_is_prepared_in_the_pool(target, inline, thread) -> None:
    request = RequestFactory().post("/generate")
    request.gateway = RequestContext("runner-test")
    endpoint = ThreadRecordingEndpoint(GenerateIn(prompt="[[say:hello]]"))
    endpoint.threads = []
    prepared = await Run(request, caller=None, endpoint=endpoint).prepare(target, inline)
    request = prepared.requests[0]
    assert endpoint.threads[0].startswith(thread)
    # Made once as Triton's tensor (in the pool already when prepared there), which then
    # stands for the ids: an open stream does not keep the Python list beside it.
    assert isinstance(request.prompt_ids, np.ndarray) == (not inline)
    tensor = request.input_ids()
    assert request.prompt_ids is tensor
    assert tensor.dtype == np.int32 and len(tensor) > 0
