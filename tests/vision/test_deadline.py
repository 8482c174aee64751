"""One deadline for the whole request: images fetched and encoded, then generation.

The live tests run a gateway whose GATEWAY_REQUEST_TIMEOUT is a few seconds and
whose VISION_FETCH_TIMEOUT is far longer, so only the request's deadline can cut a
slow image server (`/slow?s=N` answers after N seconds) short.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from types import SimpleNamespace

import httpx
import pytest
from django.test import RequestFactory

from llmgateway.accounting import NullAdmission, Outcome
from llmgateway.engine import Engine, GenerationRequest, SamplingParams, load_engine
from llmgateway.errors import APIError
from llmgateway.limits import deadline_resolve
from llmgateway.models import ModelConfig
from llmgateway.runner.endpoint import Endpoint, Prepared, Target, generation_collect
from llmgateway.runner.lifecycle import Run
from llmgateway.triton.errors import DeadlineExceeded
from llmgateway.vision.service import vision_inputs_load, vision_prompt_generate
from tests.conftest import TOKENIZER, LiveGateway, gateway_running
from tests.vision.conftest import VL

pytestmark = pytest.mark.django_db

TIMEOUT_S = 4.0
# 15 characters at 100 ms each: about 1.5 s of generation, well inside TIMEOUT_S alone.
SLOW_ANSWER = "[[say:abcdefghijklmno]][[delay:100]]"


@pytest.fixture(scope="module")
def short_gateway(
    vision_models, owner_key, image_server, tmp_path_factory
) -> Iterator[LiveGateway]:
    env = {
        "GATEWAY_REQUEST_TIMEOUT": str(TIMEOUT_S),
        "VISION_FETCH_TIMEOUT": "60",
        "VISION_ALLOWED_HOSTS": f"127.0.0.1:{image_server.port}",
    }
    tmp = tmp_path_factory.mktemp("deadline-gateway")
    with gateway_running(tmp, env, api_key=owner_key) as live:
        yield live


@pytest.fixture
def client(short_gateway) -> Iterator[httpx.Client]:
    with short_gateway.client() as http:
        yield http


def assert_deadline_error(response: httpx.Response) -> None:
    assert response.status_code == 504, response.text
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("server_error", "timeout")


def test_image_fetch_time_is_taken_from_generation(client, image_server, vision_triton) -> None:
    body = {"model": VL, "prompt": SLOW_ANSWER}
    fast = client.post("/generate", json={**body, "images": [f"{image_server.base}/red.png"]})
    assert fast.status_code == 200, fast.text  # the generation alone fits the deadline
    request_id = f"deadline-{uuid.uuid4().hex}"
    started = time.monotonic()
    slow = client.post(
        "/generate",
        json={**body, "images": [f"{image_server.base}/slow?s=3"], "uuid": request_id},
    )
    elapsed = time.monotonic() - started
    # 3 s fetching left about 1 s of the 4 s for a 1.5 s generation: cut at the deadline,
    # not given a fresh 4 s of its own.
    assert_deadline_error(slow)
    assert elapsed < TIMEOUT_S + 1.0
    event = vision_triton.wait_for_event("cancelled", request_id, timeout=10)
    assert event["tokens_sent"] < 15


@pytest.mark.parametrize("stream", [False, True])
def test_an_image_slower_than_the_deadline_ends_at_the_deadline(
    client, image_server, vision_triton, stream
) -> None:
    request_id = f"deadline-chat-{uuid.uuid4().hex}"
    content = [
        {"type": "image_url", "image_url": {"url": f"{image_server.base}/slow?s=8"}},
        {"type": "text", "text": "What is in the picture?"},
    ]
    started = time.monotonic()
    response = client.post(
        "/v1/chat/completions",
        json={"model": VL, "messages": [{"role": "user", "content": content}], "stream": stream},
        headers={"x-request-id": request_id},
    )
    elapsed = time.monotonic() - started
    assert_deadline_error(response)  # not a 400 naming the image: the fetch limit is 60 s
    assert TIMEOUT_S - 0.5 < elapsed < TIMEOUT_S + 1.5
    assert not [e for e in vision_triton.events() if e["request_id"].startswith(request_id)]


# ---- the time each Triton call is given ---------------------------------------------------


class RecordingAdmission(NullAdmission):
    outcomes: list[Outcome]
    records = True

    def __init__(self) -> None:
        super().__init__()
        self.outcomes = []

    async def settle(self, outcome: Outcome) -> None:
        self.outcomes.append(outcome)


class ImagesOnly(Endpoint):
    """An endpoint whose request is admitted with its images still to load."""

    route = "/generate"

    def prepare(self, target: Target, request_id: str) -> Prepared:
        raise AssertionError("prepared by the test")

    def shaper(self, target: Target, prepared: Prepared) -> None:
        return None


async def vl_engine(vision_triton) -> tuple[ModelConfig, Engine]:
    config = ModelConfig(
        name=VL,
        triton_url=vision_triton.grpc_url,
        triton_model="qwen-vl-llm",
        model_type="qwen-vl",
        tokenizer_path=TOKENIZER,
        context_length=4096,
        max_output_tokens=1000,
    )
    engine = await load_engine(
        name=VL, tokenizer_path=TOKENIZER, triton_url=config.triton_url, triton_model="qwen-vl-llm"
    )
    return config, engine


def record_timeouts(engine: Engine, monkeypatch) -> dict[str, float]:
    """The gRPC timeout of each Triton call: the visual encoder's and the LLM's."""
    # The channel of the model's one endpoint (its address is an IP: no resolution).
    (endpoint,) = engine.backend.endpoints
    backend, timeouts = endpoint.backend, {}
    encode, generate = backend.infer, backend.stream_infer

    def encoder_call(request, *, timeout):
        timeouts["encoder"] = timeout
        return encode(request, timeout=timeout)

    def llm_call(request, *, timeout, **options):  # options: the trace's metadata
        timeouts["llm"] = timeout
        return generate(request, timeout=timeout, **options)

    monkeypatch.setattr(backend, "infer", encoder_call)
    monkeypatch.setattr(backend, "stream_infer", llm_call)
    return timeouts


async def test_triton_calls_get_the_time_left_after_the_images(
    settings, vision_triton, image_server, monkeypatch
) -> None:
    settings.GATEWAY_REQUEST_TIMEOUT = 5.0
    settings.VISION_FETCH_TIMEOUT = 30.0
    settings.VISION_ALLOWED_HOSTS = [f"127.0.0.1:{image_server.port}"]
    config, engine = await vl_engine(vision_triton)
    timeouts = record_timeouts(engine, monkeypatch)
    vision = vision_prompt_generate(
        config=config, engine=engine, prompt="[[say:ok]]", images=[f"{image_server.base}/slow?s=1"]
    )
    request = GenerationRequest(
        prompt_ids=vision.prompt_ids,
        params=SamplingParams(max_tokens=20),
        request_id=f"time-left-{uuid.uuid4().hex}",
        deadline=deadline_resolve(None),
    )
    await vision_inputs_load(vision, request=request)
    (result,) = await generation_collect(engine.generate(request))
    assert result.text == "ok"
    assert set(timeouts) == {"encoder", "llm"}
    # Both calls started after the 1 s fetch: neither gets the full 5 s.
    assert 2.0 < timeouts["encoder"] <= 4.0
    assert 2.0 < timeouts["llm"] <= timeouts["encoder"]


async def test_no_time_left_fails_before_any_triton_call(
    settings, vision_triton, image_server, monkeypatch
) -> None:
    settings.VISION_ALLOWED_HOSTS = [f"127.0.0.1:{image_server.port}"]
    config, engine = await vl_engine(vision_triton)
    timeouts = record_timeouts(engine, monkeypatch)
    source = f"/red.png?expired={uuid.uuid4().hex}"
    vision = vision_prompt_generate(
        config=config, engine=engine, prompt="Hi", images=[image_server.base + source]
    )
    request = GenerationRequest(
        prompt_ids=vision.prompt_ids,
        params=SamplingParams(max_tokens=20),
        request_id=f"expired-{uuid.uuid4().hex}",
        deadline=time.monotonic(),
    )
    with pytest.raises(DeadlineExceeded):
        await vision_inputs_load(vision, request=request)
    # Admitted, the runner answers it 504 and settles it as having used nothing.
    endpoint = ImagesOnly(SimpleNamespace(model=VL))
    run = Run(RequestFactory().post("/generate"), caller=None, endpoint=endpoint)
    run.admission = admission = RecordingAdmission()
    prepared = Prepared(engine.generate(request), [request], vision)
    run.generation = prepared.generation
    with pytest.raises(APIError) as caught:
        await run.admitted(Target(config, engine), prepared)
    assert (caught.value.status, caught.value.code) == (504, "timeout")
    assert [(o.status, o.error_type, o.usage.total_tokens) for o in admission.outcomes] == [
        (504, "timeout", 0)
    ]
    with pytest.raises(DeadlineExceeded):
        await engine.generate(request).start()
    assert timeouts == {}
    assert source not in [path for path, _ in image_server.requests]
