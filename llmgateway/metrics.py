"""Prometheus metrics, served at GET /metrics (settings.METRICS_ENABLED; off, nothing
is counted either).

Two layers:
- HTTP: every response, by method, route and status (429s and other refusals
  included), and the time until the response starts (its headers: for a stream,
  before the first token);
- generations: each one that reached Triton, by model, settled however it ended
  (status 499 when the client left), with its tokens, time to first token, time per
  output token and duration. Recorded in `Run.settle` (runner/lifecycle.py), so a
  stream counts when it ends;
- the gateway's own waits before a generation reaches Triton: admission (the quota
  store's decision) and the whole queue wait (arrival to Triton: body, prompt,
  admission, images);
- requests in flight by route, and `llmgateway_build_info` (version, Python, Django).

Under several uvicorn workers (`serve --workers N`) each worker is a process of its
own: `serve` points PROMETHEUS_MULTIPROC_DIR at a fresh directory before they start,
prometheus_client's multiprocess mode keeps each worker's values there, and a scrape
of any worker reads them all. Without it (one worker, runserver, tests) the values
live in the process.

Label values are bounded: routes are the URLconf's patterns (unknown paths are
"unmatched"), methods HTTP's own (any other is "other"), models the configured ones.
"""

from __future__ import annotations

import asyncio
import os
import platform
import time
from importlib import metadata

import django
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, multiprocess
from prometheus_client.exposition import choose_encoder

from llmgateway.context import request_context
from llmgateway.paths import route_match

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# A client may send any method name; the rest are one label value.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Seconds. Time to first token and responses starting: 5 ms to 30 s.
FAST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
# Whole generations: up to GATEWAY_REQUEST_TIMEOUT (600 s).
SLOW_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
# The gateway's own waits (admission, queue): 0.5 ms to 10 s.
WAIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10)
# Seconds per generated token after the first: 1 ms (a fast small model) to 1 s.
TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1)

HTTP_REQUESTS = Counter(
    "llmgateway_http_requests",
    "HTTP responses, by method, route and status.",
    ["method", "route", "status"],
)
HTTP_STARTED = Histogram(
    "llmgateway_http_response_start_seconds",
    "Time from the request to its response starting (headers; for a stream, before "
    "its first token).",
    ["route"],
    buckets=FAST_BUCKETS,
)
GENERATIONS = Counter(
    "llmgateway_generations",
    "Generations sent to Triton, by model, stream or not, and the status they ended "
    "with (499: the client went away; Triton's work was cancelled).",
    ["model", "stream", "status"],
)
PROMPT_TOKENS = Counter("llmgateway_prompt_tokens", "Prompt tokens, by model.", ["model"])
COMPLETION_TOKENS = Counter(
    "llmgateway_completion_tokens",
    "Generated tokens, by model (those of cancelled generations included).",
    ["model"],
)
TIME_TO_FIRST_TOKEN = Histogram(
    "llmgateway_time_to_first_token_seconds",
    "Time from the request to its first generated token, by model.",
    ["model"],
    buckets=FAST_BUCKETS,
)
GENERATION_SECONDS = Histogram(
    "llmgateway_generation_duration_seconds",
    "Time from the request to its generation's end, by model.",
    ["model"],
    buckets=SLOW_BUCKETS,
)

