"""Log lines of a live gateway (LOG_FORMAT=json, LOG_LEVEL=DEBUG): every line JSON, each
line of a request carrying its id, key, model and route, one access line per request,
Triton's causes kept, and never a key's secret or a prompt."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.api.test_openai_conformance import user
from tests.conftest import CHAT_MODEL, DOWN_MODEL, LiveGateway, start_gateway, stop_gateway

CHAT = "/v1/chat/completions"
# Unique text no line may contain: it is in every prompt sent below.
MARKER = f"zebra-{uuid.uuid4().hex[:12]}"
WRONG_SECRET = f"sk-gw-notakey{uuid.uuid4().hex}"


class Served:
    """The requests sent to the gateway, by name: request id and response."""

    def __init__(self) -> None:
        self.ids: dict[str, str] = {}
        self.responses: dict[str, httpx.Response] = {}

    def send(self, client: httpx.Client, name: str, path: str, body: dict, **kwargs):
        request_id = f"log-{name}-{uuid.uuid4().hex[:8]}"
        self.ids[name] = request_id
        headers = {"x-request-id": request_id, **kwargs.pop("headers", {})}
        response = client.post(path, json=body, headers=headers, **kwargs)
        self.responses[name] = response
        return response


@pytest.fixture(scope="module")
def logged(model_configs, owner_key, tmp_path_factory) -> Iterator[tuple[Served, list[dict]]]:
    """A JSON-logging gateway at DEBUG, with prompts kept in request logs (so that they
    pass through the database and its logger too); the requests below, then its lines."""
    env = {"LOG_FORMAT": "json", "LOG_LEVEL": "DEBUG", "REQUEST_LOG_CONTENT": "true"}
    gateway: LiveGateway = start_gateway(tmp_path_factory.mktemp("logs"), env, api_key=owner_key)
    served = Served()
    try:
        with gateway.client() as client:
            say = {"model": CHAT_MODEL, "messages": user(f"[[say:hello]] {MARKER}")}
            assert served.send(client, "chat", CHAT, say).status_code == 200
            streamed = {**say, "stream": True}
            assert served.send(client, "stream", CHAT, streamed).status_code == 200
            # A newer SDK's extra fields: reported once, not on every request.
            extra = {**say, "some_new_field": 1}
            for name in ("extra1", "extra2"):
                assert served.send(client, name, CHAT, extra).status_code == 200
            failing = {"model": CHAT_MODEL, "messages": user(f"[[error:2]] {MARKER}")}
            assert served.send(client, "error", CHAT, failing).status_code == 500
            down = {"model": DOWN_MODEL, "messages": user(MARKER)}
            assert served.send(client, "down", CHAT, down).status_code == 503
            assert served.send(client, "generate", "/generate", {"prompt": MARKER}).status_code in (
                200,
                400,  # several models configured: it must name one
            )
            left_id = f"log-left-{uuid.uuid4().hex[:8]}"
            served.ids["left"] = left_id
            slow = {
                "model": CHAT_MODEL,
                "messages": user("[[delay:50]][[long:100]]"),
                "stream": True,
            }
            with client.stream("POST", CHAT, json=slow, headers={"x-request-id": left_id}) as r:
                for _ in r.iter_lines():
                    break  # the first chunk, then hang up
            time.sleep(0.5)  # the gateway notices and settles
        with gateway.client(api_key=WRONG_SECRET) as client:
            assert served.send(client, "wrong_key", CHAT, say).status_code == 401
    finally:
        stop_gateway(gateway)  # every line written and flushed
    text = gateway.log_path.read_text()
    lines = [line for line in text.splitlines() if line.strip()]
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            pytest.fail(f"not a JSON line: {line!r}")
    assert records
    return served, records, text


def of(records: list[dict], request_id: str) -> list[dict]:
    return [r for r in records if r.get("request_id") == request_id]


def test_every_line_is_json_with_time_level_logger_and_message(logged):
    _, records, _ = logged
    for record in records:
        assert {"time", "level", "logger", "message"} <= record.keys(), record
    # uvicorn's own lines come out the same way.
    assert any(r["logger"].startswith("uvicorn") for r in records)


def test_a_request_s_lines_carry_its_id_key_model_and_route(logged, owner_key):
    served, records, _ = logged
    from accounts.models import parse_public_id

    lines = of(records, served.ids["chat"])
    assert lines, "no line carries the request id"
    access = [r for r in lines if r["logger"] == "llmgateway.access"]
    assert len(access) == 1
    line = access[0]
    assert line["route"] == "/v1/chat/completions"
    assert line["model"] == CHAT_MODEL
    assert line["key"] == parse_public_id(owner_key)
    assert line["status"] == 200 and line["method"] == "POST"
    usage = served.responses["chat"].json()["usage"]
    assert line["prompt_tokens"] == usage["prompt_tokens"]
    assert line["completion_tokens"] == usage["completion_tokens"]
    assert 0 < line["ttft_ms"] <= line["latency_ms"]


def test_a_stream_s_access_line_comes_after_its_last_token(logged):
    served, records, _ = logged
    (line,) = [r for r in of(records, served.ids["stream"]) if r["logger"] == "llmgateway.access"]
    assert line["status"] == 200 and line["completion_tokens"] > 0 and "ttft_ms" in line


def test_a_client_that_leaves_is_a_499_access_line(logged):
    served, records, _ = logged
    (line,) = [r for r in of(records, served.ids["left"]) if r["logger"] == "llmgateway.access"]
    assert line["status"] == 499 and line["error"] == "client_disconnected"
    assert 0 < line["completion_tokens"] < 100 and "ttft_ms" in line


def test_triton_s_error_cause_is_in_the_log(logged):
    served, records, _ = logged
    failed = of(records, served.ids["error"])
    messages = " | ".join(r["message"] for r in failed)
    assert "scripted failure after 2 tokens" in messages, messages
    (access,) = [r for r in failed if r["logger"] == "llmgateway.access"]
    assert access["status"] == 500 and access["error"] == "inference_error"


def test_an_unreachable_triton_is_logged_with_its_status(logged):
    served, records, text = logged
    assert "InferenceServerException()" not in text
    down = of(records, served.ids["down"])
    (access,) = [r for r in down if r["logger"] == "llmgateway.access"]
    assert access["status"] == 503
    # The reason a Triton is down: the gRPC status and message, from the pool's probe.
    reasons = [r["message"] for r in records if "is down" in r["message"]]
    assert reasons and any("UNAVAILABLE" in m for m in reasons), reasons


def test_extra_fields_are_reported_once(logged):
    _, records, _ = logged
    reported = [r for r in records if "some_new_field" in r["message"] and r["level"] == "INFO"]
    assert len(reported) == 1


def test_no_secret_and_no_prompt_in_any_line(logged, owner_key):
    _, _, text = logged
    assert owner_key not in text
    from accounts.models import KEY_PREFIX

    secret_part = owner_key[len(KEY_PREFIX) :].partition("-")[2]
    assert len(secret_part) >= 20 and secret_part not in text  # nor the part after the id
    assert WRONG_SECRET not in text
    assert MARKER not in text
    assert "hello" not in text  # the answer text (it is the prompt's [[say:]] too)


def test_the_wrong_key_s_request_is_logged_without_a_key(logged):
    served, records, _ = logged
    (access,) = [
        r for r in of(records, served.ids["wrong_key"]) if r["logger"] == "llmgateway.access"
    ]
    assert access["status"] == 401 and "key" not in access


def test_text_format_appends_the_request_fields():
    import logging

    from llmgateway.context import RequestContext, current_request
    from llmgateway.logconfig import RequestFields, TextFormatter

    record = logging.LogRecord("x", logging.INFO, __file__, 1, "hello %s", ("there",), None)
    token = current_request.set(RequestContext("req_abc", route="/v1/models", model="m"))
    try:
        assert RequestFields().filter(record)
    finally:
        current_request.reset(token)
    line = TextFormatter().format(record)
    assert line.endswith("hello there [request_id=req_abc model=m route=/v1/models]")


def test_describe_exception_keeps_triton_s_message_and_status():
    from tritonclient.utils import InferenceServerException

    from llmgateway.logconfig import describe_exception

    # As tritonclient raises it (keywords: nothing in args).
    exc = InferenceServerException(msg="failed to connect", status="StatusCode.UNAVAILABLE")
    assert repr(exc) == "InferenceServerException()"  # why describe_exception exists
    assert describe_exception(exc) == (
        "InferenceServerException [StatusCode.UNAVAILABLE] failed to connect"
    )
    assert describe_exception(ValueError("bad")) == "ValueError: bad"


def test_log_format_is_checked():
    from llmgateway.logconfig import logging_config

    with pytest.raises(ValueError, match="LOG_FORMAT"):
        logging_config(fmt="xml", level="INFO")


def test_serve_gives_uvicorn_the_same_format_and_its_access_log():
    from llmgateway.logconfig import logging_config, uvicorn_log_config

    django_config = logging_config(fmt="json", level="INFO")
    # Django's own configuration leaves uvicorn's access log alone (--no-access-log holds)...
    assert "uvicorn.access" not in django_config["loggers"]
    assert "uvicorn" not in django_config["loggers"]
    # ... and `serve` hands uvicorn one with it, through the same handler and format.
    config = uvicorn_log_config(django_config)
    assert config["loggers"]["uvicorn.access"]["handlers"] == ["console"]
    assert config["loggers"]["uvicorn.error"]["handlers"] == ["console"]
    assert config["formatters"]["gateway"]["()"].endswith("JsonLineFormatter")
    assert "uvicorn.access" not in django_config["loggers"]  # a copy, not the settings'


def test_a_sync_request_leaves_no_context_behind(client):
    """Django's test client (WSGI, this thread): the context variable the middleware set
    for the request is put back, so later lines in the thread do not carry its id."""
    from llmgateway.context import current_request

    assert current_request.get() is None
    response = client.get("/health", headers={"x-request-id": "sync-1"})
    assert response.status_code == 200 and response["x-request-id"] == "sync-1"
    assert current_request.get() is None
