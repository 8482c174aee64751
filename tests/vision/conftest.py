"""Fixtures for the vision tests: a dev Triton with the Qwen-VL pair, model rows, image
servers on 127.0.0.1, and a gateway allowed to fetch from one of them (package-scoped,
shared by the /generate and the chat tests)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from llmgateway.devtriton.server import DevTriton
from llmgateway.devtriton.stack import dev_triton
from tests.conftest import TOKENIZER, LiveGateway, gateway_running, model_upsert_committed
from tests.vision.servers import ImageServer

VL, VL_V08, TEXT = "dev-vl", "dev-vl-v08", "dev-vl-textonly"


@pytest.fixture(scope="package")
def vision_triton(tmp_path_factory) -> Iterator[DevTriton]:
    server = dev_triton(
        models={
            "qwen-vl-visual": "qwen_vl_visual",
            "qwen-vl-llm": "qwen_vl_llm",
            "qwen-vl-v08": "0.8",
        },
        state_dir=tmp_path_factory.mktemp("vision-triton"),
    )
    with server:
        yield server


@pytest.fixture(scope="package")
def vision_models(django_db_setup, django_db_blocker, vision_triton) -> Iterator[None]:
    from llmgateway.models import ModelConfig

    common = {
        "triton_url": vision_triton.grpc_url,
        "tokenizer_path": TOKENIZER,
        "context_length": 4096,
        "max_output_tokens": 1000,
        "default_max_tokens": 200,
    }
    with django_db_blocker.unblock():
        # visual_model left blank: qwen-vl-llm → qwen-vl-visual by convention.
        model_upsert_committed(name=VL, triton_model="qwen-vl-llm", model_type="qwen-vl", **common)
        model_upsert_committed(
            name=VL_V08,
            triton_model="qwen-vl-v08",
            visual_model="qwen-vl-visual",
            model_type="qwen-vl",
            **common,
        )
        model_upsert_committed(
            name=TEXT, triton_model="qwen-vl-llm", model_type="qwen2-chat", **common
        )
    yield
    with django_db_blocker.unblock():
        ModelConfig.objects.filter(name__in=[VL, VL_V08, TEXT]).delete()


@pytest.fixture(scope="package")
def image_server() -> Iterator[ImageServer]:
    with ImageServer() as server:
        yield server


@pytest.fixture(scope="package")
def forbidden_server() -> Iterator[ImageServer]:
    with ImageServer() as server:
        yield server


@pytest.fixture(scope="package")
def gateway(vision_models, owner_key, image_server, tmp_path_factory) -> Iterator[LiveGateway]:
    env = {
        "VISION_ALLOWED_HOSTS": f"127.0.0.1:{image_server.port}",
        "VISION_FETCH_TIMEOUT": "1",
        "VISION_MAX_IMAGES": "4",
        "VISION_MAX_IMAGE_BYTES": "700000",
    }
    with gateway_running(tmp_path_factory.mktemp("vision-gateway"), env, api_key=owner_key) as live:
        yield live
