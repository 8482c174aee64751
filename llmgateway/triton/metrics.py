"""Per-endpoint Prometheus metrics of the Triton fleet (served with the rest at /metrics).

Label values are bounded: an endpoint is its `ip:port`, and a process names at most
MAX_ENDPOINT_LABELS of them (endpoints that come and go under a headless Service get
new addresses); later ones share the value "other". Off with METRICS_ENABLED.
"""

from __future__ import annotations

from django.conf import settings
from prometheus_client import Counter, Gauge

# Distinct endpoint label values one process may create.
MAX_ENDPOINT_LABELS = 64
OTHER = "other"

IN_FLIGHT = Gauge(
    "llmgateway_triton_endpoint_in_flight",
    "Requests in flight on each Triton endpoint (all workers).",
    ["endpoint"],
    multiprocess_mode="livesum",
)
UP = Gauge(
    "llmgateway_triton_endpoint_up",
    "1 while a worker sends the endpoint traffic, 0 while it holds it down (the highest "
    "value over the workers).",
    ["endpoint"],
    multiprocess_mode="livemax",
)
ERRORS = Counter(
    "llmgateway_triton_endpoint_errors",
    "Failed Triton calls by endpoint and kind: unavailable (could not reach it, or it "
    "refused), model_not_ready, inference (the model failed the request), deadline.",
    ["endpoint", "kind"],
)
FAILOVERS = Counter(
    "llmgateway_triton_failovers",
    "Requests moved to another endpoint after this one failed them before any output.",
    ["endpoint"],
)

_labels: set[str] = set()


def endpoint_label(address: str) -> str:
    """`address`, or "other" once this process has named MAX_ENDPOINT_LABELS endpoints."""
    if address in _labels:
        return address
    if len(_labels) >= MAX_ENDPOINT_LABELS:
        return OTHER
    _labels.add(address)
    return address


class EndpointMetrics:
    """One endpoint's series, looked up once (labels() takes a lock and builds a key)."""

    __slots__ = ("label", "in_flight", "up")

    def __init__(self, address: str) -> None:
        self.label = endpoint_label(address) if settings.METRICS_ENABLED else None
        self.in_flight = IN_FLIGHT.labels(self.label) if self.label else None
        self.up = UP.labels(self.label) if self.label else None

    def error(self, kind: str) -> None:
        if self.label:
            ERRORS.labels(self.label, kind).inc()

    def failover(self) -> None:
        if self.label:
            FAILOVERS.labels(self.label).inc()

    def set_up(self, up: bool) -> None:
        if self.up is not None:
            self.up.set(1 if up else 0)
