"""GET /metrics: Prometheus's format, what the gateway counts, and several workers."""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.api.test_openai_conformance import user
from tests.conftest import CHAT_MODEL, start_gateway, stop_gateway

CHAT = "/v1/chat/completions"


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    """Every sample: (name, sorted labels) → value."""
    response = httpx.get(url + "/metrics", timeout=10)  # no key: open, like /health
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def settled(url: str, name: str, labels: dict, at_least: float) -> dict:
    """A scrape once `name{labels}` reached `at_least` (streams settle after their last
    byte is sent), or the last one after 5 s."""
    deadline = time.monotonic() + 5
    while True:
        samples = scrape(url)
        if value(samples, name, **labels) >= at_least or time.monotonic() > deadline:
            return samples
        time.sleep(0.05)


def test_generations_tokens_and_responses_are_counted(live_gateway, http):
    url = live_gateway.url
    model = {"model": CHAT_MODEL}
    done = {**model, "stream": "false", "status": "200"}
    done_streamed = {**done, "stream": "true"}
    before = scrape(url)
    whole = http.post(CHAT, json={**model, "messages": user("[[say:counted]]")}).json()
    streamed = http.post(CHAT, json={**model, "messages": user("[[say:counted]]"), "stream": True})
    assert streamed.status_code == 200
    http.post(CHAT, json={"model": "no-such-model", "messages": user("hi")})
    target = value(before, "llmgateway_generations_total", **done_streamed) + 1
    after = settled(url, "llmgateway_generations_total", done_streamed, target)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("llmgateway_generations_total", **done) == 1
    assert grew("llmgateway_generations_total", **done_streamed) == 1
    # The same request twice, streamed and not: the usage the response reported, twice.
    assert (
        grew("llmgateway_completion_tokens_total", **model)
        == 2 * (whole["usage"]["completion_tokens"])
    )
    assert grew("llmgateway_prompt_tokens_total", **model) == 2 * whole["usage"]["prompt_tokens"]
    assert grew("llmgateway_time_to_first_token_seconds_count", **model) == 2
    assert grew("llmgateway_generation_duration_seconds_count", **model) == 2
    route = {"method": "POST", "route": "/v1/chat/completions"}
    assert grew("llmgateway_http_requests_total", **route, status="200") == 2
    # An unknown model is refused before Triton: a response, no generation.
    assert grew("llmgateway_http_requests_total", **route, status="404") == 1
    assert grew("llmgateway_http_response_start_seconds_count", route=route["route"]) == 3


def test_a_client_that_leaves_is_a_499_generation(live_gateway, http):
    url = live_gateway.url
    labels = {"model": CHAT_MODEL, "stream": "true", "status": "499"}
    before = value(scrape(url), "llmgateway_generations_total", **labels)
    body = {"model": CHAT_MODEL, "messages": user("[[delay:50]][[long:200]]"), "stream": True}
    with http.stream("POST", CHAT, json=body) as response:
        for _ in response.iter_lines():
            break  # the first chunk, then hang up
    after = settled(url, "llmgateway_generations_total", labels, before + 1)
    assert value(after, "llmgateway_generations_total", **labels) == before + 1


def test_unknown_paths_and_methods_are_one_label_each(live_gateway):
    """What a client makes up cannot grow the label values without bound."""
    before = scrape(live_gateway.url)
    for path in ("/nope/1", "/nope/2", "/v1/nope"):
        assert httpx.get(live_gateway.url + path).status_code == 404
    for method in ("PROPFIND", "TRACE"):  # the server lets through the methods it knows
        assert httpx.request(method, live_gateway.url + "/v1/models").status_code == 405
    after = scrape(live_gateway.url)
    for labels, count in (
        ({"method": "GET", "route": "unmatched", "status": "404"}, 3),
        ({"method": "other", "route": "/v1/models", "status": "405"}, 2),
    ):
        grew = value(after, "llmgateway_http_requests_total", **labels)
        assert grew - value(before, "llmgateway_http_requests_total", **labels) == count
    assert not [key for key in after if ("method", "PROPFIND") in key[1]]


def test_metrics_can_be_turned_off(tmp_path, model_configs):
    gateway = start_gateway(tmp_path, {"METRICS_ENABLED": "false"})
    try:
        response = httpx.get(gateway.url + "/metrics")
        assert response.status_code == 404
        assert response.json()["error"]["type"] == "invalid_request_error"
    finally:
        stop_gateway(gateway)


