"""The admin console, in process with Django's test client (a superuser session)."""

from __future__ import annotations

import re
from datetime import timedelta

from django.contrib.sessions.models import Session
from django.db import connection
from django.utils import timezone

from accounts.models import ApiKey, Project, RequestLog
from accounts.services import key_create
from tests.conftest import CHAT_MODEL, V08_MODEL

ADD_URL = "/admin/accounts/apikey/add/"
# The per-model limits inline's management form, with no rows.
NO_INLINES = {
    "model_limits-TOTAL_FORMS": "0",
    "model_limits-INITIAL_FORMS": "0",
    "model_limits-MIN_NUM_FORMS": "0",
    "model_limits-MAX_NUM_FORMS": "1000",
}
SECRET_INPUT = 'id="api-key-secret" type="text" readonly size="80" value="'


def add_form(client, admin_user, name: str) -> dict:
    """The add form's fields as a browser would submit them, with the form's own token."""
    page = client.get(ADD_URL).content.decode()
    token = re.search(r'name="creation_token" value="([^"]+)"', page)
    assert token, page[:3000]
    return {
        "name": name,
        "owner": admin_user.pk,
        "project": Project.default().pk,
        "all_models": "on",
        "rpm_limit": "60",
        "budget_period": "month",
        "creation_token": token[1],
        **NO_INLINES,
    }


def shown_secret(response) -> str | None:
    page = response.content.decode()
    return page.split(SECRET_INPUT)[1].split('"')[0] if SECRET_INPUT in page else None


def everything_stored(client) -> str:
    """Every row of every table, the decoded sessions and the client's cookies, as text."""
    rows = []
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names():
            cursor.execute(f'SELECT * FROM "{table}"')
            rows += [" ".join(str(value) for value in row) for row in cursor.fetchall()]
    sessions = [str(s.get_decoded()) for s in Session.objects.all()]
    return "\n".join([*rows, *sessions, str(client.cookies)])


def test_adding_a_key_redirects_and_shows_the_secret_once(admin_client, admin_user):
    posted = admin_client.post(ADD_URL, add_form(admin_client, admin_user, "from the admin"))
    assert posted.status_code == 302, posted.content[:2000]
    created_url = posted["location"]
    assert created_url.startswith("/admin/accounts/apikey/created/")
    key = ApiKey.objects.get(name="from the admin")
    assert not key.has_secret and key.rpm_limit == 60  # the secret is made by the GET

    response = admin_client.get(created_url)
    secret = shown_secret(response)
    key.refresh_from_db()
    assert secret and secret.startswith(f"sk-gw-{key.public_id}-") and key.matches(secret)
    assert secret not in created_url
    assert "no-store" in response["cache-control"]
    assert "never be shown again" in response.content.decode()

    # Refresh, Back/Forward, a second tab: the same GET again.
    for _ in range(2):
        again = admin_client.get(created_url)
        assert again.status_code == 200 and "no-store" in again["cache-control"]
        assert shown_secret(again) is None and secret not in again.content.decode()
        assert "already shown" in again.content.decode()
    assert ApiKey.objects.filter(name="from the admin").count() == 1
    key.refresh_from_db()
    assert key.matches(secret)  # re-loading the page did not replace the secret

    for url in ("/admin/accounts/apikey/", f"/admin/accounts/apikey/{key.pk}/change/"):
        assert secret not in admin_client.get(url).content.decode()
    stored = everything_stored(admin_client)
    assert secret not in stored and secret.split("-", 3)[3] not in stored
    assert key.secret_hash in stored  # the scan did reach the key's row


def test_resubmitting_the_same_add_form_creates_no_second_key(admin_client, admin_user):
    form = add_form(admin_client, admin_user, "submitted twice")
    first = admin_client.post(ADD_URL, form)
    secret = shown_secret(admin_client.get(first["location"]))
    assert secret
    second = admin_client.post(ADD_URL, form)
    assert second.status_code == 302
    assert second["location"].startswith("/admin/accounts/apikey/created/")
    page = admin_client.get(second["location"])
    assert shown_secret(page) is None and "already shown" in page.content.decode()
    assert ApiKey.objects.filter(name="submitted twice").count() == 1
    assert ApiKey.objects.get(name="submitted twice").matches(secret)
    # A fresh form is a new key.
    admin_client.post(ADD_URL, add_form(admin_client, admin_user, "submitted twice"))
    assert ApiKey.objects.filter(name="submitted twice").count() == 2


