"""Hostile input against the live gateway (issue 19): hidden models, NUL, beams, caps,
text that cannot fit, and a key at its limits sending a large prompt."""

from __future__ import annotations

import time
import uuid

import httpx
import orjson
import pytest

from accounts.models import RequestLog
from tests.accounts.conftest import bearer, wait_for_logs
from tests.conftest import CHAT_MODEL, DEV_LIMITS, V08_MODEL

pytestmark = pytest.mark.committed_db

HIDDEN = CHAT_MODEL  # "dev-chat": the restricted key may use V08_MODEL only
MISSING = CHAT_MODEL[:-1] + "X"  # no such model, and as long, so bodies compare byte for byte
# Text no prompt of the dev models can hold (context 4096 x at most 32 characters a token).
TOO_LONG = "word " * 40_000
# Headers that differ between any two responses.
PER_RESPONSE = {"date", "x-request-id"}

CHAT = {"messages": [{"role": "user", "content": "[[say:hi]]"}]}
TOOLS = [
    {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}},
]
SCHEMA = {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object"}}}

# (method, path, body without its model): every route, every kind of request, including
# ones whose checks against the model (its limits, its beams, its Triton) would tell.
KINDS = [
    ("POST", "/v1/chat/completions", CHAT),
    ("POST", "/v1/chat/completions", {**CHAT, "stream": True}),
    ("POST", "/v1/chat/completions", {**CHAT, "max_tokens": 10**6}),
    ("POST", "/v1/chat/completions", {**CHAT, "max_completion_tokens": 10**6, "stream": True}),
    ("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": TOO_LONG}]}),
    ("POST", "/v1/chat/completions", {**CHAT, "tools": TOOLS, "tool_choice": "required"}),
    ("POST", "/v1/chat/completions", {**CHAT, "response_format": SCHEMA}),
    ("POST", "/v1/chat/completions", {**CHAT, "n": 3, "logprobs": True}),
    ("POST", "/v1/completions", {"prompt": "[[say:hi]]"}),
    ("POST", "/v1/completions", {"prompt": "[[say:hi]]", "stream": True}),
    ("POST", "/v1/completions", {"prompt": [10**6]}),
    ("POST", "/v1/completions", {"prompt": "x", "max_tokens": 10**6}),
    ("POST", "/v1/completions", {"prompt": ["x", TOO_LONG], "echo": True}),
    ("POST", "/generate", {"prompt": "[[say:hi]]"}),
    ("POST", "/generate", {"prompt": "[[say:hi]]", "stream": True}),
    ("POST", "/generate", {"prompt": "x", "num_beams": 8}),
    ("POST", "/generate", {"prompt": "x", "max_output_len": 10**6}),
    ("POST", "/generate", {"prompt": TOO_LONG}),
    ("POST", "/generate", {"prompt": "x", "images": ["data:image/png;base64,AAAA"]}),
    ("POST", "/batch_generate", {"prompts": ["x", "y"]}),
    ("POST", "/batch_generate", {"prompts": ["x"], "num_beams": 8}),
    ("POST", "/batch_generate", {"prompts": ["x"], "images": ["data:image/png;base64,AAAA"]}),
    ("POST", "/v1/responses", {"input": "[[say:hi]]"}),
    ("POST", "/v1/responses", {"input": "[[say:hi]]", "stream": True}),
    ("POST", "/v1/responses", {"input": "x", "max_output_tokens": 10**6}),
    ("POST", "/v1/responses", {"input": TOO_LONG}),
    ("GET", "/v1/models/{model}", None),
]


def _send(client: httpx.Client, method: str, path: str, body: dict | None, model: str):
    if body is None:
        return client.request(method, path.format(model=model))
    return client.request(method, path, json={**body, "model": model})


def _headers(response: httpx.Response) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k not in PER_RESPONSE}