TIME_PER_OUTPUT_TOKEN = Histogram(
    "llmgateway_time_per_output_token_seconds",
    "Time between generated tokens after the first, per generation of two tokens or more "
    "a choice (its duration after the first token over a choice's other tokens), by model.",
    ["model"],
    buckets=TOKEN_BUCKETS,
)
ADMISSION_WAIT = Histogram(
    "llmgateway_admission_wait_seconds",
    "Time the quota store took to admit or refuse a request with a key, by model.",
    ["model"],
    buckets=WAIT_BUCKETS,
)
QUEUE_WAIT = Histogram(
    "llmgateway_queue_wait_seconds",
    "Time from a request's arrival to its generation being sent to Triton (body, "
    "prompt, admission, images), by model.",
    ["model"],
    buckets=WAIT_BUCKETS,
)
IN_FLIGHT = Gauge(
    "llmgateway_http_requests_in_flight",
    "HTTP requests being served, by route (all workers; a stream until its last byte).",
    ["route"],
    multiprocess_mode="livesum",
)
QUOTA_STORE_ERRORS = Counter(
    "llmgateway_quota_store_errors",
    "Requests answered 503 because the quota store (store: redis, or database without "
    "REDIS_URL) failed while admitting them.",
    ["store"],
)
STORE_UP = Gauge(
    "llmgateway_store_up",
    "1 if the store (database; redis when REDIS_URL is set) answered the last readiness "
    "check (/health/ready), 0 if not (the lowest value over the workers).",
    ["store"],
    multiprocess_mode="livemin",
)
BUILD_INFO = Gauge(
    "llmgateway_build_info",
    "Always 1: the gateway's version and the Python and Django it runs on.",
    ["version", "python", "django"],
    multiprocess_mode="max",
)


def _version() -> str:
    try:
        return metadata.version("llmgateway")
    except metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


BUILD_INFO.labels(_version(), platform.python_version(), django.get_version()).set(1)

# Seconds an event loop woke up late: 1 ms to 5 s.
LAG_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5)
LOOP_LAG = Histogram(
    "llmgateway_event_loop_lag_seconds",
    "How late the event loop ran a task that slept LOOP_LAG_PROBE_MS: work holding the "
    "loop (a long prompt tokenized on it would show here). Only with LOOP_LAG_PROBE_MS.",
    buckets=LAG_BUCKETS,
)
LOOP_HELD = Histogram(
    "llmgateway_event_loop_held_seconds",
    "CPU time the event loop's thread spent between two wake-ups of the LOOP_LAG_PROBE_MS "
    "task: how long work on the loop held it. Unlike the lag, a process waiting for a "
    "CPU (a busy machine) does not count. Only with LOOP_LAG_PROBE_MS.",
    buckets=LAG_BUCKETS,
)

# Labelled children, looked up once: labels() takes a lock and builds a key each call.
_children: dict[tuple, object] = {}


def _child(metric, *labels: str):
    key = (metric, labels)
    child = _children.get(key)
    if child is None:
        child = _children[key] = metric.labels(*labels)
    return child


def route_of(path: str) -> str:
    """The URLconf pattern serving `path` ("/v1/models/<model_id>"), or "unmatched"."""
    match = route_match(path)
    return "/" + match.route if match is not None else "unmatched"


def http_answered(request: HttpRequest, response: HttpResponse) -> None:
    if not settings.METRICS_ENABLED:
        return
    context = request_context(request)
    route = context.route  # route_of(request.path), found when the request began
    method = request.method if request.method in METHODS else "other"
    _child(HTTP_REQUESTS, method, route, str(response.status_code)).inc()
    _child(HTTP_STARTED, route).observe(time.monotonic() - context.started)


def in_flight(route: str):
    """Count a request of `route` in flight; returns the gauge to dec() when it ends
    (None with metrics off)."""
    if not settings.METRICS_ENABLED:
        return None
    gauge = _child(IN_FLIGHT, route)
    gauge.inc()
    return gauge


def quota_store_failed() -> None:
    if settings.METRICS_ENABLED:
        _child(QUOTA_STORE_ERRORS, "redis" if settings.REDIS_URL else "database").inc()


def stores_checked(status: dict[str, str]) -> None:
    """The readiness check's {"database": "ok" | "unavailable", "redis": ...}."""
    if settings.METRICS_ENABLED:
        for store, state in status.items():
            _child(STORE_UP, store).set(1 if state == "ok" else 0)


def admission_waited(model: str, seconds: float) -> None:
    if settings.METRICS_ENABLED:
        _child(ADMISSION_WAIT, model).observe(seconds)