def test_re_submitted_before_the_first_load_shows_the_secret_once(admin_client, admin_user):
    form = add_form(admin_client, admin_user, "redirect lost")
    admin_client.post(ADD_URL, form)  # its redirect never followed
    again = admin_client.post(ADD_URL, form)
    secret = shown_secret(admin_client.get(again["location"]))
    assert secret and ApiKey.objects.get(name="redirect lost").matches(secret)
    assert ApiKey.objects.filter(name="redirect lost").count() == 1


def test_an_add_form_without_its_signed_token_creates_nothing(admin_client, admin_user):
    form = add_form(admin_client, admin_user, "tampered")
    for token in ("", "0123456789ab", form["creation_token"] + "x"):
        response = admin_client.post(ADD_URL, {**form, "creation_token": token})
        assert response.status_code == 200
        assert "This form is incomplete" in response.content.decode()
    assert not ApiKey.objects.filter(name="tampered").exists()


def test_the_created_page_shows_the_secret_only_to_its_admin_in_time(
    admin_client, admin_user, client, django_user_model, monkeypatch
):
    posted = admin_client.post(ADD_URL, add_form(admin_client, admin_user, "someone else's"))
    other = django_user_model.objects.create_superuser("other-admin", "o@example.com", "x")
    client.force_login(other)
    page = client.get(posted["location"])
    assert shown_secret(page) is None and "Only the admin who added" in page.content.decode()
    key = ApiKey.objects.get(name="someone else's")
    assert not key.has_secret
    # Too late: the key keeps no secret, for good.
    monkeypatch.setattr("accounts.admin.CREATED_LINK_SECONDS", -1)
    page = admin_client.get(posted["location"])
    assert shown_secret(page) is None and "expired" in page.content.decode()
    key.refresh_from_db()
    assert not key.has_secret and not key.matches(f"sk-gw-{key.public_id}-")
    assert (
        "cannot authenticate"
        in admin_client.get(f"/admin/accounts/apikey/{key.pk}/change/").content.decode()
    )
    monkeypatch.setattr("accounts.admin.CREATED_LINK_SECONDS", 600)
    assert admin_client.get(posted["location"][:-3] + "xx/").status_code == 404
    assert admin_client.head(posted["location"]).status_code == 405
    assert shown_secret(admin_client.get(posted["location"]))  # still its one showing


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
        "project": key.project_id,
        **NO_INLINES,
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
    a = _log("req-admin-a", 200)
    b = _log("req-admin-b", 429, error_type="rate_limit_exceeded")
    links = {row: f'href="/admin/accounts/requestlog/{row.pk}/change/' for row in (a, b)}
    listing = admin_client.get("/admin/accounts/requestlog/?q=req-admin-b").content.decode()
    assert links[b] in listing and links[a] not in listing
    errors = admin_client.get("/admin/accounts/requestlog/?status_class=4xx").content.decode()
    assert links[b] in errors and links[a] not in errors
    by_code = admin_client.get("/admin/accounts/requestlog/?status=429").content.decode()
    assert links[b] in by_code and links[a] not in by_code
    # Each filter has a title of its own (two were both "By status").
    titles = re.findall(r"<summary>\s*By (.+?)\s*</summary>", errors)
    assert len(titles) == len(set(titles)) and {"status class", "status code"} <= set(titles)
    by_model = admin_client.get(f"/admin/accounts/requestlog/?model={CHAT_MODEL}")
    assert by_model.status_code == 200
    # What the list leaves out is on the row's own page.
    detail = admin_client.get(f"/admin/accounts/requestlog/{b.pk}/change/").content.decode()
    assert "req-admin-b" in detail and "rate_limit_exceeded" in detail
    assert admin_client.get("/admin/accounts/requestlog/add/").status_code == 403
    change = admin_client.post(f"/admin/accounts/requestlog/{a.pk}/change/", {"status": 500})
    assert change.status_code in (403, 200)
    a.refresh_from_db()
    assert a.status == 200


