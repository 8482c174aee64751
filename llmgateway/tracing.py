"""OpenTelemetry tracing: off unless OTEL_EXPORTER_OTLP_ENDPOINT (or
OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, or OTEL_TRACES_EXPORTER) is set.

On, each HTTP request is a server span (opentelemetry-instrumentation-asgi around the
ASGI application, joining a caller's `traceparent`), and the runner adds its phases as
children: `prepare` (prompt rendering and tokenization), `admission` (the quota store)
and `triton` (the generation, from its request to its end, with a `first_token` event).
The gRPC call to Triton carries the trace context as `traceparent` metadata, so a
Triton started with `--trace-config mode=opentelemetry` continues the trace. Log lines
carry `trace_id` and `span_id` (llmgateway/logconfig.py).

Spans go to an OTLP/HTTP collector through the SDK's batch processor: the standard
OTEL_* variables apply (endpoint, headers, OTEL_SERVICE_NAME, OTEL_BSP_*).
OTEL_TRACES_EXPORTER=console prints them instead; `none` turns tracing off.

Why ASGI's instrumentation and not Django's or gRPC's: Django's ends its span when the
view returns, before a stream's body is sent; gRPC's would wrap every call on Triton's
channels, the readiness probes every two seconds included, while one call per generation
needs the context, injected where it is made (`grpc_metadata`, read by engine.py).

The packages are the optional `otel` extra (in the image and the test extra): off, this
module imports none of them, and each hook below costs one attribute test.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from typing import Any

from django.core.exceptions import ImproperlyConfigured

from llmgateway import logconfig

# Set by `setup`; read by the runner and the engine before doing any tracing work.
enabled = False
_tracer: Any = None
_provider: Any = None


def wanted(environ: dict[str, str] | os._Environ = os.environ) -> bool:
    exporter = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter == "none":
        return False
    return bool(
        exporter
        or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def setup() -> bool:
    """Start tracing in this process if the environment asks for it; True if on."""
    global enabled, _tracer, _provider
    if enabled or not wanted():
        return enabled
    try:
        from opentelemetry import trace  # noqa: PLC0415
        from opentelemetry.sdk.resources import Resource  # noqa: PLC0415
        from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
        from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: PLC0415
    except ImportError as exc:
        raise ImproperlyConfigured(
            "OTEL_* tracing variables are set but OpenTelemetry is not installed: "
            "pip install 'llmgateway[otel]'"
        ) from exc
    provider = TracerProvider(
        resource=Resource.create(
            {"service.name": os.environ.get("OTEL_SERVICE_NAME", "llmgateway")}
        )
    )
    provider.add_span_processor(BatchSpanProcessor(_exporter()))
    trace.set_tracer_provider(provider)
    _provider = provider
    _tracer = provider.get_tracer("llmgateway")
    logconfig.trace_ids = _current_ids
    enabled = True
    return True


def _exporter():
    name = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() or "otlp"
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter  # noqa: PLC0415

        return ConsoleSpanExporter()
    if name != "otlp":
        raise ImproperlyConfigured(f"OTEL_TRACES_EXPORTER={name!r}: use otlp, console or none")
    protocol = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get(
        "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"
    )
    if protocol != "http/protobuf":
        raise ImproperlyConfigured(
            f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r}: the gateway exports http/protobuf "
            "(OTLP/HTTP, a collector's port 4318)"
        )
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # noqa: PLC0415
        OTLPSpanExporter,
    )

    return OTLPSpanExporter()


def instrument(app: Callable) -> Callable:
    """The ASGI application, in a server span per HTTP request when tracing is on.

    No spans per ASGI message: a stream sends one per token."""
    if not enabled:
        return app
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware  # noqa: PLC0415

    return OpenTelemetryMiddleware(
        app, exclude_spans=["receive", "send"], default_span_details=_span_details
    )


def _span_details(scope: dict) -> tuple[str, dict[str, str]]:
    """ "POST /v1/chat/completions": the method and the URLconf's route (bounded), as
    OpenTelemetry's HTTP conventions name server spans."""
    from llmgateway.metrics import route_of  # noqa: PLC0415 - Django's URLconf, loaded by now

    route = route_of(scope.get("path", ""))
    method = scope.get("method", "HTTP")
    return f"{method} {route}", {"http.route": route}


def _current_ids() -> tuple[str, str] | None:
    from opentelemetry import trace  # noqa: PLC0415 - imported already by setup

    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


# What `span` and `current` return with tracing off: one reusable no-op context manager.
_NULL = contextlib.nullcontext()


def span(name: str, **attributes: Any) -> contextlib.AbstractContextManager:
    """A child span of the current one around a `with` block (a no-op when off)."""
    if not enabled:
        return _NULL
    return _tracer.start_as_current_span(name, attributes=attributes)


class PendingSpan:
    """A child of the span current when it is made, started only when `start()` is first
    called: the `triton` span begins when the generation is sent, which may be during
    admission (an early start, accounts/admission.py) or after it, and is the parent
    of Triton's own spans either way (`grpc_metadata`)."""

    __slots__ = ("name", "attributes", "parent", "span")

    def __init__(self, name: str, attributes: dict[str, Any]) -> None:
        from opentelemetry import context  # noqa: PLC0415

        self.name, self.attributes = name, attributes
        self.parent = context.get_current()
        self.span: Any = None

    def start(self) -> Any:
        if self.span is None:
            self.span = _tracer.start_span(self.name, self.parent, attributes=self.attributes)
        return self.span


def pending_span(name: str, **attributes: Any) -> PendingSpan | None:
    """A `PendingSpan` under the current span; None when tracing is off."""
    return PendingSpan(name, attributes) if enabled else None


def span_end(
    pending: PendingSpan | None,
    *,
    first_token_at: float | None = None,
    error: str | None = None,
    **attributes,
) -> None:
    """End a pending span if it started, with a `first_token` event at `first_token_at`
    (time.monotonic()) and an error status when `error` is given."""
    started = pending.span if pending is not None else None
    if started is None:
        return
    if first_token_at is not None:
        # Events take wall-clock nanoseconds; the runner measures on the monotonic clock.
        at = time.time_ns() - int((time.monotonic() - first_token_at) * 1e9)
        started.add_event("first_token", timestamp=at)
    started.set_attributes({k: v for k, v in attributes.items() if v is not None})
    if error is not None:
        from opentelemetry.trace import Status, StatusCode  # noqa: PLC0415

        started.set_status(Status(StatusCode.ERROR, error))
    started.end()


def grpc_metadata(pending: PendingSpan | None) -> tuple[tuple[str, str], ...] | None:
    """gRPC metadata (`traceparent`, `tracestate`) naming `pending` (started now if it
    was not) as the parent of what Triton does; None when tracing is off."""
    if pending is None:
        return None
    from opentelemetry import trace  # noqa: PLC0415
    from opentelemetry.propagate import inject  # noqa: PLC0415

    carrier: dict[str, str] = {}
    inject(carrier, context=trace.set_span_in_context(pending.start()))
    return tuple(carrier.items()) or None


def flush(timeout_s: float = 5.0) -> None:
    """Send the spans still batched (at shutdown)."""
    if _provider is not None:
        _provider.force_flush(int(timeout_s * 1000))
