"""OpenTelemetry tracing: a live gateway's real OTLP/HTTP exporter sends its spans to a
receiver this test runs on loopback, which decodes them (ExportTraceServiceRequest)."""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.api.test_openai_conformance import user
from tests.conftest import CHAT_MODEL, DEV_LIMITS, dev_model_upsert, start_gateway, stop_gateway

CHAT = "/v1/chat/completions"


def decode(body: bytes, content_type: str) -> ExportTraceServiceRequest:
    """OTLP/HTTP's protobuf (the Python SDK's), or its JSON (Triton's C++ exporter), where
    ids are hex strings rather than protobuf JSON's base64."""
    if not content_type.startswith("application/json"):
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        return request
    document = json.loads(body)
    for resource_spans in document.get("resourceSpans", []):
        for scope_spans in resource_spans.get("scopeSpans", []):
            for span in scope_spans.get("spans", []):
                for field in ("traceId", "spanId", "parentSpanId"):
                    if span.get(field):
                        span[field] = base64.b64encode(bytes.fromhex(span[field])).decode()
    return json_format.ParseDict(document, ExportTraceServiceRequest(), ignore_unknown_fields=True)


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
                request = decode(body, self.headers.get("content-type", ""))
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


@pytest.fixture(scope="module")
def traced_triton(receiver, model_configs, django_db_blocker, tmp_path_factory):
    """A dev Triton of its own exporting its spans (OpenTelemetry mode) to the receiver,
    served as the model "dev-chat-traced"."""
    from llmgateway.devtriton.server import DevTriton, free_port

    config = [
        "mode=opentelemetry",
        "rate=1",
        "level=TIMESTAMPS",
        f"opentelemetry,url={receiver.url}/v1/traces",
        "opentelemetry,resource=service.name=dev-triton",
        "opentelemetry,bsp_schedule_delay=50",
    ]
    server = DevTriton(
        grpc_port=free_port(),
        http_port=free_port(),
        metrics_port=free_port(),
        state_dir=tmp_path_factory.mktemp("traced-triton"),
        extra_args=[arg for item in config for arg in ("--trace-config", item)],
    )
    server.start()
    try:
        with django_db_blocker.unblock():
            dev_model_upsert("dev-chat-traced", server, **DEV_LIMITS)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def limited_key(django_db_setup, django_db_blocker) -> str:
    """A key with a token budget: its requests after an admitted one are sent to Triton
    while their admission is decided (accounts/admission.py's early start)."""
    from accounts.services import key_create, owner_get_or_create
    from tests.conftest import ISSUED_SECRETS

    with django_db_blocker.unblock():
        owner = owner_get_or_create(username="tracing")
        _, secret = key_create(
            owner=owner, name="tracing: limited", budget_tokens=10**9, budget_period="total"
        )
    ISSUED_SECRETS.append(secret)
    return secret


@pytest.mark.parametrize("limits", [False, True], ids=["no-limits", "early-start"])
def test_triton_continues_the_trace(traced, receiver, traced_triton, limited_key, limits):
    """The gRPC call carries `traceparent`: Triton's own spans (OpenTelemetry mode) are in
    the request's trace, under the gateway's `triton` span, itself under the request's
    span, also when the generation went to Triton during its admission."""
    trace_id = uuid.uuid4().bytes
    traceparent = f"00-{trace_id.hex()}-{uuid.uuid4().bytes[:8].hex()}-01"
    body = {"model": "dev-chat-traced", "messages": user("[[say:hi]]"), "stream": True}
    with traced.client(api_key=limited_key if limits else "") as client:
        if limits:  # admitted once: the next request of the key starts early
            assert client.post(CHAT, json=body).status_code == 200
        response = client.post(CHAT, json=body, headers={"traceparent": traceparent})
    assert response.status_code == 200, response.text
    spans = receiver.wait(trace_id, {"triton", "POST /v1/chat/completions", "admission"})
    ours = spans["triton"]
    assert ours.parent_span_id == spans["POST /v1/chat/completions"].span_id
    if limits:  # sent while admission was deciding: it starts inside the admission span
        assert ours.start_time_unix_nano < spans["admission"].end_time_unix_nano
    # Triton exports a request's spans in batches, a child (compute) before its parent
    # may be: until the parent arrives the child looks like a root. So wait for the
    # whole tree, each of its roots under the gateway's `triton` span.
    deadline = time.monotonic() + 15
    while True:
        with receiver.lock:
            triton_spans = [
                s
                for r, s in receiver.spans
                if r.get("service.name") == "dev-triton" and s.trace_id == trace_id
            ]
        ids = {s.span_id for s in triton_spans}
        parents = {s.parent_span_id for s in triton_spans if s.parent_span_id not in ids}
        if parents == {ours.span_id} or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert triton_spans, "Triton exported no span of the request's trace"
    assert parents == {ours.span_id}


def test_tracing_is_off_without_its_variables(monkeypatch):
    from llmgateway import tracing

    assert not tracing.wanted({})
    assert not tracing.wanted({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "x"})
    assert tracing.wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
    assert tracing.wanted({"OTEL_TRACES_EXPORTER": "console"})
    # The test process itself never traces: nothing is imported or exported here.
    assert not tracing.enabled and tracing.pending_span("triton") is None
    assert tracing.grpc_metadata(None) is None
