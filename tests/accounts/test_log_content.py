"""Prompt and response text reach the request log only when REQUEST_LOG_CONTENT says so."""

from __future__ import annotations

import pytest

from accounts.models import RequestLog
from tests.accounts.conftest import BACKENDS, bearer, redis_env, wait_for_logs
from tests.conftest import CHAT_MODEL, start_gateway, stop_gateway

pytestmark = pytest.mark.committed_db


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("stream", [False, True])
def test_text_is_stored_only_when_enabled(backend, stream, make_key, tmp_path, request):
    if backend == "redis":
        request.getfixturevalue("redis_url")
    _, secret = make_key()
    body = {"model": CHAT_MODEL, "prompt": "[[say:kept 你好]]", "stream": stream}
    for enabled in (True, False):
        gateway = start_gateway(
            tmp_path, {**redis_env(backend), "REQUEST_LOG_CONTENT": str(enabled).lower()}
        )
        request_id = f"content-{backend}-{stream}-{enabled}"
        try:
            with gateway.client(api_key=None, headers=bearer(secret)) as client:
                response = client.post("/generate", json=body, headers={"x-request-id": request_id})
                assert response.status_code == 200
        finally:
            stop_gateway(gateway)
        assert wait_for_logs(
            lambda rid=request_id: RequestLog.objects.filter(request_id=rid).count(), 1
        )
        row = RequestLog.objects.get(request_id=request_id)
        assert (row.status, row.finish_reason, row.streamed) == (200, "stop", stream)
        if enabled:
            assert "[[say:kept 你好]]" in row.prompt_text
            assert row.response_text == "kept 你好"
        else:
            assert row.prompt_text is None and row.response_text is None


def test_a_body_over_the_limit_is_refused_and_logged(committed, live_gateway):
    request_id = "too-large-1"
    big = b'{"prompt": "' + b"x" * (21 * 1024 * 1024) + b'"}'
    with live_gateway.client() as client:
        response = client.post(
            "/generate",
            content=big,
            headers={"content-type": "application/json", "x-request-id": request_id},
        )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"
    logged = wait_for_logs(lambda: RequestLog.objects.filter(request_id=request_id).count(), 1)
    assert logged == 1, live_gateway.log_tail()
    assert RequestLog.objects.get(request_id=request_id).status == 413


@pytest.mark.parametrize("content", [False, True])
def test_a_streams_body_is_cut_to_what_its_log_row_reads(content, settings):
    from django.test import RequestFactory

    from accounts.logs import PROMPT_BYTES, body_trim

    settings.REQUEST_LOG_CONTENT = content
    body = b'{"prompt": "' + "你".encode() * PROMPT_BYTES + b'"}'
    request = RequestFactory().post("/generate", data=body, content_type="application/json")
    assert request.body == body  # read by the view
    body_trim(request)
    assert request.body == (body[:PROMPT_BYTES] if content else b"")
    assert request.read() == request.body  # the stream as Django leaves a read body


def test_a_body_never_read_is_left_whole():
    from django.test import RequestFactory

    from accounts.logs import body_trim

    request = RequestFactory().post("/generate", data=b"{}", content_type="application/json")
    body_trim(request)
    assert request.body == b"{}"
