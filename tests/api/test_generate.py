"""The seed's /generate and /batch_generate against the real dev Triton."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.conftest import CHAT_MODEL, DOWN_MODEL, V08_MODEL

MODELS = [CHAT_MODEL, V08_MODEL]


def sse_events(response: httpx.Response) -> list[dict | str]:
    events = []
    for block in response.text.split("\n\n"):
        if not block.strip():
            continue
        assert block.startswith("data: "), block
        data = block[len("data: ") :]
        events.append(data if data == "[DONE]" else json.loads(data))
    return events


def streamed(http: httpx.Client, body: dict) -> tuple[str, list]:
    response = http.post("/generate", json={**body, "stream": True})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response)
    assert events[-1] == "[DONE]"
    return "".join(e.get("text", "") for e in events[:-1]), events


def test_seed_curl_form_body_answers_from_triton(http):
    # curl -d sends application/x-www-form-urlencoded; the seed accepted it.
    response = http.post(
        "/generate",
        content=json.dumps({"prompt": "who are you?", "model": CHAT_MODEL}),
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert "dev Triton scripted model" in body["text"]
    assert body["id"] == response.headers["x-request-id"]


@pytest.mark.parametrize("model", MODELS)
def test_streamed_text_joined_equals_non_streamed(http, model):
    body = {"model": model, "prompt": "tell me a story", "random_seed": 7, "temperature": 0.8}
    plain = http.post("/generate", json=body).json()["text"]
    joined, events = streamed(http, body)
    assert joined == plain
    assert len(events) > 3  # really streamed in pieces
    assert events[-2]["finish_reason"] == "stop"


@pytest.mark.parametrize("model", MODELS)
def test_stop_string_split_across_tokens_never_leaks(http, model):
    body = {"model": model, "prompt": "[[say:alpha END omega]]", "stop_words": ["END"]}
    plain = http.post("/generate", json=body).json()["text"]
    joined, events = streamed(http, body)
    assert plain == joined == "alpha "
    assert all("E" not in e.get("text", "") for e in events[:-1] if isinstance(e, dict))
    assert events[-2]["finish_reason"] == "stop"


@pytest.mark.parametrize("model", MODELS)
def test_multibyte_characters_arrive_whole(http, model):
    body = {"model": model, "prompt": "[[utf8]]"}
    plain = http.post("/generate", json=body).json()["text"]
    joined, events = streamed(http, body)
    assert joined == plain
    assert "你好世界" in plain and "👍🎉" in plain
    for e in events[:-1]:
        assert "\ufffd" not in e["text"]


def test_max_output_len_ends_with_length(http):
    joined, events = streamed(
        http, {"model": CHAT_MODEL, "prompt": "[[long:50]]", "max_output_len": 5}
    )
    final = events[-2]
    assert final["finish_reason"] == "length"
    assert final["usage"]["completion_tokens"] == 5


def test_seed_and_sampling_change_the_text_deterministically(http):
    base = {"model": CHAT_MODEL, "prompt": "hello there"}
    a = http.post("/generate", json={**base, "random_seed": 1}).json()["text"]
    b = http.post("/generate", json={**base, "random_seed": 1}).json()["text"]
    c = http.post("/generate", json={**base, "random_seed": 2}).json()["text"]
    assert a == b
    assert a != c


def test_num_beams_returns_the_best_beam(http):
    one = http.post("/generate", json={"model": CHAT_MODEL, "prompt": "hi"}).json()["text"]
    beams = http.post("/generate", json={"model": CHAT_MODEL, "prompt": "hi", "num_beams": 3})
    assert beams.status_code == 200, beams.text
    assert beams.json()["text"] == one


def test_only_return_output_false_echoes_the_prompt(http):
    body = {"model": CHAT_MODEL, "prompt": "[[say:ok]]"}
    assert http.post("/generate", json=body).json()["text"] == "ok"
    echoed = http.post("/generate", json={**body, "only_return_output": False}).json()["text"]
    assert echoed == "[[say:ok]]ok"


def test_uuid_becomes_the_response_id(http):
    body = {"model": CHAT_MODEL, "prompt": "[[say:x]]", "uuid": "my-id-1"}
    assert http.post("/generate", json=body).json()["id"] == "my-id-1"


def test_batch_generate(http):
    response = http.post(
        "/batch_generate",
        json={"model": V08_MODEL, "prompts": ["[[say:one]]", "[[say:two]]", "[[say:三]]"]},
    )
    assert response.status_code == 200, response.text
    assert response.json()["texts"] == ["one", "two", "三"]


def test_batch_generate_refuses_images_naming_the_parameter(http):
    response = http.post(
        "/batch_generate",
        json={"model": V08_MODEL, "prompts": ["x"], "images": ["data:image/png;base64,AAAA"]},
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "images" and "/generate" in error["message"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": "x", "temperature": -1}, "temperature"),
        ({"prompt": "x", "top_p": 1.5}, "top_p"),
        ({"prompt": "x", "top_k": -2}, "top_k"),
        ({"prompt": "x", "top_k": 2**70}, "top_k"),
        ({"prompt": "x", "max_output_len": 0}, "max_output_len"),
        ({"prompt": "x", "max_output_len": 100000}, "max_output_len"),
        ({"prompt": "x", "num_beams": 99}, "num_beams"),
        ({"prompt": "x", "repetition_penalty": 0}, "repetition_penalty"),
        ({"prompt": "x", "timeout": 0}, "timeout"),
        ({"prompt": ""}, "prompt"),
        ({}, "prompt"),
        ({"prompt": "x", "images": ["file:///etc/passwd"]}, "images[0]"),
        ({"prompt": "x", "images": ["https://example.invalid/a.png"]}, "images"),
    ],
)
def test_bad_input_is_400_naming_the_field(http, body, param):
    response = http.post("/generate", json={"model": CHAT_MODEL, **body})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"
    assert param.split("[")[0] in error["message"]


def test_model_required_when_several_are_configured(http):
    response = http.post("/generate", json={"prompt": "x"})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "model"


def test_unknown_model_is_404(http):
    response = http.post("/generate", json={"model": "nope", "prompt": "x"})
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"


def test_malformed_json_is_400(http):
    response = http.post(
        "/generate", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert "JSON" in response.json()["error"]["message"]


def test_triton_down_is_a_clear_503(http):
    response = http.post("/generate", json={"model": DOWN_MODEL, "prompt": "x"})
    assert response.status_code == 503
    assert response.headers["retry-after"]
    error = response.json()["error"]
    assert error["code"] == "service_unavailable"
    assert "127.0.0.1" not in error["message"]


def test_triton_error_mid_stream_is_an_error_event(http):
    joined, events = streamed(http, {"model": CHAT_MODEL, "prompt": "[[long:20]][[error:3]]"})
    assert events[-1] == "[DONE]"
    assert events[-2]["error"]["type"] == "server_error"
    assert "scripted" not in json.dumps(events[-2])  # sanitised


def test_triton_error_non_streamed_is_500_sanitised(http):
    response = http.post(
        "/generate", json={"model": CHAT_MODEL, "prompt": "[[long:20]][[error:3]]"}
    )
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "inference_error"


@pytest.mark.parametrize("model", MODELS)
def test_client_disconnect_cancels_inside_triton(live_gateway, devtriton, model):
    request_id = f"disconnect-{model}"
    with (
        live_gateway.client() as client,
        client.stream(
            "POST",
            "/generate",
            json={"model": model, "prompt": "[[long:400]][[delay:20]]", "stream": True},
            headers={"x-request-id": request_id},
        ) as response,
    ):
        chunks = response.iter_lines()
        for line in chunks:
            if line.startswith("data: "):
                break  # got the first token; hang up
    event = devtriton.wait_for_event("cancelled", request_id, timeout=10)
    assert event["tokens_sent"] < 400


def test_deadline_cancels_inside_triton(http, devtriton):
    request_id = "deadline-1"
    response = http.post(
        "/generate",
        json={"model": CHAT_MODEL, "prompt": "[[long:400]][[delay:20]]", "timeout": 0.5},
        headers={"x-request-id": request_id},
    )
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "timeout"
    event = devtriton.wait_for_event("cancelled", request_id, timeout=10)
    assert event["tokens_sent"] < 400


@pytest.mark.parametrize("path", ["/nope", "/v1/nope", "/generate/extra"])
def test_unknown_path_is_404_in_the_envelope(http, path):
    response = http.post(path, json={})
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "unknown_url"
    assert response.headers["x-request-id"]


def test_wrong_method_is_405_in_the_envelope(http):
    response = http.get("/generate")
    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"


def test_body_over_the_limit_is_413(http):
    big = b'{"prompt": "' + b"x" * (21 * 1024 * 1024) + b'"}'
    response = http.post("/generate", content=big, headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"


def test_client_request_id_is_echoed(http):
    response = http.get("/health", headers={"x-request-id": "abc-123"})
    assert response.headers["x-request-id"] == "abc-123"


def test_readiness_reports_models(http):
    response = http.get("/health/ready")
    body = response.json()
    # dev-down points at a port with no Triton: reported, but the others still serve.
    assert response.status_code == 200
    assert body["database"] == "ok"
    assert body["models"]["dev-chat"] == "ready"
    assert body["models"]["dev-down"] == "unavailable"


@pytest.mark.parametrize("model", MODELS)
def test_a_flags_only_final_response_ends_the_stream(http, model):
    """Like TRT-LLM's BLS model: data without FINAL, then an empty FINAL response."""
    joined, events = streamed(http, {"model": model, "prompt": "[[say:done 好]][[flagsfinal]]"})
    assert joined == "done 好"
    assert events[-2]["finish_reason"] == "stop"


def test_a_chunked_body_over_the_limit_is_413(http):
    """No content-length to refuse it by: the gateway stops keeping it at the limit."""

    def chunks():
        yield (
            b'{"model": "' + CHAT_MODEL.encode() + b'", "messages": [{"role": "user", "content": "'
        )
        for _ in range(21):
            yield b"x" * (1024 * 1024)
        yield b'"}]}'

    response = http.post(
        "/v1/chat/completions", content=chunks(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 413, response.text
    assert response.json()["error"]["code"] == "request_too_large"
    # The connection is still good for the next request.
    assert http.get("/health").status_code == 200
