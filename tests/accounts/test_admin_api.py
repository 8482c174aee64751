"""The Admin API against a live gateway: plain HTTP against OpenAI's documented shapes,
then the official openai SDK's admin namespace, unchanged."""

from __future__ import annotations

import time
import uuid

import httpx
import openai
import pytest

from tests.accounts.conftest import bearer, wait_for_logs
from tests.conftest import CHAT_MODEL

pytestmark = pytest.mark.committed_db

PROJECT_KEYS = {"id", "object", "name", "created_at", "archived_at", "status"}
KEY_KEYS = {"object", "id", "name", "redacted_value", "created_at", "last_used_at", "owner"}
USAGE_KEYS = {
    "object", "input_tokens", "output_tokens", "input_cached_tokens", "input_audio_tokens",
    "output_audio_tokens", "num_model_requests", "project_id", "user_id", "api_key_id",
    "model", "batch",
}  # fmt: skip


@pytest.fixture
def admin_secret(committed) -> str:
    from accounts.projects import admin_key_create

    return admin_key_create(name=f"tests {uuid.uuid4().hex[:6]}")[1]


@pytest.fixture
def admin(live_gateway, admin_secret):
    with httpx.Client(base_url=live_gateway.url, headers=bearer(admin_secret), timeout=30) as c:
        yield c


