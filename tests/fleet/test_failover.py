"""A Triton dies under load: what had not produced output moves to another Triton, what
was streaming ends with an error event; every request is logged once."""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
import uuid
from dataclasses import dataclass, field

import httpx
import pytest

from accounts.models import RequestLog
from tests.accounts.conftest import wait_for_logs
from tests.api.test_metrics import scrape, value
from tests.fleet.conftest import chat, wait_until

pytestmark = pytest.mark.committed_db

# Six requests per Triton: enough that the victim soon holds one of each case at once
# (with 8 the wait ran from 1 s to over a minute, and CI once gave up at 60 s).
CONCURRENCY = 18
TOKENS = 12
# What each kind asks for (stream?, prompt, tokens): 12 tokens 50 ms apart (output from
# 50 ms on, whole at ~600 ms), or 2 tokens 600 ms apart (no output for the first 600 ms).
# max_tokens is the token count: every complete answer ends with finish_reason "length".
KINDS = {
    "whole": (False, f"[[long:{TOKENS}]][[delay:50]]", TOKENS),
    "stream": (True, f"[[long:{TOKENS}]][[delay:50]]", TOKENS),
    "late": (True, "[[long:2]][[delay:600]]", 2),
}


@dataclass
class Outcome:
    kind: str
    status: int = 0
    text: str = ""
    error: dict | None = None
    done: bool = False
    finish_reason: str | None = None
    completion_tokens: int | None = None
    events: list[str] = field(default_factory=list)


class Load:
    """CONCURRENCY clients sending the kinds in turn until stopped, in a thread of their own."""

    def __init__(self, gateway, prefix: str) -> None:
        self.gateway = gateway
        self.prefix = prefix
        self.outcomes: dict[str, Outcome] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()))

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(60)

    def kind(self, request_id: str) -> str | None:
        outcome = self.outcomes.get(request_id)
        return outcome.kind if outcome else None

    async def _run(self) -> None:
        headers = {"authorization": f"Bearer {self.gateway.api_key}"}
        async with httpx.AsyncClient(base_url=self.gateway.url, timeout=30, headers=headers) as c:
            await asyncio.gather(*(self._worker(c, w) for w in range(CONCURRENCY)))

    async def _worker(self, client: httpx.AsyncClient, worker: int) -> None:
        # Kinds drawn at random, not in turn: in turn, the workers (each request ~600 ms)
        # fell into step with the balancer's ties, and the victim could go on getting
        # the same kinds for most of a minute before holding one of each.
        kinds = list(KINDS)
        draw = random.Random(f"{self.prefix}-{worker}")
        sent = 0
        while not self._stop.is_set():
            kind = draw.choice(kinds)
            request_id = f"{self.prefix}-{worker}-{sent}"
            sent += 1
            outcome = self.outcomes[request_id] = Outcome(kind)
            stream, content, tokens = KINDS[kind]
            body = chat(content, stream=stream, max_tokens=tokens)
            if stream:
                body["stream_options"] = {"include_usage": True}
            async with client.stream(
                "POST", "/v1/chat/completions", json=body, headers={"x-request-id": request_id}
            ) as response:
                outcome.status = response.status_code
                if not stream or response.status_code != 200:
                    _read_whole(outcome, json.loads(await response.aread()))
                    continue
                async for line in response.aiter_lines():
                    if line.startswith("data: "):
                        _read_event(outcome, line[6:])


def _read_whole(outcome: Outcome, body: dict) -> None:
    if "error" in body:
        outcome.error = body["error"]
        return
    outcome.text = body["choices"][0]["message"]["content"]
    outcome.finish_reason = body["choices"][0]["finish_reason"]
    outcome.completion_tokens = body["usage"]["completion_tokens"]


def _read_event(outcome: Outcome, data: str) -> None:
    outcome.events.append(data)
    if data == "[DONE]":
        outcome.done = True
        return
    chunk = json.loads(data)
    if "error" in chunk:
        outcome.error = chunk["error"]
        return
    if chunk.get("usage"):
        outcome.completion_tokens = chunk["usage"]["completion_tokens"]
    for choice in chunk.get("choices", []):
        outcome.text += choice["delta"].get("content") or ""
        outcome.finish_reason = choice.get("finish_reason") or outcome.finish_reason


def _unfinished(server, load: Load) -> dict[str, float]:
    """Requests of this load that started on `server` and have not finished there:
    request id → when they started."""
    started, ended = {}, set()
    for event in server.events():
        request_id = event.get("request_id", "")
        if load.kind(request_id) is None:
            continue
        if event["event"] == "start":
            started[request_id] = event["time"]
        elif event["event"] in ("finished", "cancelled"):
            ended.add(request_id)
    return {rid: at for rid, at in started.items() if rid not in ended}


