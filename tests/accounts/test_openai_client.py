"""Checklist items 40-42 with the official openai client."""

from __future__ import annotations

import time
import uuid

import httpx
import openai
import pytest
from openai import OpenAI

from accounts.models import RequestLog
from tests.accounts.conftest import wait_for_logs
from tests.conftest import CHAT_MODEL

pytestmark = pytest.mark.committed_db

MESSAGES = [{"role": "user", "content": "[[say:hi]]"}]


def client(gateway, secret: str, **kwargs) -> OpenAI:
    return OpenAI(base_url=gateway.url + "/v1", api_key=secret, **kwargs)


def key_logs(key):
    return RequestLog.objects.filter(api_key_id=key.pk)


def test_40_no_wrong_or_revoked_key_is_authentication_error(live_gateway, make_key):
    from django.utils import timezone

    with httpx.Client(base_url=live_gateway.url) as http:
        response = http.post("/v1/chat/completions", json={"model": CHAT_MODEL})
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "invalid_api_key"
    revoked, revoked_secret = make_key()
    revoked.revoked_at = timezone.now()
    revoked.save()
    for secret in ("sk-gw-000000000000-wrong", revoked_secret):
        with (
            client(live_gateway, secret, max_retries=0) as c,
            pytest.raises(openai.AuthenticationError) as info,
        ):
            c.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES)
        assert info.value.code == "invalid_api_key"
        assert info.value.status_code == 401
        assert isinstance(info.value.body, dict) and info.value.body["message"]
        assert info.value.request_id


def test_41_rate_limit_is_rate_limit_error_with_retry_after(live_gateway, make_key):
    _, secret = make_key(rpm_limit=1, tpm_limit=100_000)
    with client(live_gateway, secret, max_retries=0) as c:
        raw = c.chat.completions.with_raw_response.create(model=CHAT_MODEL, messages=MESSAGES)
        assert raw.headers["x-ratelimit-limit-requests"] == "1"
        assert raw.headers["x-ratelimit-remaining-requests"] == "0"
        assert raw.headers["x-ratelimit-limit-tokens"] == "100000"
        assert int(raw.headers["x-ratelimit-remaining-tokens"]) < 100_000
        assert raw.headers["x-ratelimit-reset-tokens"]
        with pytest.raises(openai.RateLimitError) as info:
            c.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES)
    assert info.value.code == "rate_limit_exceeded"
    headers = info.value.response.headers
    assert int(headers["retry-after"]) >= 1 and int(headers["retry-after-ms"]) > 0


def test_41_the_client_waits_as_told_and_retries(live_gateway, make_key):
    """A concurrency refusal says retry in 250 ms; the default client does, and succeeds.

    No sleeps deciding the order: the holder's stream has sent its first chunk (it is
    admitted) before the other request is sent, and ends when that request is refused,
    so the retry finds the slot free."""
    key, secret = make_key(max_concurrency=1)
    # 2 s of tokens: longer than sending the other request takes, even on a loaded machine.
    slow = [{"role": "user", "content": "[[delay:40]][[long:50]]"}]
    holder = client(live_gateway, secret, max_retries=0).chat.completions.create(
        model=CHAT_MODEL, messages=slow, stream=True
    )
    chunks = iter(holder)
    next(chunks)
    refusals = []

    def on_response(response) -> None:
        if response.status_code == 429 and not refusals:
            refusals.append(response.headers.get("retry-after-ms"))
            for _ in chunks:  # the holder's generation ends; its lease is released
                pass

    http_client = openai.DefaultHttpxClient(event_hooks={"response": [on_response]})
    started = time.monotonic()
    with client(live_gateway, secret, http_client=http_client) as c:  # default max_retries=2
        c.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES)
    assert refusals == ["250"]
    assert time.monotonic() - started >= 0.25
    assert wait_for_logs(lambda: key_logs(key).count(), 3) >= 3
    statuses = sorted(key_logs(key).values_list("status", flat=True))
    assert statuses == [200, 200, 429]


def test_42_insufficient_quota_is_not_retried(live_gateway, make_key):
    key, secret = make_key(budget_tokens=5, budget_period="month")
    request_id = f"quota-{uuid.uuid4().hex[:6]}"
    with client(live_gateway, secret) as c, pytest.raises(openai.RateLimitError) as info:
        c.chat.completions.create(
            model=CHAT_MODEL, messages=MESSAGES, extra_headers={"x-request-id": request_id}
        )
    assert info.value.code == "insufficient_quota"
    assert info.value.type == "insufficient_quota"
    assert info.value.response.headers["x-should-retry"] == "false"
    assert wait_for_logs(lambda: key_logs(key).count(), 1) == 1
    time.sleep(1.0)  # a retry would have arrived by now (the SDK's backoff is < 1 s)
    assert key_logs(key).count() == 1


def test_41_a_request_larger_than_the_tpm_limit_is_not_retried(live_gateway, make_key):
    """No wait would let it through: "Request too large", no retry-after, not retried."""
    key, secret = make_key(tpm_limit=50)
    with client(live_gateway, secret) as c, pytest.raises(openai.RateLimitError) as info:
        c.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES, max_tokens=100)
    assert info.value.code == "rate_limit_exceeded"
    assert info.value.type == "tokens"
    assert info.value.body["message"].startswith("Request too large")
    assert "limit 50, requested" in info.value.body["message"]
    headers = info.value.response.headers
    assert headers["x-should-retry"] == "false"
    assert "retry-after" not in headers and "retry-after-ms" not in headers
    assert wait_for_logs(lambda: key_logs(key).count(), 1) == 1
    time.sleep(1.0)  # a retry would have arrived by now (the SDK's backoff is < 1 s)
    assert key_logs(key).count() == 1
