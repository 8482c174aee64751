"""The admin console in a real headless Chromium (Debian's), driven by Playwright,
at 1366×768 (a common laptop screen, the size the console must fit).

Against the `live_gateway` subprocess (uvicorn, static files by WhiteNoise), as a
superuser who logs in through the login form: create a key and see its secret
once, revoke it and see it rejected, edit a model config, open the usage page and
read its charts' labels, read the request-log list. Every step leaves a screenshot
in test-artifacts/admin/. tests/browser.py says how the browser is driven.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta

import httpx
import pytest

from tests.accounts.conftest import wait_for_logs
from tests.browser import LAPTOP, Browser, skip_without_browser
from tests.browser import shot as browser_shot
from tests.conftest import (
    ARTIFACTS,
    CHAT_MODEL,
    DEV_LIMITS,
    dev_model_upsert,
    start_gateway,
    stop_gateway,
)

skip_without_browser()
pytestmark = pytest.mark.committed_db

SHOTS = ARTIFACTS / "admin"
PASSWORD = "browser-tests-" + uuid.uuid4().hex
SECRET_RE = re.compile(r"sk-gw-[0-9a-f]+-[A-Za-z0-9_-]{20,}")
EDITED_MODEL = "admin-browser-chat"  # a model config of this module's own, edited in flow 3


def shot(page, name: str, *, full_page: bool = False) -> None:
    browser_shot(page, SHOTS, name, full_page=full_page)


@pytest.fixture(scope="module")
def superuser(django_db_setup, django_db_blocker) -> str:
    """A committed superuser (the gateway subprocess must see it); its username."""
    from django.contrib.auth import get_user_model

    username = f"admin-browser-{uuid.uuid4().hex[:6]}"
    with django_db_blocker.unblock():
        get_user_model().objects.create_superuser(username, f"{username}@example.com", PASSWORD)
    return username


@pytest.fixture(scope="module")
def edited_model(django_db_setup, django_db_blocker, devtriton) -> Iterator[str]:
    """A committed model config of this module's own, so editing it disturbs no other test."""
    from llmgateway.models import ModelConfig

    with django_db_blocker.unblock():
        dev_model_upsert(EDITED_MODEL, devtriton, **DEV_LIMITS)
    yield EDITED_MODEL
    with django_db_blocker.unblock():
        ModelConfig.objects.filter(name=EDITED_MODEL).delete()


@pytest.fixture(scope="module")
def browser(live_gateway, superuser) -> Iterator[Browser]:
    """A Chromium page at 1366×768, logged in to the admin through its login form."""
    started = time.monotonic()
    browser = Browser(live_gateway.url, SHOTS, LAPTOP)
    try:

        def log_in(page) -> None:
            page.goto("/admin/")
            assert "/admin/login/" in page.url
            page.fill("#id_username", superuser)
            page.fill("#id_password", PASSWORD)
            shot(page, "00-login-form")
            page.click("input[type=submit]")
            page.wait_for_url("**/admin/")
            assert page.locator("#user-tools").inner_text().upper().count(superuser.upper())
            assert page.locator("a[href='/admin/accounts/apikey/']").count()
            shot(page, "01-logged-in")

        browser.run(log_in)
        browser.clean()
        print(f"browser started and logged in in {time.monotonic() - started:.2f} s")
        yield browser
    finally:
        browser.close()


@pytest.fixture
def ui(browser) -> Iterator[Browser]:
    yield browser
    browser.clean()


@pytest.fixture(scope="module")
def created() -> dict:
    """The key flow 1 creates (pk, secret), which flow 2 revokes."""
    return {}


