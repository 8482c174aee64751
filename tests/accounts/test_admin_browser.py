"""The admin console in a real headless Chromium (Debian's), driven by Playwright.

Against the `live_gateway` subprocess (uvicorn, static files by WhiteNoise), as a
superuser who logs in through the login form: create a key and see its secret
once, revoke it and see it rejected, edit a model config, open the usage page and
its charts. Every step leaves a screenshot in test-artifacts/admin/.

Playwright's sync API marks its own event loop as running in the thread it is used
from, so Django's ORM would refuse sync calls there (SynchronousOnlyOperation).
The browser therefore lives in a thread of its own (`Browser.run`), and the
test's thread keeps the ORM and httpx.

Without chromium or playwright the module skips, except under CI (CI set), where it
fails. CHROMIUM_PATH overrides /usr/bin/chromium.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.accounts.conftest import wait_for_logs
from tests.conftest import (
    ARTIFACTS,
    CHAT_MODEL,
    DEV_LIMITS,
    dev_model_upsert,
    start_gateway,
    stop_gateway,
)

pytestmark = pytest.mark.committed_db

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
SHOTS = ARTIFACTS / "admin"
PASSWORD = "browser-tests-" + uuid.uuid4().hex
SECRET_RE = re.compile(r"sk-gw-[0-9a-f]+-[A-Za-z0-9_-]{20,}")
EDITED_MODEL = "admin-browser-chat"  # a model config of this module's own, edited in flow 3


def _missing() -> str:
    """What the module needs and this machine lacks ("" when nothing)."""
    missing = []
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("the playwright package (pip install -e '.[test]')")
    if not os.access(CHROMIUM, os.X_OK):
        missing.append(f"{CHROMIUM} (apt-get install chromium)")
    return "admin browser tests need " + " and ".join(missing) if missing else ""


# Skip without chromium or playwright, before any fixture starts; under CI fail
# instead (in the `browser` fixture), so CI proves the admin in a browser.
MISSING = _missing()
if MISSING and not os.environ.get("CI"):
    pytest.skip(MISSING, allow_module_level=True)


class Browser:
    """One Chromium page, used only from a worker thread of its own (see the docstring)."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="playwright")
        self.console_errors: list[str] = []
        self.failed: list[str] = []  # failed requests and responses >= 400
        self.external: list[str] = []  # requests that tried to leave the gateway (offline)
        self._pool.submit(self._start).result(60)

    def run(self, step: Callable[[Any], Any], timeout: float = 60) -> Any:
        """step(page) in the browser's thread; its result, or its exception."""

        def call() -> Any:
            try:
                return step(self.page)
            except Exception:
                # What the browser showed when the step failed, for the CI artifacts.
                with contextlib.suppress(Exception):
                    name = f"failed-{getattr(step, '__name__', 'step')}"
                    shot(self.page, name, full_page=True)
                raise

        return self._pool.submit(call).result(timeout)

    def _start(self) -> None:
        from playwright.sync_api import sync_playwright

        self._playwright = sync_playwright().start()
        self._chromium = self._playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS
        )
        context = self._chromium.new_context(
            base_url=self.base_url, viewport={"width": 1680, "height": 1000}
        )
        context.set_default_timeout(10_000)
        host = urlsplit(self.base_url).netloc

        def route(route) -> None:
            if urlsplit(route.request.url).netloc in (host, ""):
                route.continue_()
            else:
                self.external.append(route.request.url)
                route.abort()

        context.route("**/*", route)
        self.page = context.new_page()
        self.page.on(
            "console",
            lambda m: m.type == "error" and self.console_errors.append(f"{m.text} @ {m.location}"),
        )
        self.page.on("pageerror", lambda e: self.console_errors.append(f"uncaught: {e}"))
        self.page.on("requestfailed", self._request_failed)
        self.page.on(
            "response", lambda r: r.status >= 400 and self.failed.append(f"{r.url}: {r.status}")
        )

    def _request_failed(self, request) -> None:
        # select2 aborts its autocomplete search when a newer one (or the choice) supersedes it.
        if "/admin/autocomplete/" in request.url and request.failure == "net::ERR_ABORTED":
            return
        self.failed.append(f"{request.url}: {request.failure}")

    def close(self) -> None:
        def stop() -> None:
            self._chromium.close()
            self._playwright.stop()

        try:
            self._pool.submit(stop).result(30)
        finally:
            self._pool.shutdown()

    def clean(self) -> None:
        """No console errors, failed requests or attempts to reach another host so far."""
        problems = {"console": self.console_errors, "failed": self.failed}
        problems["external"] = self.external
        assert not any(problems.values()), problems
        for found in problems.values():
            found.clear()


def shot(page, name: str, *, full_page: bool = False) -> None:
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=full_page)


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
    """A Chromium page logged in to the admin through its login form."""
    if MISSING:
        pytest.fail(MISSING)
    SHOTS.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    browser = Browser(live_gateway.url)
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
