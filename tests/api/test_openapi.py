"""/openapi.json: a valid OpenAPI 3.1 document, and what it declares is what the live
gateway answers: every success body, stream event and error envelope is validated
against the document's own schemas (jsonschema). /docs and /openapi.json go away
with DOCS_ENABLED=false."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from typing import Any

import httpx
import orjson
import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate as validate_openapi

from tests.conftest import CHAT_MODEL, DOWN_MODEL, ROOT, start_gateway, stop_gateway

pytestmark = pytest.mark.django_db

INFERENCE = [
    ("post", "/generate"),
    ("post", "/batch_generate"),
    ("post", "/v1/chat/completions"),
    ("post", "/v1/completions"),
]
ENVELOPE = "#/components/schemas/ErrorResponse"
CHAT = {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "[[say:hello there]]"}]}


@pytest.fixture(scope="module")
def document(live_gateway) -> dict[str, Any]:
    response = httpx.get(live_gateway.url + "/openapi.json", timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture(scope="module")
def one_rpm_key(model_configs, django_db_blocker) -> str:
    """A committed key allowed one request a minute: its second request is a 429."""
    from accounts.quota.database import retry_when_locked
    from accounts.services import key_create, owner_get_or_create

    with django_db_blocker.unblock():
        owner = owner_get_or_create(username="openapi-tests")
        _, secret = retry_when_locked(key_create)(
            owner=owner, name=f"openapi {uuid.uuid4().hex[:6]}", rpm_limit=1
        )
    return secret


def operations(document: dict[str, Any]):
    for path, item in document["paths"].items():
        for method, operation in item.items():
            yield method, path, operation


def check(document: dict[str, Any], schema_ref: str, body: Any) -> None:
    """Validate `body` against the schema `schema_ref` points to inside `document`."""
    schema = {"$ref": schema_ref, "components": document["components"]}
    errors = sorted(Draft202012Validator(schema).iter_errors(body), key=str)
    assert not errors, f"{schema_ref}: {[e.message for e in errors]} in {body}"


def declared(document: dict[str, Any], method: str, path: str, status: int) -> str:
    """The JSON schema reference the document declares for this answer."""
    responses = document["paths"][path][method]["responses"]
    assert str(status) in responses, f"{method} {path} does not declare {status}"
    return responses[str(status)]["content"]["application/json"]["schema"]["$ref"]


def event_schema(document: dict[str, Any], method: str, path: str) -> str:
    """The schema of the `data:` events a streamed answer sends, named by the document."""
    stream = document["paths"][path][method]["responses"]["200"]["content"]["text/event-stream"]
    name = re.search(r"data: <(\w+)>", stream["schema"]["description"]).group(1)
    assert name in document["components"]["schemas"]
    return f"#/components/schemas/{name}"


def test_the_document_is_valid_openapi(document):
    validate_openapi(document)
    assert document["openapi"].startswith("3.1")


def test_every_operation_declares_its_body_and_its_errors(document):
    seen = set()
    for method, path, operation in operations(document):
        seen.add((method, path))
        responses = operation["responses"]
        assert responses["200"]["content"]["application/json"]["schema"]["$ref"], path
        errors = {status for status in responses if status != "200"}
        if operation.get("security"):
            assert "401" in errors, (method, path)
        for status in errors:
            ref = responses[status]["content"]["application/json"]["schema"]["$ref"]
            assert responses[status]["description"]
            if path != "/health/ready":  # its 503 is its own body, checked below
                assert ref == ENVELOPE, (method, path, status)
    for method, path in INFERENCE:
        responses = document["paths"][path][method]["responses"]
        assert {"400", "401", "404", "429", "503"} <= set(responses), path
        assert "text/event-stream" in responses["200"]["content"] or path == "/batch_generate"
    assert set(INFERENCE) <= seen
    assert {("get", "/v1/models"), ("get", "/v1/models/{model_id}")} <= seen


def test_success_bodies_are_what_the_document_declares(document, http):
    calls = [
        ("get", "/health", "/health", None),
        ("get", "/health/ready", "/health/ready", None),
        ("get", "/v1/models", "/v1/models", None),
        ("get", "/v1/models/{model_id}", f"/v1/models/{CHAT_MODEL}", None),
        ("post", "/v1/chat/completions", "/v1/chat/completions", CHAT),
        (
            "post",
            "/v1/completions",
            "/v1/completions",
            {"model": CHAT_MODEL, "prompt": "[[say:hi]]", "logprobs": 1},
        ),
        ("post", "/v1/responses", "/v1/responses", {"model": CHAT_MODEL, "input": "[[say:hi]]"}),
        ("post", "/generate", "/generate", {"model": CHAT_MODEL, "prompt": "[[say:hi]]"}),
        (
            "post",
            "/batch_generate",
            "/batch_generate",
            {"model": CHAT_MODEL, "prompts": ["[[say:a]]", "[[say:b]]"]},
        ),
    ]
    for method, path, url, body in calls:
        response = http.request(method, url, json=body)
        assert response.status_code == 200, (url, response.text)
        check(document, declared(document, method, path, 200), response.json())


@pytest.mark.parametrize(
    "path, body",
    [
        (
            "/v1/chat/completions",
            {**CHAT, "stream": True, "stream_options": {"include_usage": True}},
        ),
        ("/v1/completions", {"model": CHAT_MODEL, "prompt": "[[say:hi you]]", "stream": True}),
        ("/generate", {"model": CHAT_MODEL, "prompt": "[[say:hi you]]", "stream": True}),
    ],
)
def test_stream_events_are_what_the_document_declares(document, http, path, body):
    schema = event_schema(document, "post", path)
    with http.stream("POST", path, json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    events = [orjson.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert len(events) >= 2
    for item in events:
        check(document, schema, item)


def test_error_answers_are_the_declared_envelope(document, live_gateway, one_rpm_key):
    answers = []
    with live_gateway.client(api_key=None) as anonymous:
        answers.append(("post", "/v1/chat/completions", anonymous.post("/v1/chat/completions")))
    with live_gateway.client() as client:
        for method, path in INFERENCE:
            answers.append((method, path, client.request(method, path, json={"model": 3})))
            unknown = {"model": "no-such-model", "prompt": "x", "prompts": ["x"], **CHAT}
            unknown["model"] = "no-such-model"
            answers.append((method, path, client.request(method, path, json=unknown)))
            down = {**unknown, "model": DOWN_MODEL}
            answers.append((method, path, client.request(method, path, json=down)))
        answers.append(("get", "/v1/models/{model_id}", client.get("/v1/models/nope")))
    with live_gateway.client(api_key=one_rpm_key) as limited:
        for _ in range(2):
            last = limited.post("/v1/chat/completions", json=CHAT)
        answers.append(("post", "/v1/chat/completions", last))
    statuses = set()
    for method, path, response in answers:
        status = response.status_code
        statuses.add(status)
        assert status >= 400, (path, response.text)
        check(document, declared(document, method, path, status), response.json())
    assert statuses >= {400, 401, 404, 429, 503}, statuses


def test_docs_are_off_with_docs_enabled_false(tmp_path, owner_key):
    gateway = start_gateway(tmp_path, {"DOCS_ENABLED": "false"}, api_key=owner_key)
    try:
        with httpx.Client(base_url=gateway.url, timeout=10) as client:
            answers = [client.get(path) for path in ("/docs", "/openapi.json")]
    finally:
        stop_gateway(gateway)
    for response in answers:
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "unknown_url"
    # The console's "View site" opens the docs, so without them it has no such link.
    site_url = subprocess.run(
        [sys.executable, "-c", SITE_URL],
        env={
            **os.environ,
            "DOCS_ENABLED": "false",
            "DJANGO_SETTINGS_MODULE": "llmgateway.settings",
        },
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert site_url == ["None"]


SITE_URL = """
import django
django.setup()
from django.contrib import admin
admin.autodiscover()
print(admin.site.site_url)
"""