def test_1_create_key_shows_the_secret_exactly_once(
    ui, committed, live_gateway, superuser, created
):
    from accounts.models import ApiKey

    name = f"browser key {uuid.uuid4().hex[:6]}"

    def create(page) -> dict:
        page.goto("/admin/accounts/apikey/add/")
        page.fill("#id_name", name)
        # The owner is an autocomplete (select2) field: type, wait for the match, pick it.
        page.click(".field-owner .select2-selection")
        page.fill(".select2-search__field", superuser)
        page.click(f".select2-results__option:text-is('{superuser}')")
        assert page.is_checked("#id_all_models")
        page.fill("#id_rpm_limit", "600")
        page.fill("#id_budget_tokens", "1000000")
        page.select_option("#id_budget_period", "day")
        shot(page, "02-key-add-form", full_page=True)
        # What the browser is about to submit, to submit it again later.
        form = page.evaluate(
            "() => Object.fromEntries(new FormData(document.querySelector('#apikey_form')))"
        )
        with (
            page.expect_response(
                lambda r: r.url.endswith("/apikey/add/") and r.request.method == "POST"
            ) as posted,
            page.expect_response(lambda r: "/apikey/created/" in r.url) as shown,
        ):
            page.click("input[name=_save]")
        page.wait_for_selector("#api-key-secret")
        shot(page, "03-key-created-secret-shown")
        return {
            "form": form,
            "post_status": posted.value.status,
            "url": page.url,
            "secret": page.input_value("#api-key-secret"),
            "cache_control": shown.value.headers.get("cache-control", ""),
            "text": page.locator("#content-main").inner_text(),
        }

    result = ui.run(create)
    secret = result["secret"]
    assert result["post_status"] == 302  # POST, redirect, GET
    assert SECRET_RE.fullmatch(secret), secret
    assert secret not in result["url"]
    assert "no-store" in result["cache_control"]
    assert "never be shown again" in result["text"]
    key = ApiKey.objects.get(name=name)
    assert key.matches(secret) and key.owner.username == superuser
    assert (key.rpm_limit, key.budget_tokens, key.budget_period) == (600, 1_000_000, "day")
    created.update(pk=key.pk, secret=secret)

    # The secret works against the gateway, and only for this key's models (all of them).
    with httpx.Client(base_url=live_gateway.url, timeout=10) as client:
        response = client.get("/v1/models", headers={"authorization": f"Bearer {secret}"})
    assert response.status_code == 200, response.text
    assert CHAT_MODEL in {m["id"] for m in response.json()["data"]}

    def again(page) -> dict:
        seen = {}
        page.reload()  # refresh the created page
        seen["reloaded"] = page.content()
        shot(page, "03b-key-created-page-reloaded")
        page.go_back()  # the add form (GET): the POST left no history entry
        seen["back_url"] = page.url
        page.wait_for_load_state("networkidle")  # the widgets' icons load after "load"
        page.go_forward()
        seen["forward"] = page.content()
        # The same form submitted again (a copy of the browser's POST): no new key.
        resubmitted = page.request.post("/admin/accounts/apikey/add/", form=result["form"])
        seen["resubmitted_url"] = resubmitted.url
        seen["resubmitted"] = resubmitted.text()
        return seen

    seen = ui.run(again)
    assert seen["back_url"].endswith("/admin/accounts/apikey/add/")
    assert "/apikey/created/" in seen["resubmitted_url"]
    for html in (seen["reloaded"], seen["forward"], seen["resubmitted"]):
        assert "already shown" in html and secret not in html
        assert 'id="api-key-secret"' not in html
    assert ApiKey.objects.filter(name=name).count() == 1
    key.refresh_from_db()
    assert key.matches(secret)

    def never_again(page) -> list[str]:
        seen = []
        # Follow the page's own link to the key, reload it, the listing, the key again.
        page.click("text=Done: edit the key")
        page.wait_for_url(f"**/admin/accounts/apikey/{key.pk}/change/")
        shot(page, "04-key-change-page-no-secret", full_page=True)
        seen.append(page.content())
        page.reload()
        seen.append(page.content())
        page.goto("/admin/accounts/apikey/")
        shot(page, "05-key-list-no-secret")
        seen.append(page.content())
        page.goto(f"/admin/accounts/apikey/{key.pk}/change/")
        seen.append(page.content())
        return seen

    pages = ui.run(never_again)
    for html in pages:
        assert secret not in html
        assert secret.split("-", 3)[3] not in html  # the part after the public id
    assert key.display in pages[2]  # the listing shows the prefix and last four only


