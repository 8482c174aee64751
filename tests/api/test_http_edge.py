"""HTTP at the API's edge: HEAD, OPTIONS and CORS (llmgateway/api/middleware.py)."""

from __future__ import annotations

import pytest
from django.test import AsyncClient, override_settings

from tests.conftest import CHAT_MODEL

ORIGIN = "https://app.example"
# What the official SDK's preflight asks for (its own headers included).
SDK_HEADERS = "authorization, content-type, x-stainless-lang, x-stainless-retry-count"


def test_head_is_served_as_get_without_a_body(http):
    for path in ("/v1/models", f"/v1/models/{CHAT_MODEL}", "/health"):
        got = http.get(path)
        head = http.head(path)
        assert head.status_code == got.status_code == 200, path
        assert head.content == b""
        assert head.headers["content-type"] == got.headers["content-type"]
        assert head.headers["x-request-id"]


def test_head_on_a_post_only_path_is_405(http):
    response = http.head("/v1/chat/completions")
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"


def test_options_names_the_paths_methods(http):
    post = http.options("/v1/chat/completions")
    assert post.status_code == 204 and post.content == b""
    assert "content-type" not in post.headers
    assert post.headers["allow"] == "POST, OPTIONS"
    assert post.headers["x-request-id"]
    assert "access-control-allow-origin" not in post.headers  # no Origin: not CORS
    assert http.options("/v1/models").headers["allow"] == "GET, HEAD, OPTIONS"
    unknown = http.options("/v1/nowhere")
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "unknown_url"


def test_a_browser_preflight_is_allowed_without_a_key(live_gateway):
    with live_gateway.client(api_key=None) as http:
        response = http.options(
            "/v1/chat/completions",
            headers={
                "origin": ORIGIN,
                "access-control-request-method": "POST",
                "access-control-request-headers": SDK_HEADERS,
            },
        )
    assert response.status_code == 204
    assert response.headers["access-control-allow-origin"] == "*"
    assert response.headers["access-control-allow-methods"] == "POST, OPTIONS"
    assert response.headers["access-control-allow-headers"] == SDK_HEADERS
    assert int(response.headers["access-control-max-age"]) > 0
    assert "access-control-allow-credentials" not in response.headers


def test_browser_responses_expose_what_the_sdk_reads(http, live_gateway):
    body = {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "hi"}]}
    ok = http.post("/v1/chat/completions", json=body, headers={"origin": ORIGIN})
    streamed = http.post(
        "/v1/chat/completions", json={**body, "stream": True}, headers={"origin": ORIGIN}
    )
    with live_gateway.client(api_key=None) as anonymous:
        refused = anonymous.post("/v1/chat/completions", json=body, headers={"origin": ORIGIN})
    assert (ok.status_code, streamed.status_code, refused.status_code) == (200, 200, 401)
    for response in (ok, streamed, refused):
        assert response.headers["access-control-allow-origin"] == "*"
        exposed = response.headers["access-control-expose-headers"].split(", ")
        assert {"x-request-id", "retry-after", "x-ratelimit-remaining-tokens"} <= set(exposed)
    assert "access-control-allow-origin" not in http.post("/v1/chat/completions", json=body).headers


@pytest.mark.parametrize(
    "origin, allowed",
    [("https://app.example", "https://app.example"), ("https://evil.example", None)],
)
@override_settings(CORS_ALLOWED_ORIGINS=["https://app.example", "https://other.example"])
async def test_a_listed_origin_is_echoed_and_others_get_no_cors_headers(origin, allowed):
    response = await AsyncClient().get("/health", headers={"origin": origin})
    assert response.status_code == 200
    assert response.get("access-control-allow-origin") == allowed
    assert ("origin" in response.get("vary", "").lower()) == (allowed is not None)


@override_settings(CORS_ALLOWED_ORIGINS=[])
async def test_no_listed_origin_turns_cors_off():
    response = await AsyncClient().get("/health", headers={"origin": ORIGIN})
    assert response.status_code == 200
    assert "access-control-allow-origin" not in response
