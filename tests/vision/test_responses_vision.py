"""/v1/responses with input_image parts, through the existing Qwen-VL path (issue 18)."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from tests.vision import images
from tests.vision.conftest import TEXT, VL

pytestmark = pytest.mark.django_db


@pytest.fixture
def client(gateway) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=gateway.api_key) as api:
        yield api


RED = images.data_url(images.encode(images.solid(images.RED), "PNG"), "PNG")
BLUE = images.data_url(images.encode(images.solid(images.BLUE), "PNG"), "PNG")


def content(*urls: str) -> list[dict]:
    parts = [{"type": "input_image", "image_url": url} for url in urls]  # no detail: LangChain
    return [{"role": "user", "content": [{"type": "input_text", "text": "What is this?"}, *parts]}]


def test_images(client) -> None:
    red = client.responses.create(model=VL, input=content(RED))
    assert red.output_text == "Picture 1 is mostly red."
    both = client.responses.create(model=VL, input=content(BLUE, RED))
    assert both.output_text == "Picture 1 is mostly blue. Picture 2 is mostly red."
    assert red.usage.input_tokens > 256
    with client.responses.stream(model=VL, input=content(RED)) as events:
        streamed = events.get_final_response()
    assert streamed.output_text == red.output_text


def test_a_text_model_refuses_images(client) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model=TEXT, input=content(RED))
    assert caught.value.status_code == 400
    assert caught.value.body["param"].startswith("input")


def test_file_inputs_are_refused(client) -> None:
    file_part = {"type": "input_file", "file_data": "data:application/pdf;base64,AAAA"}
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model=VL, input=[{"role": "user", "content": [file_part]}])
    assert caught.value.body["param"] == "input[0].content[0].type"
