"""The admin console, in process with Django's test client (a superuser session)."""

from __future__ import annotations

from django.utils import timezone

from accounts.models import ApiKey, RequestLog
from accounts.services import key_create
from tests.conftest import CHAT_MODEL


def test_creating_a_key_shows_the_secret_once(admin_client, admin_user):
    response = admin_client.post(
        "/admin/accounts/apikey/add/",
        {
            "name": "from the admin",
            "owner": admin_user.pk,
            "all_models": "on",
            "rpm_limit": "60",
            "budget_period": "month",
        },
    )
    assert response.status_code == 200, response.content[:2000]
    key = ApiKey.objects.get(name="from the admin")
    page = response.content.decode()
    secret = page.split('id="api-key-secret" type="text" readonly size="80" value="')[1].split('"')[
        0
    ]
    assert secret.startswith(f"sk-gw-{key.public_id}-") and key.matches(secret)
    assert "no-store" in response["cache-control"]
    assert key.rpm_limit == 60
    for url in ("/admin/accounts/apikey/", f"/admin/accounts/apikey/{key.pk}/change/"):
        assert secret not in admin_client.get(url).content.decode()


def test_revoke_action_and_quota_editing(admin_client, admin_user):
    key, _ = key_create(owner=admin_user, name="to revoke")
    response = admin_client.post(
        "/admin/accounts/apikey/",
        {"action": "revoke", "_selected_action": [key.pk]},
        follow=True,
    )
    assert "Revoked 1 key(s)." in response.content.decode()
    key.refresh_from_db()
    assert key.revoked_at is not None
    form = {
        "name": key.name,
        "owner": admin_user.pk,
        "all_models": "on",
        "tpm_limit": "5000",
        "max_concurrency": "4",
        "budget_tokens": "100000",
        "budget_period": "day",
    }
    response = admin_client.post(f"/admin/accounts/apikey/{key.pk}/change/", form)
    assert response.status_code == 302, response.content[:3000]
    key.refresh_from_db()
    assert (key.tpm_limit, key.max_concurrency, key.budget_tokens, key.budget_period) == (
        5000,
        4,
        100000,
        "day",
    )


def _log(request_id: str, status: int, model: str = CHAT_MODEL, **fields) -> RequestLog:
    return RequestLog.objects.create(
        created_at=timezone.now(),
        request_id=request_id,
        model=model,
        endpoint="/v1/chat/completions",
        status=status,
        latency_ms=fields.pop("latency_ms", 12.5),
        prompt_tokens=10,
        completion_tokens=5,
        **fields,
    )


def test_request_logs_are_read_only_with_filters_and_search(admin_client):
    _log("req-admin-a", 200)
    _log("req-admin-b", 429, error_type="rate_limit_exceeded")
    listing = admin_client.get("/admin/accounts/requestlog/?q=req-admin-b").content.decode()
    assert "req-admin-b" in listing and "req-admin-a" not in listing
    errors = admin_client.get("/admin/accounts/requestlog/?status_class=4xx").content.decode()
    assert "req-admin-b" in errors and "req-admin-a" not in errors
    by_model = admin_client.get(f"/admin/accounts/requestlog/?model={CHAT_MODEL}")
    assert by_model.status_code == 200
    assert admin_client.get("/admin/accounts/requestlog/add/").status_code == 403
    row = RequestLog.objects.get(request_id="req-admin-a")
    change = admin_client.post(f"/admin/accounts/requestlog/{row.pk}/change/", {"status": 500})
    assert change.status_code in (403, 200)
    row.refresh_from_db()
    assert row.status == 200


def test_usage_page_draws_charts_offline(admin_client):
    for i in range(20):
        _log(f"usage-{i}", 200 if i % 5 else 500, latency_ms=float(i))
    page = admin_client.get("/admin/accounts/requestlog/usage/?days=7").content.decode()
    assert page.count('class="usage-chart"') == 9  # three charts per day, key and model
    assert "Latency per day" in page and "p95" in page
    assert "cdn" not in page.lower()
    assert CHAT_MODEL in page


def test_check_triton_action_reports_readiness_and_inputs(admin_client, model_configs):
    rows = [model_configs[CHAT_MODEL], model_configs["dev-down"]]
    response = admin_client.post(
        "/admin/llmgateway/modelconfig/",
        {"action": "check_triton", "_selected_action": [r.pk for r in rows]},
        follow=True,
    )
    page = response.content.decode().lower()  # the admin capitalises messages
    assert f"{CHAT_MODEL}: ready, decoupled" in page and "input_ids, input_lengths" in page
    assert "dev-down: not ready" in page