def test_2_revoke_action_rejects_the_key_within_a_second(
    ui, committed, live_gateway, superuser, created
):
    from django.contrib.auth import get_user_model

    from accounts.models import ApiKey
    from accounts.services import key_create

    if not created:  # run alone: a key of its own
        owner = get_user_model().objects.get(username=superuser)
        key, secret = key_create(owner=owner, name=f"browser key {uuid.uuid4().hex[:6]}")
        created.update(pk=key.pk, secret=secret)
    pk, secret = created["pk"], created["secret"]
    # Keep the key in the gateway's cache while the admin revokes it: the worst case.
    seen: list[tuple[float, int]] = []  # (monotonic time, status) of each poll
    stop = threading.Event()

    def poll() -> None:
        headers = {"authorization": f"Bearer {secret}"}
        with httpx.Client(base_url=live_gateway.url, timeout=10, headers=headers) as client:
            while not stop.is_set():
                seen.append((time.monotonic(), client.get("/v1/models").status_code))
                if seen[-1][1] != 200:
                    return
                time.sleep(0.02)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()

    def revoke(page) -> str:
        page.goto("/admin/accounts/apikey/")
        page.check(f"input[name=_selected_action][value='{pk}']")
        page.select_option("select[name=action]", "revoke")
        shot(page, "06-key-revoke-selected")
        with page.expect_navigation():
            page.click("button[name=index]")
        return page.locator("ul.messagelist").inner_text()

    try:
        message = ui.run(revoke)
        revoked_at = time.monotonic()  # the admin has answered: the revoke is committed
        poller.join(3)
    finally:
        stop.set()
        poller.join(10)
    assert "Revoked 1 key(s)." in message
    accepted = [t for t, status in seen if status == 200]
    assert accepted and accepted[-1] > revoked_at - 1.0, "the key was not in use at revoke"
    rejected_at, status = seen[-1]
    took = max(rejected_at - revoked_at, 0.0)
    print(f"revoked key rejected {took:.2f} s after the admin action ({len(seen)} polls)")
    assert status == 401
    assert took < 1.5  # API_KEY_CACHE_SECONDS (1 s) plus a request's time
    assert ApiKey.objects.get(pk=pk).revoked_at is not None
    ui.run(lambda page: shot(page, "07-key-revoked"))


def test_3_edit_model_config_persists_and_applies(ui, committed, live_gateway, edited_model):
    from llmgateway.models import ModelConfig

    config = ModelConfig.objects.get(name=edited_model)
    assert config.default_max_tokens == 256

    def edit(page) -> tuple[str, str]:
        page.goto("/admin/llmgateway/modelconfig/")
        page.click(f"#result_list a:text-is('{edited_model}')")
        page.wait_for_url(f"**/admin/llmgateway/modelconfig/{config.pk}/change/")
        page.fill("#id_default_max_tokens", "7")
        shot(page, "08-model-config-edit", full_page=True)
        with page.expect_navigation():
            page.click("input[name=_save]")
        message = page.locator("ul.messagelist").inner_text()
        shot(page, "09-model-config-saved")
        page.goto(f"/admin/llmgateway/modelconfig/{config.pk}/change/")
        return message, page.input_value("#id_default_max_tokens")

    message, shown = ui.run(edit)
    assert "was changed successfully" in message and shown == "7"
    config.refresh_from_db()
    assert config.default_max_tokens == 7
    # The gateway applies it: a request without max_tokens stops after 7 tokens.
    body = {"model": edited_model, "messages": [{"role": "user", "content": "[[long:50]]"}]}
    with live_gateway.client() as client:
        response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] == 7
    assert response.json()["choices"][0]["finish_reason"] == "length"

    def check_triton(page) -> str:
        page.goto("/admin/llmgateway/modelconfig/")
        page.check(f"input[name=_selected_action][value='{config.pk}']")
        page.select_option("select[name=action]", "check_triton")
        with page.expect_navigation():
            page.click("button[name=index]")
        shot(page, "10-model-config-check-triton")
        return page.locator("ul.messagelist").inner_text()

    report = ui.run(check_triton).lower()
    assert f"{edited_model}: ready, decoupled" in report and "input_ids" in report


