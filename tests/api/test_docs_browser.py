"""/docs in a real headless Chromium: Swagger UI renders the /v1 routes offline.

Every request that would leave the gateway's host is aborted and recorded
(tests/browser.py), so a page that still needed a CDN would fail here twice: no
routes on screen, and the external request in `Browser.clean()`. Screenshots go to
test-artifacts/docs/.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.browser import LAPTOP, Browser, skip_without_browser
from tests.conftest import ARTIFACTS

skip_without_browser()
pytestmark = pytest.mark.django_db

SHOTS = ARTIFACTS / "docs"
V1_ROUTES = {
    ("GET", "/v1/models"),
    ("GET", "/v1/models/{model_id}"),
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/completions"),
}


@pytest.fixture(scope="module")
def browser(live_gateway) -> Iterator[Browser]:
    browser = Browser(live_gateway.url, SHOTS, LAPTOP)
    try:
        yield browser
    finally:
        browser.close()


def test_docs_render_the_v1_routes_offline(browser):
    def read_docs(page) -> dict:
        seen: dict = {"requests": []}
        page.on("request", lambda r: seen["requests"].append(r.url))
        page.goto("/docs")
        page.wait_for_selector(".opblock-summary-path", timeout=20_000)
        seen["title"] = page.locator(".info .title").inner_text()
        seen["routes"] = page.locator(".opblock").evaluate_all(
            """blocks => blocks.map(b => [
                b.querySelector('.opblock-summary-method').textContent.trim(),
                b.querySelector('.opblock-summary-path').dataset.path])"""
        )
        browser.shot(page, "01-docs", full_page=True)
        # Open chat completions: its responses, with OpenAI's error envelope.
        page.click("#operations-openai-createChatCompletion .opblock-summary-control")
        responses = page.locator("#operations-openai-createChatCompletion .responses-table")
        responses.first.wait_for()
        seen["statuses"] = page.locator(
            "#operations-openai-createChatCompletion .responses-table .response-col_status"
        ).all_inner_texts()
        seen["models"] = page.locator(
            "section.models .json-schema-2020-12__title"
        ).all_inner_texts()
        browser.shot(page, "02-docs-chat-completions", full_page=True)
        return seen

    seen = browser.run(read_docs)
    browser.clean()  # no console error, no failed request, nothing beyond the gateway
    routes = {(method.upper(), path) for method, path in seen["routes"]}
    assert routes >= V1_ROUTES, routes
    assert ("POST", "/generate") in routes
    assert seen["title"].startswith("LLM gateway")
    statuses = {status.split()[0] for status in seen["statuses"]}
    assert statuses >= {"200", "400", "401", "404", "429", "503"}, statuses
    assert {"ErrorResponse", "ChatCompletion"} <= set(seen["models"]), seen["models"]
    hosts = {url.split("/")[2] for url in seen["requests"]}
    assert hosts == {browser.base_url.split("/")[2]}, hosts
