"""Projects: limits shared by a project's keys, per-model limits, money budgets and costs.

In process against both stores, then end to end: 150 concurrent requests from three
keys of one project, spread over two gateway processes, on each store.
"""

from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal

import httpx
import pytest
from asgiref.sync import async_to_sync, sync_to_async

from accounts.models import Project, ProjectModelLimit, RequestLog
from accounts.quota import Verdict
from llmgateway.accounting import MONEY_SCALE, Prices, Usage, money_amount, money_units
from tests.accounts.conftest import BACKENDS, bearer, record, redis_env, wait_for_logs
from tests.accounts.test_stores import log
from tests.conftest import CHAT_MODEL

pytestmark = pytest.mark.committed_db

REQUESTS = 150


def project_make(**limits) -> Project:
    return Project.objects.create(name=f"team {uuid.uuid4().hex[:6]}", **limits)


def keys_in(make_key, project: Project, count: int = 3, **limits):
    return [make_key(project=project, **limits) for _ in range(count)]


# ---- prices --------------------------------------------------------------------------------


def test_cost_is_exact_decimal_including_cached_tokens():
    prices = Prices(input=Decimal("2.5"), output=Decimal("10"), cached_input=Decimal("1.25"))
    usage = Usage(prompt_tokens=1003, completion_tokens=77, cached_tokens=500)
    expected = (503 * Decimal("2.5") + 500 * Decimal("1.25") + 77 * Decimal(10)) / 10**6
    assert prices.cost(usage) == expected == Decimal("0.0026525")
    # Integer money units round-trip exactly; the most a request costs bounds its cost.
    assert money_amount(money_units(prices.cost(usage))) == prices.cost(usage)
    assert prices.most(1003, 77) >= prices.cost(usage)
    assert Prices(input=Decimal("0.0001"), output=Decimal(0)).cost(Usage(1, 0)) * MONEY_SCALE == 1


# ---- in process, both stores ---------------------------------------------------------------


async def _run(store, key, subjects, reserve: int, used: int, cost: int = 0, spent: int = 0):
    decision = await store.reserve(key, reserve, subjects=subjects, cost=cost)
    if decision.verdict is not Verdict.OK:
        return decision, 0, 0
    await asyncio.sleep(0.001)
    await store.settle(key, decision.lease_id, used, log(), subjects=subjects, cost=spent)
    return decision, used, spent


async def test_a_project_budget_binds_all_its_keys_together(store, make_key):
    project = await sync_to_async(project_make)(budget_tokens=1000, budget_period="day")
    made = await sync_to_async(keys_in)(make_key, project)
    keys = [await sync_to_async(record)(k) for k, _ in made]
    work = [_run(store, key, key.subjects(CHAT_MODEL), 40, 25) for _ in range(40) for key in keys]
    results = await asyncio.gather(*work)
    served = sum(used for _, used, _ in results)
    assert 0 < served <= 1000
    assert {d.verdict for d, _, _ in results} == {Verdict.OK, Verdict.BUDGET}
    refused = [d for d, _, _ in results if d.verdict is Verdict.BUDGET]
    assert {d.subject.scope for d in refused} == {"project"}
    project_subject = keys[0].subjects(CHAT_MODEL)[0]
    assert project_subject.scope == "project"
    snapshot = await store.snapshot(keys[0], project_subject)
    assert snapshot.budget_used == served and snapshot.leases == 0


async def test_a_money_budget_reserves_the_most_and_settles_the_cost(store, make_key):
    budget = Decimal("0.01")
    project = await sync_to_async(project_make)(budget_amount=budget, budget_period="total")
    made = await sync_to_async(keys_in)(make_key, project)
    keys = [await sync_to_async(record)(k) for k, _ in made]
    most, spent = money_units(Decimal("0.0004")), money_units(Decimal("0.00025"))
    work = [
        _run(store, key, key.subjects(), 10, 5, cost=most, spent=spent)
        for _ in range(30)
        for key in keys
    ]
    results = await asyncio.gather(*work)
    charged = sum(s for _, _, s in results)
    assert 0 < charged <= money_units(budget)
    assert Verdict.MONEY in {d.verdict for d, _, _ in results}
    snapshot = await store.snapshot(keys[0], keys[0].subjects()[0])
    assert snapshot.money_used == charged and snapshot.leases == 0


async def test_per_model_limits_of_key_and_project(store, make_key):
    def setup():
        project = project_make(rpm_limit=100)
        ProjectModelLimit.objects.create(project=project, model=CHAT_MODEL, rpm_limit=4)
        key, _ = make_key(project=project, rpm_limit=50, model_limits={"other": (None, 30)})
        return record(key)

    key = await sync_to_async(setup)()
    assert [s.name.split(":", 1)[-1] for s in key.subjects("other")][1] == "m:other"
    # The project's limit for CHAT_MODEL: four, then refused, by the project for that model.
    for _ in range(4):
        assert (
            await store.reserve(key, 1, subjects=key.subjects(CHAT_MODEL))
        ).verdict is Verdict.OK
    refused = await store.reserve(key, 1, subjects=key.subjects(CHAT_MODEL))
    assert refused.verdict is Verdict.REQUESTS
    assert (refused.subject.scope, refused.subject.model) == ("project", CHAT_MODEL)
    # Another model is not held back by it; the key's tpm for "other" is.
    assert (await store.reserve(key, 20, subjects=key.subjects("other"))).verdict is Verdict.OK
    refused = await store.reserve(key, 20, subjects=key.subjects("other"))
    assert refused.verdict is Verdict.TOKENS
    assert (refused.subject.scope, refused.subject.model) == ("key", "other")