def test_4_usage_page_draws_the_charts(ui, committed, live_gateway, superuser):
    from django.contrib.auth import get_user_model

    from accounts.models import RequestLog
    from accounts.services import key_create

    owner = get_user_model().objects.get(username=superuser)
    key, secret = key_create(owner=owner, name=f"browser usage {uuid.uuid4().hex[:6]}")
    prompts = ["[[say:one]]", "[[say:two]]", "[[long:5]]", "[[error:1]]"]
    with live_gateway.client(api_key=secret) as client:
        for prompt in prompts:
            body = {"model": CHAT_MODEL, "messages": [{"role": "user", "content": prompt}]}
            client.post("/v1/chat/completions", json=body)
    logs = RequestLog.objects.filter(api_key_id=key.pk)
    assert wait_for_logs(logs.count, len(prompts)) == len(prompts)
    errors = logs.filter(status__gte=400).count()
    assert errors == 1

    def usage(page) -> dict:
        page.goto("/admin/accounts/requestlog/")
        page.click("a[href$='/admin/accounts/requestlog/usage/']")
        page.wait_for_url("**/admin/accounts/requestlog/usage/")
        page.click("a[href='?days=1']")
        page.wait_for_url("**/usage/?days=1")
        page.wait_for_load_state("load")
        charts = page.locator("svg.usage-chart")
        boxes = [charts.nth(i).bounding_box() for i in range(charts.count())]
        key_chart = page.locator("#charts-key svg.usage-chart").first
        bars = key_chart.locator("rect[height]").evaluate_all(
            "rs => rs.map(r => r.getBBox().height)"
        )
        row = page.locator(f"table.usage tr:has(td:text-is('sk-gw-{key.public_id}'))")
        key_row = row.locator("td").all_inner_texts()
        stylesheets = page.evaluate("() => [...document.styleSheets].map(s => s.href)")
        shot(page, "11-usage-page", full_page=True)
        key_chart.screenshot(path=str(SHOTS / "12-usage-chart-per-key.png"))
        return {"boxes": boxes, "bars": bars, "row": key_row, "css": stylesheets}

    seen = ui.run(usage)
    assert len(seen["boxes"]) == 9  # requests, tokens, latency per day, key and model
    for box in seen["boxes"]:
        assert box and box["width"] >= 700 and box["height"] >= 200, box
    assert any(height > 0 for height in seen["bars"]), seen["bars"]
    assert seen["row"][:3] == [f"sk-gw-{key.public_id}", str(len(prompts)), str(errors)]
    assert any(href and "/static/admin/css/" in href for href in seen["css"])


def test_5_the_created_page_may_be_served_by_another_process(
    ui, committed, live_gateway, superuser, owner_key, tmp_path
):
    """Two gateway processes (two workers or replicas): POST to one, GET from the other."""
    from django.contrib.auth import get_user_model

    from accounts.models import ApiKey

    cookies = {c["name"]: c["value"] for c in ui.run(lambda p: p.context.cookies())}
    other = start_gateway(tmp_path, api_key=owner_key)
    name = f"browser two processes {uuid.uuid4().hex[:6]}"
    try:
        with (
            httpx.Client(base_url=live_gateway.url, cookies=cookies, timeout=10) as first,
            httpx.Client(base_url=other.url, cookies=cookies, timeout=10) as second,
        ):
            form = first.get("/admin/accounts/apikey/add/").text
            fields = dict(
                re.findall(r'name="(csrfmiddlewaretoken|creation_token)" value="([^"]+)"', form)
            )
            owner = get_user_model().objects.get(username=superuser)
            body = {**fields, "name": name, "owner": owner.pk, "budget_period": "month"}
            posted = first.post("/admin/accounts/apikey/add/", data=body)
            assert posted.status_code == 302, posted.text[:2000]
            location = posted.headers["location"]
            shown = second.get(location).text
            gone = first.get(location).text
            resubmitted = second.post("/admin/accounts/apikey/add/", data=body)
    finally:
        stop_gateway(other)
    secret = SECRET_RE.search(shown)
    assert secret, shown[:3000]
    assert ApiKey.objects.get(name=name).matches(secret[0])
    assert "already shown" in gone and secret[0] not in gone
    assert resubmitted.status_code == 302 and "/apikey/created/" in resubmitted.headers["location"]
    assert ApiKey.objects.filter(name=name).count() == 1