def assert_error(response: httpx.Response, status: int, param: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    if param is not None:
        assert error["param"] == param
    return error


def test_the_documented_sequence_over_plain_http(admin, live_gateway):
    name = f"conformance-{uuid.uuid4().hex[:6]}"
    created = admin.post("/v1/organization/projects", json={"name": name})
    assert created.status_code == 200, created.text
    project = created.json()
    assert set(project) >= PROJECT_KEYS and project["object"] == "organization.project"
    assert project["status"] == "active" and project["archived_at"] is None
    pid = project["id"]
    assert pid.startswith("proj_")

    listed = admin.get("/v1/organization/projects", params={"limit": 100}).json()
    assert listed["object"] == "list" and pid in [p["id"] for p in listed["data"]]
    assert listed["first_id"] == listed["data"][0]["id"]
    assert listed["last_id"] == listed["data"][-1]["id"]
    assert admin.get(f"/v1/organization/projects/{pid}").json()["name"] == name
    renamed = admin.post(f"/v1/organization/projects/{pid}", json={"name": name + "-renamed"})
    assert renamed.json()["name"] == name + "-renamed"

    made = admin.post(f"/v1/organization/projects/{pid}/api_keys", json={"name": "ci"}).json()
    assert set(made) >= KEY_KEYS | {"value"}
    assert made["object"] == "organization.project.api_key" and made["id"].startswith("key_")
    assert made["owner"]["type"] == "service_account"
    secret = made["value"]
    keys = admin.get(f"/v1/organization/projects/{pid}/api_keys").json()
    assert [k["id"] for k in keys["data"]] == [made["id"]]
    assert "value" not in keys["data"][0] and set(keys["data"][0]) >= KEY_KEYS
    assert "value" not in admin.get(f"/v1/organization/projects/{pid}/api_keys/{made['id']}").json()

    # The new key works at once and its usage is counted under this project and key.
    user = httpx.Client(base_url=live_gateway.url, headers=bearer(secret), timeout=60)
    assert CHAT_MODEL in [m["id"] for m in user.get("/v1/models").json()["data"]]
    chat = user.post(
        "/v1/chat/completions",
        json={
            "model": CHAT_MODEL,
            "messages": [{"role": "user", "content": "[[say:hi there]]"}],
            "max_tokens": 8,
        },
    )
    assert chat.status_code == 200, chat.text
    usage = chat.json()["usage"]
    from accounts.models import RequestLog

    rows = RequestLog.objects.filter(
        key_public_id=made["id"].removeprefix("key_"), endpoint="/v1/chat/completions"
    )
    assert wait_for_logs(rows.count, 1) == 1

    page = admin.get(
        "/v1/organization/usage/completions",
        params=[
            ("start_time", int(time.time()) - 3600), ("bucket_width", "1m"),
            ("group_by", "model"), ("group_by", "project_id"), ("limit", 120),
            ("project_ids[]", pid),
        ],
    ).json()  # fmt: skip
    assert page["object"] == "page" and page["has_more"] is False and page["next_page"] is None
    buckets = page["data"]
    assert all(b["object"] == "bucket" for b in buckets)
    assert all(a["end_time"] == b["start_time"] for a, b in zip(buckets, buckets[1:], strict=False))
    results = [r for b in buckets for r in b["results"]]
    assert len(results) == 1
    result = results[0]
    assert set(result) >= USAGE_KEYS
    assert result["object"] == "organization.usage.completions.result"
    assert (result["model"], result["project_id"], result["api_key_id"]) == (CHAT_MODEL, pid, None)
    assert result["input_tokens"] == usage["prompt_tokens"]
    assert result["output_tokens"] == usage["completion_tokens"]
    assert result["num_model_requests"] == 1

    by_key = admin.get(
        "/v1/organization/usage/completions",
        params={"start_time": int(time.time()) - 86400, "group_by": "api_key_id",
                "api_key_ids": made["id"]},
    ).json()  # fmt: skip
    assert [r["api_key_id"] for b in by_key["data"] for r in b["results"]] == [made["id"]]

    costs = admin.get(
        "/v1/organization/costs",
        params=[("start_time", int(time.time()) - 86400), ("group_by", "project_id"),
                ("group_by", "line_item"), ("project_ids", pid)],
    ).json()  # fmt: skip
    lines = [r for b in costs["data"] for r in b["results"]]
    assert {r["line_item"] for r in lines} == {f"{CHAT_MODEL}, input", f"{CHAT_MODEL}, output"}
    for line in lines:
        assert line["object"] == "organization.costs.result" and line["project_id"] == pid
        assert isinstance(line["amount"]["value"], float)
        assert line["amount"]["currency"] == "usd"

    only_output = admin.get(
        "/v1/organization/costs",
        params=[("start_time", int(time.time()) - 86400), ("group_by", "line_item"),
                ("project_ids", pid), ("line_items[]", f"{CHAT_MODEL}, output")],
    ).json()  # fmt: skip
    lines = [r for b in only_output["data"] for r in b["results"]]
    assert [(r["line_item"], r["quantity"]) for r in lines] == [
        (f"{CHAT_MODEL}, output", usage["completion_tokens"])
    ]

    limits = admin.get(f"/v1/organization/projects/{pid}/rate_limits").json()
    ids = [r["id"] for r in limits["data"]]
    assert f"rl-{CHAT_MODEL}" in ids
    one = next(r for r in limits["data"] if r["id"] == f"rl-{CHAT_MODEL}")
    assert one["object"] == "project.rate_limit" and one["model"] == CHAT_MODEL
    updated = admin.post(
        f"/v1/organization/projects/{pid}/rate_limits/rl-{CHAT_MODEL}",
        json={"max_requests_per_1_minute": 1},
    )
    assert updated.status_code == 200, updated.text
    assert updated.json()["max_requests_per_1_minute"] == 1
    # It applies to the project's keys at once (in the process that took the change;
    # within API_KEY_CACHE_SECONDS in others).
    body = {"model": CHAT_MODEL, "prompt": "[[say:x]]", "max_tokens": 2}
    statuses = [user.post("/v1/completions", json=body).status_code for _ in range(2)]
    assert statuses == [200, 429]
    assert_error(
        admin.post(
            f"/v1/organization/projects/{pid}/rate_limits/rl-{CHAT_MODEL}",
            json={"max_requests_per_1_minute": 0},
        ),
        400,
        "max_requests_per_1_minute",
    )

    # An API key on the admin routes: 403 naming the scope; an admin key on inference: 401.
    refused = assert_error(user.get("/v1/organization/projects"), 403)
    assert "api.management.read" in refused["message"]
    assert (
        "api.usage.read"
        in assert_error(user.get("/v1/organization/costs", params={"start_time": 1}), 403)[
            "message"
        ]
    )
    assert_error(
        admin.post("/v1/chat/completions", json={"model": CHAT_MODEL, "messages": []}), 401
    )
    assert_error(httpx.get(live_gateway.url + "/v1/organization/projects"), 401)

    # Errors in OpenAI's envelope.
    assert_error(admin.get("/v1/organization/usage/completions"), 400, "start_time")
    bad_width = assert_error(
        admin.get(
            "/v1/organization/usage/completions", params={"start_time": 1, "bucket_width": "2h"}
        ),
        400,
        "bucket_width",
    )
    assert bad_width["code"] == "invalid_value"
    assert_error(admin.get("/v1/organization/projects/proj_nope"), 404)
    assert_error(admin.get("/v1/organization/projects", params={"limit": 0}), 400, "limit")
    assert_error(admin.post("/v1/organization/projects", json={}), 400, "name")

    deleted = admin.delete(f"/v1/organization/projects/{pid}/api_keys/{made['id']}").json()
    assert deleted == {
        "object": "organization.project.api_key.deleted", "id": made["id"], "deleted": True,
    }  # fmt: skip
    assert user.get("/v1/models").status_code == 401
    second = admin.post(f"/v1/organization/projects/{pid}/api_keys", json={"name": "k2"}).json()
    assert user.get("/v1/models", headers=bearer(second["value"])).status_code == 200

    archived = admin.post(f"/v1/organization/projects/{pid}/archive").json()
    assert archived["status"] == "archived" and archived["archived_at"] is not None
    assert user.get("/v1/models", headers=bearer(second["value"])).status_code == 401
    active = [p["id"] for p in admin.get("/v1/organization/projects").json()["data"]]
    assert pid not in active
    everything = admin.get("/v1/organization/projects", params={"include_archived": "true"})
    assert pid in [p["id"] for p in everything.json()["data"]]
    assert_error(admin.post(f"/v1/organization/projects/{pid}", json={"name": "x"}), 400)
    user.close()


def test_usage_pages_follow_the_cursor(admin):
    start = int(time.time()) // 3600 * 3600 - 5 * 3600
    first = admin.get(
        "/v1/organization/usage/completions",
        params={"start_time": start, "bucket_width": "1h", "limit": 2},
    ).json()
    assert len(first["data"]) == 2 and first["has_more"] and first["next_page"]
    seen = list(first["data"])
    page = first
    while page["next_page"]:
        page = admin.get(
            "/v1/organization/usage/completions",
            params={"start_time": start, "bucket_width": "1h", "limit": 2,
                    "page": page["next_page"]},
        ).json()  # fmt: skip
        seen += page["data"]
    assert seen[0]["start_time"] == start and len(seen) == 6
    assert all(a["end_time"] == b["start_time"] for a, b in zip(seen, seen[1:], strict=False))
    # A cursor from another query is refused.
    assert_error(
        admin.get(
            "/v1/organization/usage/completions",
            params={"start_time": start, "bucket_width": "1h", "limit": 3,
                    "page": first["next_page"]},
        ),
        400,
        "page",
    )  # fmt: skip


def test_a_cursor_outlives_the_second_it_was_made_in(admin):
    """Without end_time the range ends now; the cursor must still fit the next page,
    asked for in a later second (its checksum once held the defaulted end)."""
    start = int(time.time()) // 3600 * 3600 - 5 * 3600
    params = {"start_time": start, "bucket_width": "1h", "limit": 2}
    first = admin.get("/v1/organization/usage/completions", params=params).json()
    time.sleep(1.05)
    second = admin.get(
        "/v1/organization/usage/completions", params={**params, "page": first["next_page"]}
    )
    assert second.status_code == 200, second.text
    assert second.json()["data"][0]["start_time"] == first["data"][-1]["end_time"]
    moved = admin.get(
        "/v1/organization/usage/completions",
        params={**params, "end_time": start + 4 * 3600, "page": first["next_page"]},
    )
    assert_error(moved, 400, "page")


def test_the_openai_sdk_admin_namespace_drives_the_gateway(live_gateway, admin_secret):
    client = openai.OpenAI(
        admin_api_key=admin_secret, api_key="unused", base_url=live_gateway.url + "/v1"
    )
    org = client.admin.organization
    project = org.projects.create(name=f"sdk-{uuid.uuid4().hex[:6]}")
    assert project.id.startswith("proj_") and project.status == "active"
    assert project.id in [p.id for p in org.projects.list(limit=2)]  # auto-paginates
    assert org.projects.retrieve(project.id).name == project.name
    assert org.projects.update(project.id, name="sdk-renamed").name == "sdk-renamed"

    account = org.projects.service_accounts.create(project.id, name="bot")
    assert account.api_key is not None and account.api_key.value.startswith("sk-gw-")
    assert [a.id for a in org.projects.service_accounts.list(project.id)] == [account.id]
    assert org.projects.service_accounts.retrieve(account.id, project_id=project.id).name == "bot"

    keys = list(org.projects.api_keys.list(project.id))
    assert [k.id for k in keys] == [account.api_key.id]
    assert org.projects.api_keys.retrieve(keys[0].id, project_id=project.id).name == "bot"

    inference = openai.OpenAI(api_key=account.api_key.value, base_url=live_gateway.url + "/v1")
    answer = inference.chat.completions.create(
        model=CHAT_MODEL, messages=[{"role": "user", "content": "[[say:sdk]]"}], max_tokens=4
    )
    assert answer.usage.total_tokens > 0
    from accounts.models import RequestLog

    rows = RequestLog.objects.filter(key_public_id=account.api_key.id.removeprefix("key_"))
    assert wait_for_logs(rows.filter(endpoint="/v1/chat/completions").count, 1) == 1
    with pytest.raises(openai.PermissionDeniedError):
        openai.OpenAI(
            admin_api_key=account.api_key.value, api_key="x", base_url=live_gateway.url + "/v1"
        ).admin.organization.projects.list()

    limits = list(org.projects.rate_limits.list_rate_limits(project.id))
    assert f"rl-{CHAT_MODEL}" in [r.id for r in limits]
    updated = org.projects.rate_limits.update_rate_limit(
        f"rl-{CHAT_MODEL}", project_id=project.id, max_tokens_per_1_minute=5000
    )
    assert updated.max_tokens_per_1_minute == 5000

    usage = org.usage.completions(
        start_time=int(time.time()) - 3600, bucket_width="1h", group_by=["project_id", "model"],
        project_ids=[project.id],
    )  # fmt: skip
    results = [r for b in usage.data for r in b.results]
    assert [(r.project_id, r.model) for r in results] == [(project.id, CHAT_MODEL)]
    costs = org.usage.costs(start_time=int(time.time()) - 86400, group_by=["line_item"])
    assert costs.object == "page"

    deleted = org.projects.service_accounts.delete(account.id, project_id=project.id)
    assert deleted.deleted
    assert org.projects.archive(project.id).status == "archived"
