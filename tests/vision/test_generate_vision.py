"""/generate with images, end to end: gateway → dev visual encoder → dev LLM.

The dev encoder turns pixels into colour features and the dev LLM describes the
features it finds in prompt_embedding_table, so each answer proves the pixels of
that image (and its position among the request's images) reached the model.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.vision import images
from tests.vision.conftest import TEXT, VL, VL_V08

# pytest-django sets the test database up only for marked tests; the gateway needs it.
pytestmark = pytest.mark.django_db
IMAGE_TOKENS = 256


@pytest.fixture
def client(gateway) -> Iterator[httpx.Client]:
    with gateway.client() as http:
        yield http


def generate(client: httpx.Client, image_urls: list[str], **fields) -> httpx.Response:
    body = {"model": VL, "prompt": "Describe the pictures.", "images": image_urls, **fields}
    return client.post("/generate", json=body)


def url(image, fmt: str = "PNG", **options) -> str:
    return images.data_url(images.encode(image, fmt, **options), fmt)


RED, BLUE = url(images.solid(images.RED)), url(images.solid(images.BLUE))


def test_red_and_blue_get_different_answers(client) -> None:
    red, blue = generate(client, [RED]), generate(client, [BLUE])
    assert red.status_code == 200, red.text
    assert red.json()["text"] == "Picture 1 is mostly red."
    assert blue.json()["text"] == "Picture 1 is mostly blue."


def test_two_images_reach_the_model_in_order(client, vision_triton) -> None:
    request_id = f"two-{uuid.uuid4().hex}"
    forward = generate(client, [RED, BLUE], uuid=request_id)
    backward = generate(client, [BLUE, RED])
    assert forward.json()["text"] == "Picture 1 is mostly red. Picture 2 is mostly blue."
    assert backward.json()["text"] == "Picture 1 is mostly blue. Picture 2 is mostly red."
    # One encoder call for both images.
    encode = [e for e in vision_triton.events() if e["request_id"].startswith(request_id)]
    assert [(e["event"], e.get("batch")) for e in encode if e["event"] == "encode"] == [
        ("encode", 2)
    ]


@pytest.mark.parametrize(
    ("fmt", "options"),
    [("PNG", {}), ("JPEG", {"quality": 90}), ("WEBP", {}), ("GIF", {})],
)
def test_formats(client, fmt, options) -> None:
    response = generate(client, [url(images.solid(images.GREEN, (300, 200)), fmt, **options)])
    assert response.json()["text"] == "Picture 1 is mostly green.", response.text


def test_gradient(client) -> None:
    response = generate(client, [url(images.gradient())])
    assert "It goes from red on the left to blue on the right." in response.json()["text"]


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_photo_like(client, fmt) -> None:
    response = generate(client, [url(images.photo_like((640, 480)), fmt)])
    assert "It goes from blue at the top to green at the bottom." in response.json()["text"]


def test_tensorrt_llm_08_interface(client) -> None:
    response = generate(client, [BLUE, RED], model=VL_V08)
    assert response.json()["text"] == "Picture 1 is mostly blue. Picture 2 is mostly red."


def test_streaming_counts_image_positions(client) -> None:
    body = {"model": VL, "prompt": "Hi", "images": [RED, BLUE], "stream": True}
    with client.stream("POST", "/generate", json=body) as response:
        assert response.status_code == 200
        events = [
            json.loads(line[6:])
            for line in response.iter_lines()
            if line.startswith("data: ") and line != "data: [DONE]"
        ]
    text = "".join(e["text"] for e in events)
    assert text == "Picture 1 is mostly red. Picture 2 is mostly blue."
    usage = events[-1]["usage"]
    assert usage["prompt_tokens"] > 2 * (IMAGE_TOKENS + 2)


def test_url_images_from_an_allowed_server(client, image_server) -> None:
    response = generate(client, [f"{image_server.base}/blue.png", f"{image_server.base}/red.png"])
    assert response.json()["text"] == "Picture 1 is mostly blue. Picture 2 is mostly red."


def assert_refused(response: httpx.Response, param: str, fragment: str) -> None:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param
    assert fragment in error["message"]
    assert error["type"] == "invalid_request_error"


def test_ssrf_refusals_are_400s_naming_the_image(client, image_server, forbidden_server) -> None:
    cases = [
        (f"{forbidden_server.base}/red.png", "non-public"),
        (f"http://localhost:{forbidden_server.port}/red.png", "non-public"),
        ("http://169.254.169.254/latest/meta-data/", "non-public"),
        ("http://10.0.0.1/cat.png", "non-public"),
        (f"{image_server.base}/redirect?to={forbidden_server.base}/red.png", "non-public"),
        (f"{image_server.base}/big", "larger than"),
        (f"{image_server.base}/slow", "longer than 1 s"),
        (f"{image_server.base}/html", "text/html"),
    ]
    for bad, fragment in cases:
        assert_refused(generate(client, [RED, bad]), "images[1]", fragment)
    assert forbidden_server.requests == []


def test_other_refusals(client) -> None:
    assert_refused(generate(client, ["data:image/png;base64,AAAA"]), "images[0]", "not a PNG")
    assert_refused(generate(client, ["/etc/passwd"]), "images[0]", "not enabled")
    assert_refused(generate(client, [RED] * 5), "images[4]", "At most 4 images")
    text_model = generate(client, [RED], model=TEXT)
    assert_refused(text_model, "images", "does not accept images")
    bad_scheme = generate(client, ["ftp://example.com/a.png"])
    assert bad_scheme.status_code == 400


def test_text_only_requests_still_work(client) -> None:
    response = client.post("/generate", json={"model": VL, "prompt": "[[say:plain]]"})
    assert response.json()["text"] == "plain"