@pytest.mark.parametrize(("method", "path", "body"), KINDS)
def test_a_hidden_model_answers_exactly_as_a_missing_one(
    make_key, live_gateway, method, path, body
):
    _, secret = make_key(models=[V08_MODEL])
    with live_gateway.client(api_key=secret) as client:
        hidden = _send(client, method, path, body, HIDDEN)
        missing = _send(client, method, path, body, MISSING)
        allowed = _send(client, method, path, body, V08_MODEL)
    # The Responses API answers a missing model 400 (as OpenAI's does), the others 404.
    assert missing.status_code == (400 if path == "/v1/responses" else 404), missing.text
    assert hidden.status_code == missing.status_code, hidden.text
    assert hidden.content.replace(HIDDEN.encode(), MISSING.encode()) == missing.content
    assert _headers(hidden) == _headers(missing)
    # The same request for a model the key may use is not refused as missing.
    assert b"model_not_found" not in allowed.content, allowed.text


def _row(request_id: str) -> RequestLog:
    query = RequestLog.objects.filter(request_id=request_id)
    assert wait_for_logs(query.count, 1) == 1, request_id
    return query.get()


CHAT_NUL = {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "hi"}]}
NUL_CASES = [
    ("/v1/chat/completions", {**CHAT_NUL, "model": "dev\x00chat"}, "model"),
    ("/v1/chat/completions", {**CHAT_NUL, "user": "u\x00"}, "user"),
    (
        "/v1/chat/completions",
        {**CHAT_NUL, "messages": [{"role": "user", "content": "a\x00b"}]},
        "messages[0].content",
    ),
    (
        "/v1/chat/completions",
        {
            "model": CHAT_MODEL,
            "messages": [{"role": "user", "content": [{"type": "text", "text": "\x00"}]}],
        },
        "messages[0].content[0].text",
    ),
    (
        "/v1/chat/completions",
        {**CHAT_NUL, "messages": [{"role": "user", "content": "x", "name": "n\x00"}]},
        "messages[0].name",
    ),
    ("/v1/chat/completions", {**CHAT_NUL, "stop": ["a", "\x00"]}, "stop[1]"),
    ("/v1/chat/completions", {**CHAT_NUL, "stop": "\x00"}, "stop"),
    (
        "/v1/chat/completions",
        {**CHAT_NUL, "tools": [{"type": "function", "function": {"name": "f\x00"}}]},
        "tools[0].function.name",
    ),
    (
        "/v1/chat/completions",
        {
            **CHAT_NUL,
            "tools": [{"type": "function", "function": {"name": "f", "description": "\x00"}}],
        },
        "tools[0].function.description",
    ),
    ("/v1/chat/completions", {**CHAT_NUL, "metadata": {"k": "v\x00"}}, "metadata.k"),
    ("/v1/chat/completions", {**CHAT_NUL, "metadata": {"k\x00": "v"}}, "metadata.k\x00"),
    ("/v1/completions", {"model": "\x00", "prompt": "x"}, "model"),
    ("/v1/completions", {"model": CHAT_MODEL, "prompt": ["x", "y\x00"]}, "prompt[1]"),
    ("/v1/completions", {"model": CHAT_MODEL, "prompt": "x", "suffix": "\x00"}, "suffix"),
    ("/generate", {"model": "dev\x00chat", "prompt": "x"}, "model"),
    ("/generate", {"model": CHAT_MODEL, "prompt": "x\x00"}, "prompt"),
    ("/generate", {"model": CHAT_MODEL, "prompt": "x", "stop_words": ["\x00"]}, "stop_words[0]"),
    ("/generate", {"model": CHAT_MODEL, "prompt": "x", "uuid": "\x00"}, "uuid"),
    ("/v1/responses", {"model": "\x00", "input": "x"}, "model"),
    ("/v1/responses", {"model": CHAT_MODEL, "input": "x\x00"}, "input"),
    ("/v1/responses", {"model": CHAT_MODEL, "input": "x", "instructions": "\x00"}, "instructions"),
    (
        "/v1/responses",
        {"model": CHAT_MODEL, "input": "x", "previous_response_id": "\x00"},
        "previous_response_id",
    ),
    ("/batch_generate", {"model": "\x00", "prompts": ["x"]}, "model"),
    ("/batch_generate", {"model": CHAT_MODEL, "prompts": ["x", "\x00"]}, "prompts[1]"),
]