def queue_waited(model: str, seconds: float) -> None:
    if settings.METRICS_ENABLED:
        _child(QUEUE_WAIT, model).observe(seconds)


def generation_settled(
    *,
    model: str,
    streamed: bool,
    status: int,
    prompt_tokens: int,
    completion_tokens: int,
    time_to_first_token: float | None,
    duration: float,
    choices: int = 1,
) -> None:
    if not settings.METRICS_ENABLED:
        return
    _child(GENERATIONS, model, "true" if streamed else "false", str(status)).inc()
    _child(PROMPT_TOKENS, model).inc(prompt_tokens)
    _child(COMPLETION_TOKENS, model).inc(completion_tokens)
    if time_to_first_token is not None:
        _child(TIME_TO_FIRST_TOKEN, model).observe(time_to_first_token)
        # Choices are generated side by side: a choice's tokens, not all of them.
        tokens = completion_tokens / max(choices, 1)
        if tokens > 1:
            per_token = (duration - time_to_first_token) / (tokens - 1)
            _child(TIME_PER_OUTPUT_TOKEN, model).observe(per_token)
    _child(GENERATION_SECONDS, model).observe(duration)


async def exposition(request: HttpRequest) -> HttpResponse:
    """Every metric, all workers' under multiprocess mode, in the format the scraper's
    Accept asks for (Prometheus's text format, or OpenMetrics).

    Written in a thread: reading every worker's files and formatting each sample takes
    ~5 ms for this gateway's ~180 samples on a 2-core VM, and more with more models and
    workers, which on the event loop would hold up every stream of the worker once per
    scrape."""
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    encoder, content_type = choose_encoder(request.META.get("HTTP_ACCEPT", ""))
    return HttpResponse(await asyncio.to_thread(encoder, registry), content_type=content_type)


def process_exiting() -> None:
    """A worker stopping (lifespan shutdown): under multiprocess mode its "live" gauges
    (in flight, store and endpoint states) leave the sums and minimums now, rather than
    holding their last values until the next start clears the directory."""
    if os.environ.get(MULTIPROC_ENV):
        multiprocess.mark_process_dead(os.getpid())


def multiprocess_prepare(workers: int) -> None:
    """Before `workers` (> 1) uvicorn workers start: a fresh directory for their values.

    An operator's PROMETHEUS_MULTIPROC_DIR is used, emptied of the last run's files
    (prometheus_client requires it); otherwise a new temporary one.
    """
    if workers <= 1:
        return
    directory = os.environ.get(MULTIPROC_ENV)
    if directory:
        os.makedirs(directory, exist_ok=True)
        for name in os.listdir(directory):
            if name.endswith(".db"):
                os.remove(os.path.join(directory, name))
    else:
        import tempfile  # noqa: PLC0415

        os.environ[MULTIPROC_ENV] = tempfile.mkdtemp(prefix="llmgateway-metrics-")


async def loop_lag_probe(interval: float) -> None:
    """Sleep `interval` seconds, over and over, and record how much later than asked
    each wake-up came (wall time: anything holding the loop up, or the process waiting
    for a CPU), and how much CPU the loop's thread spent in between (work on the loop
    only)."""
    loop = asyncio.get_running_loop()
    thread_time = time.thread_time
    while True:
        asked = loop.time() + interval
        cpu = thread_time()
        await asyncio.sleep(interval)
        LOOP_LAG.observe(max(loop.time() - asked, 0.0))
        LOOP_HELD.observe(thread_time() - cpu)


def loop_lag_probe_start() -> asyncio.Task | None:
    """Start the probe on the running loop when LOOP_LAG_PROBE_MS asks for it (and
    metrics are on); the caller cancels the task at shutdown."""
    interval = settings.LOOP_LAG_PROBE_MS / 1000
    if interval <= 0 or not settings.METRICS_ENABLED:
        return None
    return asyncio.get_running_loop().create_task(loop_lag_probe(interval))
