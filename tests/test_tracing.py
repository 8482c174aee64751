"""OpenTelemetry tracing: a live gateway's real OTLP/HTTP exporter sends its spans to a
receiver this test runs on loopback, which decodes them (ExportTraceServiceRequest)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.api.test_openai_conformance import user
from tests.conftest import CHAT_MODEL, start_gateway, stop_gateway

CHAT = "/v1/chat/completions"


class Receiver:
    """An OTLP/HTTP traces endpoint (POST /v1/traces, protobuf) keeping every span."""

    def __init__(self) -> None:
        self.spans: list = []  # (resource attributes, span)
        self.paths: list[str] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                with receiver.lock:
                    receiver.paths.append(self.path)
                    for resource_spans in request.resource_spans:
                        resource = {
                            a.key: a.value.string_value for a in resource_spans.resource.attributes
                        }
                        for scope_spans in resource_spans.scope_spans:
                            receiver.spans.extend((resource, s) for s in scope_spans.spans)
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def of_trace(self, trace_id: bytes) -> list:
        with self.lock:
            return [s for _, s in self.spans if s.trace_id == trace_id]

    def wait(self, trace_id: bytes, names: set[str], seconds: float = 10) -> dict[str, object]:
        """The trace's spans by name once all of `names` arrived."""
        deadline = time.monotonic() + seconds
        while True:
            spans = {s.name: s for s in self.of_trace(trace_id)}
            if names <= spans.keys() or time.monotonic() > deadline:
                return spans
            time.sleep(0.05)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    yield receiver
    receiver.close()


@pytest.fixture(scope="module")
def traced(receiver, model_configs, owner_key, tmp_path_factory):
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
        "OTEL_SERVICE_NAME": "gateway-under-test",
        "OTEL_BSP_SCHEDULE_DELAY": "50",  # ms: spans leave soon after they end
        "LOG_FORMAT": "json",
    }
    gateway = start_gateway(tmp_path_factory.mktemp("tracing"), env, api_key=owner_key)
    yield gateway
    stop_gateway(gateway)


def test_a_streamed_request_is_a_trace_of_its_phases(traced, receiver):
    """The caller's traceparent is joined; the server span has the runner's phases as
    children, the Triton call a first_token event, and the log lines the trace id."""
    trace_id, parent_id = uuid.uuid4().bytes, uuid.uuid4().bytes[:8]
    traceparent = f"00-{trace_id.hex()}-{parent_id.hex()}-01"
    request_id = f"traced-{uuid.uuid4().hex[:8]}"
    body = {"model": CHAT_MODEL, "messages": user("[[delay:5]][[long:5]]"), "stream": True}
    with traced.client() as client:
        headers = {"traceparent": traceparent, "x-request-id": request_id}
        response = client.post(CHAT, json=body, headers=headers)
    assert response.status_code == 200
    names = {"POST /v1/chat/completions", "prepare", "admission", "triton"}
    spans = receiver.wait(trace_id, names)
    assert names <= spans.keys(), sorted(spans)
    server = spans["POST /v1/chat/completions"]
    assert server.parent_span_id == parent_id
    assert server.kind == server.SPAN_KIND_SERVER
    for name in ("prepare", "admission", "triton"):
        assert spans[name].parent_span_id == server.span_id, name
    triton = spans["triton"]
    (event,) = [e for e in triton.events if e.name == "first_token"]
    assert triton.start_time_unix_nano < event.time_unix_nano < triton.end_time_unix_nano
    assert triton.end_time_unix_nano <= server.end_time_unix_nano
    attributes = {a.key: a.value for a in triton.attributes}
    assert attributes["gen_ai.request.model"].string_value == CHAT_MODEL
    assert attributes["gen_ai.usage.output_tokens"].int_value == 6  # 5 words and the end
    (resource,) = {r["service.name"] for r, _ in receiver.spans}
    assert resource == "gateway-under-test"
    assert receiver.paths and set(receiver.paths) == {"/v1/traces"}
    # Every log line of the request names the trace; the access line the server span.
    lines = [json.loads(line) for line in traced.log_path.read_text().splitlines() if line]
    mine = [line for line in lines if line.get("request_id") == request_id]
    assert mine and {line.get("trace_id") for line in mine} == {trace_id.hex()}
    (access,) = [line for line in mine if line["logger"] == "llmgateway.access"]
    assert access["span_id"] == server.span_id.hex()


def test_a_failed_generation_s_span_says_so(traced, receiver):
    trace_id = uuid.uuid4().bytes
    traceparent = f"00-{trace_id.hex()}-{uuid.uuid4().bytes[:8].hex()}-01"
    body = {"model": CHAT_MODEL, "messages": user("[[error:1]]")}
    with traced.client() as client:
        response = client.post(CHAT, json=body, headers={"traceparent": traceparent})
    assert response.status_code == 500
    spans = receiver.wait(trace_id, {"triton", "POST /v1/chat/completions"})
    triton = spans["triton"]
    assert triton.status.code == triton.status.STATUS_CODE_ERROR
    assert triton.status.message == "inference_error"


def test_tracing_is_off_without_its_variables(monkeypatch):
    from llmgateway import tracing

    assert not tracing.wanted({})
    assert not tracing.wanted({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "x"})
    assert tracing.wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
    assert tracing.wanted({"OTEL_TRACES_EXPORTER": "console"})
    # The test process itself never traces: nothing is imported or exported here.
    assert not tracing.enabled and tracing.grpc_metadata() is None