@pytest.mark.parametrize(("path", "body", "param"), NUL_CASES)
def test_nul_in_any_string_field_is_400_naming_it_and_keeps_its_row(
    committed, live_gateway, path, body, param
):
    request_id = f"nul-{uuid.uuid4().hex[:12]}"
    with live_gateway.client(headers={"x-request-id": request_id}) as client:
        response = client.post(path, json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert "null character" in error["message"]
    row = _row(request_id)
    assert row.status == 400 and "\x00" not in row.model
    if "\x00" in body["model"]:
        assert row.model == body["model"].replace("\x00", "\ufffd")


@pytest.mark.parametrize(
    ("method", "path", "param"),
    [
        ("GET", "/v1/models/dev%00chat", "model"),
        ("GET", "/v1/responses/resp_%00", "response_id"),
        ("GET", "/v1/responses/resp_%00/input_items", "response_id"),
        ("DELETE", "/v1/responses/resp_%00", "response_id"),
    ],
)
def test_nul_in_a_path_parameter_is_400_and_keeps_its_row(
    committed, live_gateway, method, path, param
):
    request_id = f"nul-{uuid.uuid4().hex[:12]}"
    with live_gateway.client(headers={"x-request-id": request_id}) as client:
        response = client.request(method, path)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    assert _row(request_id).status == 400


@pytest.mark.parametrize("path", ["/generate", "/batch_generate"])
def test_num_beams_beyond_the_models_max_beam_width_is_400(http, path):
    prompt = {"prompt": "x"} if path == "/generate" else {"prompts": ["x"]}
    for beams, status in ((8, 400), (5, 400), (4, 200)):
        response = http.post(path, json={"model": CHAT_MODEL, **prompt, "num_beams": beams})
        assert response.status_code == status, (beams, response.text)
        if status == 400:
            error = response.json()["error"]
            assert error["param"] == "num_beams" and "at most 4 beams" in error["message"]


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/chat/completions", {**CHAT, "tools": TOOLS * 129}, "tools"),
        ("/v1/chat/completions", {"messages": CHAT["messages"] * 2049}, "messages"),
        ("/v1/chat/completions", {**CHAT, "stop": ["s"] * 17}, "stop"),
        ("/v1/completions", {"prompt": "x", "stop": ["s"] * 17}, "stop"),
        ("/generate", {"prompt": "x", "stop_words": ["s"] * 17}, "stop_words"),
        ("/batch_generate", {"prompts": ["x"], "stop_words": ["s"] * 17}, "stop_words"),
    ],
)
def test_lists_over_their_cap_are_400_naming_the_parameter(http, path, body, param):
    response = http.post(path, json={"model": CHAT_MODEL, **body})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["code"] == "array_above_max_length"
    assert "array too long" in error["message"]


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/chat/completions", {**CHAT, "n": 17}, "n"),
        ("/v1/completions", {"prompt": "x", "n": 17}, "n"),
        ("/generate", {"prompt": "x", "num_beams": 17}, "num_beams"),
    ],
)
def test_too_many_sequences_are_400_naming_the_parameter(http, path, body, param):
    response = http.post(path, json={"model": CHAT_MODEL, **body})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": TOO_LONG}]}, "messages"),
        # Only the rendered prompt tells: the tools' definitions are long, not the messages.
        (
            "/v1/chat/completions",
            {
                **CHAT,
                "tools": [{"type": "function", "function": {"name": "f", "description": TOO_LONG}}],
            },
            "messages",
        ),
        ("/v1/completions", {"prompt": ["x", TOO_LONG]}, "prompt"),
        ("/generate", {"prompt": TOO_LONG}, "prompt"),
        ("/batch_generate", {"prompts": ["x", TOO_LONG]}, "prompts"),
    ],
)
def test_text_that_cannot_fit_is_refused_untokenized(http, path, body, param):
    started = time.monotonic()
    response = http.post(path, json={"model": CHAT_MODEL, **body})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "context_length_exceeded" and error["param"] == param
    assert error["message"].startswith(
        f"This model's maximum context length is {DEV_LIMITS['context_length']} tokens."
    )
    assert time.monotonic() - started < 1