def test_processes_sharing_the_directory_report_together(tmp_path, model_configs, owner_key):
    """As `serve --workers N` runs them: each process counts in PROMETHEUS_MULTIPROC_DIR,
    and any one's /metrics reads them all. Two gateway processes share a directory here,
    so which one served which request is known."""
    from llmgateway import metrics

    directory = tmp_path / "metrics"
    directory.mkdir()
    (directory / "counter_1.db").write_bytes(b"stale")  # a previous run's
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(metrics.MULTIPROC_ENV, str(directory))
        metrics.multiprocess_prepare(2)
    assert not list(directory.iterdir())
    env = {metrics.MULTIPROC_ENV: str(directory)}
    gateways = [start_gateway(tmp_path, env, api_key=owner_key) for _ in range(2)]
    try:
        for gateway, count in zip(gateways, (5, 7), strict=True):
            with gateway.client() as client:
                for _ in range(count):
                    body = {"model": CHAT_MODEL, "messages": user("[[say:w]]")}
                    assert client.post(CHAT, json=body).status_code == 200
        assert {p.name.split("_")[0] for p in directory.iterdir()} >= {"counter", "histogram"}
        labels = {"model": CHAT_MODEL, "stream": "false", "status": "200"}
        for gateway in gateways:
            samples = scrape(gateway.url)
            assert value(samples, "llmgateway_generations_total", **labels) == 12
            assert (
                value(samples, "llmgateway_generation_duration_seconds_count", model=CHAT_MODEL)
                == 12
            )
            # One build_info (the highest over the processes, not one per pid); requests
            # in flight summed over the live processes: this scrape alone.
            assert len([k for k in samples if k[0] == "llmgateway_build_info"]) == 1
            assert value(samples, "llmgateway_http_requests_in_flight", route="/metrics") == 1
            assert value(samples, "llmgateway_queue_wait_seconds_count", model=CHAT_MODEL) == 12
    finally:
        for gateway in gateways:
            stop_gateway(gateway)


def test_serve_gives_several_workers_a_fresh_directory(monkeypatch):
    from llmgateway import metrics

    monkeypatch.delenv(metrics.MULTIPROC_ENV, raising=False)
    metrics.multiprocess_prepare(1)  # one worker: values stay in the process
    assert metrics.MULTIPROC_ENV not in os.environ
    metrics.multiprocess_prepare(3)
    assert Path(os.environ[metrics.MULTIPROC_ENV]).is_dir()


def test_nothing_is_counted_with_metrics_off(settings):
    from prometheus_client import REGISTRY

    from llmgateway import metrics

    def count() -> float:
        labels = {"model": "off-test", "stream": "false", "status": "200"}
        return REGISTRY.get_sample_value("llmgateway_generations_total", labels) or 0.0

    settled = dict(
        model="off-test",
        streamed=False,
        status=200,
        prompt_tokens=3,
        completion_tokens=2,
        time_to_first_token=0.01,
        duration=0.02,
    )
    settings.METRICS_ENABLED = False
    metrics.generation_settled(**settled)
    assert count() == 0
    settings.METRICS_ENABLED = True
    metrics.generation_settled(**settled)
    assert count() == 1


def test_a_metrics_token_is_asked_for_when_set(tmp_path, model_configs):
    gateway = start_gateway(tmp_path, {"METRICS_TOKEN": "s3cret"})
    try:
        for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": "s3cret"}):
            response = httpx.get(gateway.url + "/metrics", headers=headers)
            assert response.status_code == 401
            assert response.json()["error"]["code"] == "invalid_api_key"
        response = httpx.get(gateway.url + "/metrics", headers={"authorization": "Bearer s3cret"})
        assert response.status_code == 200
        assert "llmgateway_http_requests_total" in response.text
    finally:
        stop_gateway(gateway)


def test_waits_time_per_token_and_build_info(live_gateway, http):
    import platform

    import django

    url = live_gateway.url
    model = {"model": CHAT_MODEL}
    before = scrape(url)
    body = {**model, "messages": user("[[delay:20]][[long:6]]"), "stream": True}
    assert http.post(CHAT, json=body).status_code == 200
    labels = {**model, "stream": "true", "status": "200"}
    target = value(before, "llmgateway_generations_total", **labels) + 1
    after = settled(url, "llmgateway_generations_total", labels, target)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("llmgateway_time_per_output_token_seconds_count", **model) == 1
    # 20 ms between tokens: the mean is about that (bucketed: at most 30 ms here).
    per_token = grew("llmgateway_time_per_output_token_seconds_sum", **model)
    assert 0.015 < per_token < 0.2
    assert grew("llmgateway_time_per_output_token_seconds_bucket", **model, le="0.01") == 0
    assert grew("llmgateway_admission_wait_seconds_count", **model) == 1
    assert grew("llmgateway_queue_wait_seconds_count", **model) == 1
    # The queue wait holds the admission's.
    assert grew("llmgateway_queue_wait_seconds_sum", **model) >= grew(
        "llmgateway_admission_wait_seconds_sum", **model
    )
    (build,) = [key for key in after if key[0] == "llmgateway_build_info"]
    labels = dict(build[1])
    assert labels["python"] == platform.python_version()
    assert labels["django"] == django.get_version()
    assert labels["version"]
    assert after[build] == 1


def test_requests_in_flight_by_route(live_gateway, http):
    import threading

    url = live_gateway.url
    gauge = "llmgateway_http_requests_in_flight"
    route = {"route": "/v1/chat/completions"}
    assert value(scrape(url), gauge, **route) == 0
    body = {"model": CHAT_MODEL, "messages": user("[[delay:100]][[long:20]]"), "stream": True}
    first_chunk = threading.Event()

    def stream() -> None:
        with http.stream("POST", CHAT, json=body) as response:
            for _ in response.iter_lines():
                first_chunk.set()

    thread = threading.Thread(target=stream)
    thread.start()
    try:
        assert first_chunk.wait(10)
        during = scrape(url)
        assert value(during, gauge, **route) == 1
        assert value(during, gauge, route="/metrics") == 1  # the scrape itself
    finally:
        thread.join(10)
    deadline = time.monotonic() + 5
    while value(scrape(url), gauge, **route) != 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert value(scrape(url), gauge, **route) == 0