# What each chart's x labels are, as the browser drew them, and where.
READ_TICKS = """svg => {
    const box = svg.getBoundingClientRect();
    return {
        svg: [box.left, box.top, box.right, box.bottom],
        ticks: [...svg.querySelectorAll('g.tick')].map(g => {
            const r = g.querySelector('text').getBoundingClientRect();
            return {
                text: g.querySelector('text').textContent,
                title: g.querySelector('title').textContent,
                box: [r.left, r.top, r.right, r.bottom],
            };
        }),
    };
}"""


def _overlap(a: list[float], b: list[float]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


@pytest.fixture
def usage_logs(committed) -> Iterator[list[str]]:
    """Request logs of twelve models over the last fortnight, one named qwen1.5-chat (the
    name the charts used to cut to `en1.5-chat`); removed afterwards."""
    from django.utils import timezone

    from accounts.models import RequestLog, new_public_id

    tag = uuid.uuid4().hex[:6]
    models = ["qwen1.5-chat", *(f"usage-{tag}-model-{i}" for i in range(11))]
    now = timezone.now()
    RequestLog.objects.bulk_create(
        RequestLog(
            created_at=now - timedelta(days=i % 14, minutes=1),
            request_id=f"usage-{tag}-{i}",
            key_public_id=new_public_id(),  # a key's width, for the list's columns
            model=model,
            endpoint="/v1/chat/completions",
            status=200 if i % 4 else 503,
            prompt_tokens=10 + i,
            completion_tokens=i,
            latency_ms=20.0 + i,
        )
        for i, model in enumerate(models)
    )
    yield models
    RequestLog.objects.filter(request_id__startswith=f"usage-{tag}-").delete()


def test_6_usage_chart_labels_are_whole_and_apart(ui, committed, usage_logs):
    def read(page) -> dict:
        page.goto("/admin/accounts/requestlog/usage/?days=14")
        seen = {}
        for name in ("day", "key", "model"):
            charts = page.locator(f"#charts-{name} svg.usage-chart")
            seen[name] = [charts.nth(i).evaluate(READ_TICKS) for i in range(charts.count())]
            # The table under the charts lists the same groups, whole.
            seen[f"{name}-table"] = page.locator(
                f"#charts-{name} + table.usage tbody td:first-child"
            ).all_inner_texts()
        shot(page, "13-usage-14-days", full_page=True)
        page.locator("#charts-day svg.usage-chart").first.screenshot(
            path=str(SHOTS / "14-usage-chart-per-day.png")
        )
        page.locator("#charts-model svg.usage-chart").first.screenshot(
            path=str(SHOTS / "15-usage-chart-per-model.png")
        )
        return seen

    seen = ui.run(read)
    assert len(seen["day-table"]) == 14
    for name in ("day", "key", "model"):
        assert len(seen[name]) == 3, name
        for chart in seen[name]:
            texts = [tick["text"] for tick in chart["ticks"]]
            # Every group has its label (14 days, a dozen models fit unthinned), whole.
            assert texts == seen[f"{name}-table"], (name, texts)
            assert [tick["title"] for tick in chart["ticks"]] == texts
            svg = chart["svg"]
            for tick in chart["ticks"]:
                box = tick["box"]
                assert svg[0] <= box[0] and box[2] <= svg[2], tick
                assert svg[1] <= box[1] and box[3] <= svg[3], tick
            boxes = [tick["box"] for tick in chart["ticks"]]
            for a, b in zip(boxes, boxes[1:], strict=False):
                assert not _overlap(a, b), (name, a, b)
    assert "qwen1.5-chat" in [tick["text"] for tick in seen["model"][0]["ticks"]]
    assert set(usage_logs) <= set(seen["model-table"])


def test_7_request_log_list_fits_a_laptop_screen(ui, committed, usage_logs):
    from accounts.models import RequestLog

    log = RequestLog.objects.get(request_id__endswith="-0", model="qwen1.5-chat")

    def read(page) -> dict:
        # Searched for by id: earlier tests' logs can push it off the first page.
        page.goto(f"/admin/accounts/requestlog/?q={log.request_id}")
        table = page.locator("#result_list")
        seen = {
            "page_width": page.evaluate("() => document.documentElement.scrollWidth"),
            "table": table.bounding_box(),
            # The list scrolls inside its own box when too wide: that box must not scroll.
            "results": page.locator("#changelist .results").evaluate(
                "r => [r.scrollWidth, r.clientWidth]"
            ),
            "filter": page.locator("#changelist-filter").bounding_box(),
            "headers": table.locator("thead th").evaluate_all(
                "ths => ths.map(th => th.textContent.trim()).filter(Boolean)"
            ),
            "filters": page.locator("#changelist-filter summary").all_inner_texts(),
        }
        # With a search, the link carries `?_changelist_filters=...` after the path.
        row = table.locator(f"tr:has(a[href*='/requestlog/{log.pk}/change/'])")
        seen["row"] = row.locator("td, th").all_inner_texts()
        seen["row_right"] = row.locator("td").last.bounding_box()
        shot(page, "16-request-log-list")
        row.locator("a").first.click()
        page.wait_for_url(lambda url: f"/requestlog/{log.pk}/change/" in url)
        seen["detail"] = page.locator("#content-main").inner_text()
        shot(page, "17-request-log-detail", full_page=True)
        return seen

    seen = ui.run(read)
    width = LAPTOP["width"]
    assert seen["page_width"] <= width, "the page scrolls sideways"
    assert seen["table"]["x"] + seen["table"]["width"] <= width, seen["table"]
    scroll_width, client_width = seen["results"]
    assert scroll_width <= client_width, f"the list scrolls sideways: {seen['results']}"
    right = seen["row_right"]
    assert right["x"] + right["width"] <= seen["filter"]["x"], (right, seen["filter"])
    headers = [h.lower() for h in seen["headers"]]
    assert headers == [
        "time (utc)",
        "key",
        "model",
        "endpoint",
        "status",
        "tokens in/out",
        "latency ms",
    ], headers
    row = seen["row"]
    assert row[0] == log.created_at.strftime("%Y-%m-%d %H:%M:%S")
    assert row[1:] == [
        f"sk-gw-{log.key_public_id}",
        "qwen1.5-chat",
        "/v1/chat/completions",
        "503",
        "10 / 0",
        "20",
    ], row
    titles = [t.strip().lower() for t in seen["filters"]]
    assert len(titles) == len(set(titles)), titles
    assert {"by status class", "by status code"} <= set(titles)
    assert log.request_id in seen["detail"] and "Outcome" in seen["detail"]


def test_8_index_links_the_usage_page_and_view_site_opens_the_docs(ui, committed):
    def read(page) -> dict:
        page.goto("/admin/")
        seen = {
            "view_site": page.locator("#user-tools a:text-is('View site')").get_attribute("href")
        }
        page.click("#console-pages a:text-is('Usage charts')")
        page.wait_for_url("**/admin/accounts/requestlog/usage/")
        seen["usage_title"] = page.locator("h1").inner_text()
        page.goto("/admin/")
        page.click("#user-tools a:text-is('View site')")
        page.wait_for_url("**/docs")
        page.wait_for_selector(".opblock-summary-path")
        seen["docs_paths"] = page.locator(".opblock-summary-path").evaluate_all(
            "ps => ps.map(p => p.dataset.path)"
        )
        shot(page, "18-view-site-api-docs")
        return seen

    seen = ui.run(read)
    assert seen["view_site"] == "/docs"
    assert seen["usage_title"].startswith("Usage, last 14 days")
    assert "/v1/chat/completions" in seen["docs_paths"]