def test_a_long_prompt_that_fits_is_tokenized_and_answered(http):
    # Over GATEWAY_PREPARE_INLINE_BYTES: prepared in the thread pool.
    content = "[[say:ok]] " + "word " * 3000
    body = {"model": CHAT_MODEL, "messages": [{"role": "user", "content": content}]}
    response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["prompt_tokens"] > 3000


def test_a_key_at_its_limit_is_refused_before_its_large_prompt_is_looked_at(make_key, live_gateway):
    _, secret = make_key(rpm_limit=1)
    small = {"model": CHAT_MODEL, "prompt": "[[say:ok]]"}
    large = {"model": CHAT_MODEL, "prompt": TOO_LONG}
    with httpx.Client(base_url=live_gateway.url, headers=bearer(secret), timeout=30) as client:
        assert client.post("/generate", json=small).status_code == 200
        response = client.post("/generate", json=large)
    # 429 rather than the 400 its length would get: admission's checks come first.
    assert response.status_code == 429, response.text
    assert response.json()["error"]["code"] == "rate_limit_exceeded"


def test_a_key_without_budget_is_refused_before_its_large_prompt_is_looked_at(
    make_key, live_gateway
):
    from accounts.models import QuotaCounter
    from accounts.quota.database import retry_when_locked

    key, secret = make_key(budget_tokens=100, budget_period="total")
    # Spent, as the database quota store (the live gateway's) keeps it. update_or_create
    # reads, then writes: on SQLite this process's deferred transaction fails at once
    # ("database is locked") if the gateway commits a log in between (CI met it once).
    retry_when_locked(QuotaCounter.objects.update_or_create)(
        subject=f"k{key.id}", defaults={"budget_window": "total", "budget_used": 100}
    )
    large = {"model": CHAT_MODEL, "messages": [{"role": "user", "content": TOO_LONG}]}
    with httpx.Client(base_url=live_gateway.url, headers=bearer(secret), timeout=30) as client:
        response = client.post("/v1/chat/completions", json=large)
    assert response.status_code == 429, response.text
    error = response.json()["error"]
    assert error["code"] == "insufficient_quota" and "has 0 tokens left." in error["message"]


def test_a_refused_key_hears_429_before_the_models_limits(make_key, live_gateway):
    _, secret = make_key(rpm_limit=1)
    small = {"model": CHAT_MODEL, "prompt": "[[say:ok]]"}
    over = {"model": CHAT_MODEL, "prompt": "x", "max_output_len": 10**6}
    with httpx.Client(base_url=live_gateway.url, headers=bearer(secret), timeout=30) as client:
        assert client.post("/generate", json=small).status_code == 200
        assert client.post("/generate", json=small).status_code == 429  # now refused
        # Its next request over the model's output limit: still the 429, not the limit's 400.
        response = client.post("/generate", json=over)
    assert response.status_code == 429, response.text
    assert "4000" not in response.json()["error"]["message"]


def test_millions_of_token_ids_are_refused_quickly_by_their_count(http):
    body = orjson.dumps({"model": CHAT_MODEL, "prompt": [1] * 2_000_000})
    started = time.monotonic()
    response = http.post(
        "/v1/completions", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "context_length_exceeded" and error["param"] == "prompt"
    assert "resulted in 2000000 tokens" in error["message"]
    assert time.monotonic() - started < 2


@pytest.mark.parametrize("prompt", [[1, True], [1, -1], [1, 2.0], [[1], [False]]])
def test_token_ids_are_non_negative_integers(http, prompt):
    response = http.post("/v1/completions", json={"model": CHAT_MODEL, "prompt": prompt})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "prompt"