def test_usage_page_draws_charts_offline(admin_client):
    for i in range(20):
        _log(f"usage-{i}", 200 if i % 5 else 500, latency_ms=float(i))
    page = admin_client.get("/admin/accounts/requestlog/usage/?days=7").content.decode()
    # Four charts (requests, tokens, spend, latency) per day, key, project and model.
    assert page.count('class="usage-chart"') == 16
    assert "Spend per project (USD)" in page
    assert "Latency per day" in page and "p95" in page
    assert "cdn" not in page.lower()
    assert CHAT_MODEL in page


def test_check_triton_action_reports_readiness_and_inputs(admin_client, model_configs):
    rows = [model_configs[CHAT_MODEL], model_configs[V08_MODEL], model_configs["dev-down"]]
    response = admin_client.post(
        "/admin/llmgateway/modelconfig/",
        {"action": "check_triton", "_selected_action": [r.pk for r in rows]},
        follow=True,
    )
    page = response.content.decode().lower()  # the admin capitalises messages
    assert f"{CHAT_MODEL}: ready, decoupled" in page and "input_ids, input_lengths" in page
    # What the gateway makes of each interface: recent TensorRT-LLM with xgrammar, and 0.8.
    assert "n&gt;1: one request (num_return_sequences); guided decoding: yes (xgrammar)" in page
    assert "n&gt;1: one request per choice; guided decoding: no (response_format json" in page
    assert "dev-down: not ready" in page


def test_projects_admin_keys_and_rotation_in_the_console(admin_client, admin_user):
    """A project with limits and per-model limits; an admin key whose secret is shown
    once, on the add's response; a key rotated with a grace period."""
    from accounts.models import AdminKey
    from accounts.projects import admin_key_lookup

    response = admin_client.post(
        "/admin/accounts/project/add/",
        {
            "name": "console team", "rpm_limit": "100", "budget_amount": "12.5",
            "budget_period": "month", "alert_webhook_url": "",
            "model_limits-TOTAL_FORMS": "1", "model_limits-INITIAL_FORMS": "0",
            "model_limits-MIN_NUM_FORMS": "0", "model_limits-MAX_NUM_FORMS": "1000",
            "model_limits-0-model": CHAT_MODEL, "model_limits-0-rpm_limit": "7",
        },
    )  # fmt: skip
    assert response.status_code == 302, response.content[:3000]
    project = Project.objects.get(name="console team")
    assert str(project.budget_amount) == "12.5000"
    assert project.model_limits.get().rpm_limit == 7

    added = admin_client.post("/admin/accounts/adminkey/add/", {"name": "automation"})
    secret = shown_secret(added)
    assert secret and secret.startswith("sk-admin-")
    assert "no-store" in added["cache-control"]
    assert admin_key_lookup(secret) == AdminKey.objects.get(name="automation")
    listing = admin_client.get("/admin/accounts/adminkey/").content.decode()
    assert secret not in listing

    key, old = key_create(owner=admin_user, name="to rotate", project=project)
    rotated = admin_client.post(
        "/admin/accounts/apikey/", {"action": "rotate_hour", "_selected_action": [key.pk]}
    )
    new = shown_secret(rotated)
    key.refresh_from_db()
    assert new and new != old and key.matches(new)
    assert key.matches_previous(old, timezone.now())
    assert not key.matches_previous(old, timezone.now() + timedelta(hours=1, seconds=1))


def test_createadminkey_prints_the_secret_last(db):
    from io import StringIO

    from django.core.management import call_command

    from accounts.projects import admin_key_lookup

    out = StringIO()
    call_command("createadminkey", "--name", "cli", stdout=out)
    secret = out.getvalue().strip().splitlines()[-1]
    assert secret.startswith("sk-admin-") and admin_key_lookup(secret).name == "cli"


def test_createapikey_puts_the_key_in_the_named_project(db):
    from io import StringIO

    import pytest
    from django.core.management import CommandError, call_command

    project = Project.objects.create(name="cli team")
    out = StringIO()
    call_command("createapikey", "--name", "cli", "--project", project.public_id, stdout=out)
    public_id = out.getvalue().strip().splitlines()[-1].split("-")[2]
    assert ApiKey.objects.get(public_id=public_id).project == project
    with pytest.raises(CommandError, match="no active project"):
        call_command("createapikey", "--name", "x", "--project", "proj_nope")
