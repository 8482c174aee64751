"""/v1/chat/completions with image_url parts, through the official openai client.

Checklist items 27-30 of shared/reference/openai-compat.md §4, against the dev
Triton's Qwen-VL pair (see tests/vision/conftest.py).
"""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from tests.vision import images
from tests.vision.conftest import TEXT, VL, VL_V08

pytestmark = pytest.mark.django_db
IMAGE_TOKENS = 256


@pytest.fixture
def client(gateway) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=gateway.api_key) as api:
        yield api


def image_part(url: str, **extra) -> dict:
    return {"type": "image_url", "image_url": {"url": url, **extra}}


def url(image, fmt: str = "PNG") -> str:
    return images.data_url(images.encode(image, fmt), fmt)


RED, BLUE = url(images.solid(images.RED)), url(images.solid(images.BLUE))


def ask(client: openai.OpenAI, *parts, model: str = VL, **kwargs):
    content = [{"type": "text", "text": "What is in the picture?"}, *parts]
    return client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": content}], max_tokens=100, **kwargs
    )


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_data_url_parts(client, fmt) -> None:
    red = ask(client, image_part(url(images.solid(images.RED), fmt)))
    blue = ask(client, image_part(url(images.solid(images.BLUE), fmt)))
    assert red.choices[0].message.content == "Picture 1 is mostly red."
    assert blue.choices[0].message.content == "Picture 1 is mostly blue."
    text_only = client.chat.completions.create(
        model=VL, messages=[{"role": "user", "content": "What is in the picture?"}], max_tokens=5
    )
    assert red.usage.prompt_tokens >= text_only.usage.prompt_tokens + IMAGE_TOKENS + 2


def test_two_images_in_order_and_streaming(client) -> None:
    stream = ask(
        client,
        image_part(BLUE),
        image_part(RED),
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Picture 1 is mostly blue. Picture 2 is mostly red."
    assert chunks[-1].usage.prompt_tokens > 2 * IMAGE_TOKENS


def test_images_across_a_conversation(client) -> None:
    messages = [
        {"role": "user", "content": [image_part(RED), {"type": "text", "text": "And?"}]},
        {"role": "assistant", "content": "Red."},
        {
            "role": "user",
            "content": [image_part(images.data_url(images.encode(images.gradient()), "PNG"))],
        },
    ]
    answer = client.chat.completions.create(model=VL_V08, messages=messages, max_tokens=100)
    assert answer.choices[0].message.content == (
        "Picture 1 is mostly red. Picture 2 is mostly purple. "
        "It goes from red on the left to blue on the right."
    )


def test_url_parts_and_detail(client, image_server) -> None:
    answer = ask(client, image_part(f"{image_server.base}/blue.png", detail="high"))
    assert answer.choices[0].message.content == "Picture 1 is mostly blue."


def refused(call) -> openai.BadRequestError:
    with pytest.raises(openai.BadRequestError) as caught:
        call()
    return caught.value


def test_refusals(client, image_server, forbidden_server) -> None:
    for bad in (
        f"{forbidden_server.base}/red.png",
        f"{image_server.base}/redirect?to={forbidden_server.base}/red.png",
        "http://169.254.169.254/latest/meta-data/",
        "data:image/png;base64,%%%",
    ):
        error = refused(lambda bad=bad: ask(client, image_part(bad)))
        assert error.body["param"] == "messages[0].content[1]", bad
    assert forbidden_server.requests == []
    bare = {"type": "image_url", "image_url": RED}
    assert refused(lambda: ask(client, bare)).body["param"] == "messages[0].content[1]"
    text_model = refused(lambda: ask(client, image_part(RED), model=TEXT))
    assert text_model.body["param"] == "messages[0].content[1]"
