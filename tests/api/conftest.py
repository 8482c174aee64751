"""Fixtures of the /v1/responses tests (tests/api/test_responses*.py): a gateway that stores responses (REQUEST_LOG_CONTENT
on), its clients, and dev models with the Hermes tool format and the <think> parser."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from openai import OpenAI

from tests.conftest import LiveGateway, dev_model_upsert, gateway_running

HERMES_MODEL = "dev-chat-hermes"
THINK_MODEL = "dev-chat-think"


@pytest.fixture(scope="module")
def extra_models(model_configs, devtriton, django_db_blocker) -> None:
    with django_db_blocker.unblock():
        dev_model_upsert(HERMES_MODEL, devtriton, tool_format="hermes")
        dev_model_upsert(THINK_MODEL, devtriton, tool_format="hermes", reasoning_format="think")


@pytest.fixture(scope="module")
def storing_gateway(extra_models, owner_key, tmp_path_factory) -> Iterator[LiveGateway]:
    env = {"REQUEST_LOG_CONTENT": "true"}
    with gateway_running(tmp_path_factory.mktemp("responses"), env, api_key=owner_key) as gw:
        yield gw


@pytest.fixture
def oai(storing_gateway) -> Iterator[OpenAI]:
    with OpenAI(
        base_url=storing_gateway.url + "/v1", api_key=storing_gateway.api_key, max_retries=0
    ) as client:
        yield client


@pytest.fixture
def raw(storing_gateway):
    with storing_gateway.client() as client:
        yield client