def _ready_to_kill(server, load: Load) -> dict[str, float] | None:
    """The victim's requests in flight, once they include one of each case: a whole answer
    under way, a stream that has output (and 150 ms to go), one that has none yet."""
    now = time.time()
    running = _unfinished(server, load)
    ages = {rid: now - at for rid, at in running.items()}
    cases = [
        any(load.kind(r) == "whole" and 0.05 < age < 0.5 for r, age in ages.items()),
        any(load.kind(r) == "stream" and 0.15 < age < 0.5 for r, age in ages.items()),
        any(load.kind(r) == "late" and age < 0.45 for r, age in ages.items()),
    ]
    return running if all(cases) else None


def _started_elsewhere(fleet, victim, request_id: str) -> bool:
    return any(
        e["event"] == "start" and e.get("request_id") == request_id
        for server in fleet.servers
        if server is not victim
        for e in server.events()
    )


@pytest.mark.usefixtures("committed")
def test_a_triton_killed_under_load(fleet_restored, fleet_gateway):
    fleet = fleet_restored
    victim = fleet.servers[1]
    victim_label = victim.grpc_url
    failovers_before = value(
        scrape(fleet_gateway.url), "llmgateway_triton_failovers_total", endpoint=victim_label
    )
    prefix = f"kill-{uuid.uuid4().hex[:6]}"
    with Load(fleet_gateway, prefix) as load:
        in_flight = wait_until(
            lambda: _ready_to_kill(victim, load), timeout=60, interval=0.01, what="the cases"
        )
        fleet.kill(1)
        in_flight = _unfinished(victim, load)  # what was running when it died
        time.sleep(1.5)  # the load goes on without it
    outcomes = load.outcomes
    # What each streamed kind says when it runs to the end.
    reference = {
        kind: next(o.text for o in outcomes.values() if o.kind == kind and o.done and not o.error)
        for kind, (stream, _, _) in KINDS.items()
        if stream
    }

    errored = {rid for rid, o in outcomes.items() if o.error is not None}
    # Streams already sending from the dead Triton, and only those, end in an error event:
    # each errored one was on the victim, had output (a strict prefix of the whole
    # answer: nothing repeated) and was not sent anywhere else; every other request the
    # victim held moved (below) and gave its whole answer once. (Which streams had output
    # at the kill cannot be read from their final text: a stream that moved has output
    # from its new Triton by the end.)
    assert errored and errored <= set(in_flight), (errored, set(in_flight))
    assert "stream" in {load.kind(rid) for rid in errored}, errored
    for rid in errored:
        outcome = outcomes[rid]
        assert outcome.status == 200 and outcome.done and outcome.events[-1] == "[DONE]"
        assert outcome.error["code"] == "service_unavailable"
        full = reference[outcome.kind]
        assert outcome.text and full.startswith(outcome.text) and outcome.text != full
        assert not _started_elsewhere(fleet, victim, rid), rid
    # Everything else is a normal answer, those caught on the dead Triton included.
    for rid, outcome in outcomes.items():
        if rid in errored or (outcome.status == 0 and not outcome.events):
            continue  # the last requests, cut short when the load stopped
        assert outcome.status == 200, (rid, outcome)
        assert outcome.finish_reason == "length", (rid, outcome)
        assert outcome.completion_tokens == KINDS[outcome.kind][2], (rid, outcome)
    moved = set(in_flight) - errored
    assert {load.kind(rid) for rid in moved} >= {"whole", "late"}
    for rid in moved:
        assert _started_elsewhere(fleet, victim, rid), rid
        assert outcomes[rid].status == 200 and outcomes[rid].error is None
        if outcomes[rid].kind in reference:
            assert outcomes[rid].text == reference[outcomes[rid].kind]

    # One log row per request, the error streams as 503s; the moved ones billed once.
    sent = [rid for rid, o in outcomes.items() if o.status]
    rows = RequestLog.objects.filter(request_id__startswith=prefix + "-")
    logged = wait_for_logs(lambda: rows.filter(request_id__in=sent).count(), len(sent))
    missing = set(sent) - set(rows.values_list("request_id", flat=True))
    assert logged == len(sent), [(rid, outcomes[rid]) for rid in missing]
    by_id = {row.request_id: row for row in rows.filter(request_id__in=sent)}
    assert len(by_id) == len(sent)
    for rid in errored:
        assert (by_id[rid].status, by_id[rid].error_type) == (503, "service_unavailable")
    for rid in moved:
        assert by_id[rid].status == 200
        assert by_id[rid].completion_tokens == outcomes[rid].completion_tokens

    samples = scrape(fleet_gateway.url)
    failovers = value(samples, "llmgateway_triton_failovers_total", endpoint=victim_label)
    assert failovers - failovers_before >= len(moved)
    errors = value(
        samples,
        "llmgateway_triton_endpoint_errors_total",
        endpoint=victim_label,
        kind="unavailable",
    )
    assert errors >= len(in_flight)
