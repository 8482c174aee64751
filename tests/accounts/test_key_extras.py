"""Per-key extras end to end: per-model limits and the headers, the IP allow-list,
rotation with a grace period."""

from __future__ import annotations

import time
import uuid
from datetime import timedelta

import httpx
import pytest

from accounts.models import ApiKey, Project, ProjectModelLimit, RequestLog
from tests.accounts.conftest import bearer, wait_for_logs
from tests.conftest import CHAT_MODEL

pytestmark = pytest.mark.committed_db

BODY = {"model": CHAT_MODEL, "prompt": "[[say:hi]]", "max_tokens": 4}


def test_per_model_limits_of_key_and_project_and_the_tighter_headers(live_gateway, make_key):
    project = Project.objects.create(name=f"models {uuid.uuid4().hex[:6]}", rpm_limit=50)
    ProjectModelLimit.objects.create(project=project, model=CHAT_MODEL, rpm_limit=3)
    _, secret = make_key(project=project, rpm_limit=20, model_limits={CHAT_MODEL: (None, 10_000)})
    with httpx.Client(base_url=live_gateway.url, headers=bearer(secret), timeout=60) as client:
        answers = [client.post("/v1/completions", json=BODY) for _ in range(4)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    # The project's 3 a minute for this model is the tightest of 20 (key), 50 (project), 3.
    assert [a.headers["x-ratelimit-limit-requests"] for a in answers[:3]] == ["3"] * 3
    assert [a.headers["x-ratelimit-remaining-requests"] for a in answers[:3]] == ["2", "1", "0"]
    # The key's own tokens-per-minute for the model is the only token limit.
    assert answers[0].headers["x-ratelimit-limit-tokens"] == "10000"
    error = answers[3].json()["error"]
    assert error["code"] == "rate_limit_exceeded"
    assert f"project for model '{CHAT_MODEL}'" in error["message"]


def test_the_ip_allow_list_refuses_other_addresses_with_one_log_row(live_gateway, make_key):
    key, secret = make_key(allowed_networks="10.0.0.0/8, 192.168.1.7")
    prefix = f"ip-{uuid.uuid4().hex[:6]}"
    with httpx.Client(base_url=live_gateway.url, headers=bearer(secret), timeout=60) as client:
        refused = client.post("/v1/completions", json=BODY, headers={"x-request-id": prefix})
    assert refused.status_code == 403
    assert refused.json()["error"] == {
        "message": "Your IP address (127.0.0.1) is not allowed to use this API key.",
        "type": "invalid_request_error",
        "param": None,
        "code": "ip_not_allowed",
    }
    rows = RequestLog.objects.filter(request_id=prefix)
    assert wait_for_logs(rows.count, 1) == 1
    time.sleep(0.5)
    assert rows.count() == 1
    row = rows.get()
    assert (row.status, row.api_key_id, row.error_type) == (403, key.pk, "ip_not_allowed")
    # Allowing the loopback network lets it in (within API_KEY_CACHE_SECONDS).
    ApiKey.objects.filter(pk=key.pk).update(allowed_networks="127.0.0.0/8\n::1")
    time.sleep(1.2)
    with httpx.Client(base_url=live_gateway.url, headers=bearer(secret), timeout=60) as client:
        assert client.post("/v1/completions", json=BODY).status_code == 200


def test_rotation_keeps_the_old_secret_for_the_grace_period_only(live_gateway, make_key):
    from accounts.services import key_rotate

    key, old = make_key()
    new = key_rotate(key=key, grace=timedelta(seconds=3))
    assert new != old
    time.sleep(1.2)  # the lookup cache (API_KEY_CACHE_SECONDS) has the rotation now
    with httpx.Client(base_url=live_gateway.url, timeout=60) as client:
        for secret in (old, new):
            assert client.get("/v1/models", headers=bearer(secret)).status_code == 200
        time.sleep(3.5)  # grace over, and the cached lookup reloaded
        assert client.get("/v1/models", headers=bearer(old)).status_code == 401
        assert client.get("/v1/models", headers=bearer(new)).status_code == 200
    # Without a grace period the old secret stops at once (within the cache's second).
    newer = key_rotate(key=key, grace=timedelta(0))
    time.sleep(1.2)
    with httpx.Client(base_url=live_gateway.url, timeout=60) as client:
        assert client.get("/v1/models", headers=bearer(new)).status_code == 401
        assert client.get("/v1/models", headers=bearer(newer)).status_code == 200