def test_headers_report_the_tighter_of_key_and_project():
    from accounts.admission import ratelimit_headers
    from accounts.quota import Decision, Subject, Used

    key = Subject(1, "k1", "key", rpm_limit=10, tpm_limit=1000)
    project = Subject(1, "p1", "project", rpm_limit=100, tpm_limit=500)
    decision = Decision.of(
        Verdict.OK, (key, project), [Used(3, 100, 0, 0, 0), Used(50, 450, 0, 0, 0)], 0, 0, "x"
    )
    headers = ratelimit_headers(decision)
    assert headers["x-ratelimit-limit-requests"] == "10"
    assert headers["x-ratelimit-remaining-requests"] == "7"
    assert headers["x-ratelimit-limit-tokens"] == "500"
    assert headers["x-ratelimit-remaining-tokens"] == "50"


# ---- end to end: two gateway processes per store ------------------------------------------


def _spread(pair, secrets: list[str], body: dict, prefix: str) -> list[httpx.Response]:
    """REQUESTS at once, keys and gateways taken in turn."""

    async def main() -> list[httpx.Response]:
        clients = [httpx.AsyncClient(base_url=g.url, timeout=120) for g in pair]
        try:
            return await asyncio.gather(
                *(
                    clients[i % 2].post(
                        "/v1/completions",
                        json=body,
                        headers={
                            **bearer(secrets[i % len(secrets)]),
                            "x-request-id": f"{prefix}-{i}",
                        },
                    )
                    for i in range(REQUESTS)
                )
            )
        finally:
            for client in clients:
                await client.aclose()

    return asyncio.run(main())


@pytest.fixture
def priced(model_configs):
    """CHAT_MODEL with prices for the test (4 places, as the admin takes them)."""
    from llmgateway.models import ModelConfig

    config = ModelConfig.objects.get(name=CHAT_MODEL)
    before = (config.input_price, config.output_price, config.cached_input_price)
    config.input_price, config.output_price = Decimal("1.2345"), Decimal("6.789")
    config.save()
    yield config
    config.input_price, config.output_price, config.cached_input_price = before
    config.save()


@pytest.mark.parametrize("backend", BACKENDS)
def test_150_requests_of_three_keys_across_two_gateways_keep_the_project_budgets(
    backend, gateway_pairs, make_key, priced
):
    """Tokens and money, shared by three keys: charged ≤ budget, a log row per request,
    and each row's cost is the prices times its tokens, exactly."""
    from accounts.quota import _store_for

    if backend == "redis":
        pytest.importorskip("redis")
    pair = gateway_pairs(backend)
    budget_tokens, budget_money = 3000, Decimal("0.012")
    project = project_make(
        budget_tokens=budget_tokens, budget_amount=budget_money, budget_period="day"
    )
    made = keys_in(make_key, project)
    prefix = f"project-{backend}-{uuid.uuid4().hex[:6]}"
    body = {"model": CHAT_MODEL, "prompt": "[[long:20]]", "max_tokens": 40}
    responses = _spread(pair, [secret for _, secret in made], body, prefix)

    statuses = {r.status_code for r in responses}
    assert statuses == {200, 429}, statuses
    refusals = {r.json()["error"]["code"] for r in responses if r.status_code == 429}
    assert refusals == {"insufficient_quota"}
    rows = RequestLog.objects.filter(request_id__startswith=prefix + "-")
    assert wait_for_logs(rows.count, REQUESTS, timeout=30) == REQUESTS
    served = rows.filter(status=200)
    tokens = sum(row.total_tokens for row in served)
    money = sum((row.cost for row in served), Decimal(0))
    assert 0 < tokens <= budget_tokens
    assert 0 < money <= budget_money
    for row in served[:20]:
        assert row.project_id == project.pk
        assert (
            row.cost
            == (row.prompt_tokens * Decimal("1.2345") + row.completion_tokens * Decimal("6.789"))
            / 10**6
        )
    key = record(made[0][0])
    store = _store_for(redis_env(backend)["REDIS_URL"])
    counters = async_to_sync(store.snapshot)(key, key.subjects()[0])
    assert counters.budget_used == tokens and counters.leases == 0
    assert counters.money_used == money_units(money)


def test_spend_per_key_project_and_model_in_the_usage_page(committed):
    """The admin usage report sums each row's recorded cost per key, project and model,
    and draws a spend chart for each."""
    from django.utils import timezone

    from accounts.usage import usage_charts, usage_report

    project = project_make()
    model = f"spend-{uuid.uuid4().hex[:6]}"
    public = uuid.uuid4().hex[:12]
    costs = [Decimal("0.0001234567"), Decimal("0.5"), None]
    for i, cost in enumerate(costs):
        RequestLog.objects.create(
            created_at=timezone.now(), request_id=f"spend-{public}-{i}", key_public_id=public,
            project_id=project.pk, model=model, endpoint="/v1/completions", status=200,
            latency_ms=1.0, cost=cost,
        )  # fmt: skip
    report = usage_report(days=1)
    total = Decimal("0.5001234567")
    assert report["project"][project.name].spend == total
    assert report["model"][model].spend == total
    assert report["key"][f"sk-gw-{public}"].spend == total
    charts = usage_charts(report)
    assert any("Spend per project" in chart for chart in charts["project"])


async def test_a_key_without_limits_is_admitted_by_either_store(store, make_key):
    key = await sync_to_async(lambda: record(make_key()[0]))()
    assert key.subjects() == ()
    decision = await store.reserve(key, 10)
    assert decision.verdict is Verdict.OK
    await store.settle(key, decision.lease_id, 5, log())
