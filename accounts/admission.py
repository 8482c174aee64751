"""The platform's admission: quota admission, settlement, and the log row it writes.

The runner (llmgateway/runner/lifecycle.py) calls `admit` with the request's Caller; see
llmgateway/accounting.py for the contract between them.
"""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass, field
from typing import ClassVar

from django.conf import settings
from django.http import HttpRequest

from accounts.alerts import budget_alerts_check
from accounts.logs import log_record
from accounts.quota import Decision, Subject, Used, Verdict, quota_store
from accounts.services import Caller
from llmgateway import background, metrics
from llmgateway.accounting import (
    Outcome,
    Reservation,
    Startable,
    Usage,
    money_amount,
    money_units,
)
from llmgateway.context import request_context
from llmgateway.errors import APIError

logger = logging.getLogger(__name__)

# A concurrency refusal clears as soon as any of the key's requests ends.
CONCURRENCY_RETRY_MS = 250


def duration(ms: int) -> str:
    """OpenAI's reset format: "250ms", "12s", "1m30s"."""
    if ms < 1000:
        return f"{max(ms, 0)}ms"
    seconds = math.ceil(ms / 1000)
    minutes, seconds = divmod(seconds, 60)
    return f"{minutes}m{seconds}s" if minutes else f"{seconds}s"


def _tightest(decision: Decision, limit_of, used_of) -> tuple[int, int] | None:
    """(limit, remaining) of the subject with the least left, among those with a limit."""
    best: tuple[int, int] | None = None
    for subject, used in zip(decision.subjects, decision.used, strict=False):
        limit = limit_of(subject)
        if limit is None:
            continue
        remaining = max(limit - used_of(used), 0)
        if best is None or remaining < best[1]:
            best = (limit, remaining)
    return best


def ratelimit_headers(decision: Decision) -> dict[str, str]:
    """OpenAI's x-ratelimit-* headers for the tighter of the key's and the project's
    limits (their per-model limits included): the one with the least remaining."""
    headers: dict[str, str] = {}
    reset = duration(decision.reset_ms)
    requests = _tightest(decision, lambda s: s.rpm_limit, lambda u: u.rpm)
    if requests is not None:
        headers["x-ratelimit-limit-requests"] = str(requests[0])
        headers["x-ratelimit-remaining-requests"] = str(requests[1])
        headers["x-ratelimit-reset-requests"] = reset
    tokens = _tightest(decision, lambda s: s.tpm_limit, lambda u: u.tpm)
    if tokens is not None:
        headers["x-ratelimit-limit-tokens"] = str(tokens[0])
        headers["x-ratelimit-remaining-tokens"] = str(tokens[1])
        headers["x-ratelimit-reset-tokens"] = reset
    return headers


def _whose(subject: Subject) -> str:
    owner = "this key" if subject.scope == "key" else "this key's project"
    return f"{owner} for model '{subject.model}'" if subject.model else owner


def refusal(decision: Decision, tokens: int | None, cost: int | None) -> APIError:
    """The 429 for `decision`; `tokens` and `cost` None: refused by the precheck, before
    the request was tokenized."""
    headers = ratelimit_headers(decision)
    subject = decision.subject or Subject(0, "", "key")
    whose = _whose(subject)
    if decision.verdict is Verdict.BUDGET:
        left = max((subject.budget_tokens or 0) - decision.budget_used, 0)
        reserves = (
            f", and this request reserves {tokens} (prompt plus max tokens)"
            if tokens is not None
            else ""
        )
        return APIError(
            429,
            f"You exceeded your current quota: {whose}'s token budget "
            f"({subject.budget_tokens} per {subject.budget_period}) has {left} tokens "
            f"left{reserves}.",
            type="insufficient_quota",
            code="insufficient_quota",
            headers={**headers, "x-should-retry": "false"},
        )
    if decision.verdict is Verdict.MONEY:
        currency = settings.GATEWAY_CURRENCY.upper()
        budget = money_amount(subject.budget_money or 0).normalize()
        left = money_amount(max((subject.budget_money or 0) - decision.money_used, 0))
        costs = (
            f", and this request may cost up to {money_amount(cost).normalize()} {currency}"
            if cost is not None
            else ""
        )
        return APIError(
            429,
            f"You exceeded your current quota: {whose}'s budget ({budget} {currency} per "
            f"{subject.budget_period}) has {left.normalize()} {currency} left{costs}.",
            type="insufficient_quota",
            code="insufficient_quota",
            headers={**headers, "x-should-retry": "false"},
        )
    if (
        decision.verdict is Verdict.TOKENS
        and subject.tpm_limit
        and (tokens or 0) > subject.tpm_limit
    ):
        # No wait lets it through: OpenAI's "Request too large", which clients must not retry.
        return APIError(
            429,
            f"Request too large for {whose} on tokens per min (TPM): limit "
            f"{subject.tpm_limit}, requested {tokens}. The input or output tokens must be "
            "reduced in order to run successfully.",
            type="tokens",
            code="rate_limit_exceeded",
            headers={**headers, "x-should-retry": "false"},
        )
    if decision.verdict is Verdict.CONCURRENCY:
        wait_ms = CONCURRENCY_RETRY_MS
        what = f"concurrent requests: limit {subject.max_concurrency}"
        kind = "requests"
    elif decision.verdict is Verdict.REQUESTS:
        wait_ms, what = decision.retry_ms, f"requests per min (RPM): limit {subject.rpm_limit}"
        kind = "requests"
    else:
        wait_ms, kind = decision.retry_ms, "tokens"
        what = f"tokens per min (TPM): limit {subject.tpm_limit}"
        if tokens is not None:
            what += f", requested {tokens}"
    return APIError(
        429,
        f"Rate limit reached for {whose} on {what}. Please try again in {duration(wait_ms)}.",
        type=kind,
        code="rate_limit_exceeded",
        headers={
            **headers,
            "retry-after": str(max(math.ceil(wait_ms / 1000), 1)),
            "retry-after-ms": str(wait_ms),
        },
    )


@dataclass(slots=True)
class KeyAdmission:
    request: HttpRequest
    caller: Caller
    reservation: Reservation
    lease_id: str | None
    headers: dict[str, str] = field(default_factory=dict)
    subjects: tuple[Subject, ...] = ()
    settled: bool = False
    records: ClassVar[bool] = True

    async def settle(self, outcome: Outcome) -> None:
        """Charge the exact usage and write the log row; never raises."""
        if self.settled:
            return
        self.settled = True
        try:
            tokens, record, cost = self._settlement(outcome)
            await quota_store().settle(
                self.caller.key, self.lease_id, tokens, record, subjects=self.subjects, cost=cost
            )
            self._settled()
        except Exception:
            # The client has its answer; a lost settlement expires with its lease.
            logger.exception("settling request %s failed", request_context(self.request).request_id)

    def settle_now(self, outcome: Outcome) -> bool:
        """`settle` without a suspension, where the quota store can (Redis, connected):
        True when settled (or failed and logged, as `settle` does), False with nothing
        done: then call `settle`."""
        if self.settled:
            return True
        try:
            tokens, record, cost = self._settlement(outcome)
            if not quota_store().settle_now(
                self.caller.key, self.lease_id, tokens, record, subjects=self.subjects, cost=cost
            ):
                return False
            self.settled = True
            self._settled()
        except Exception:
            self.settled = True
            logger.exception("settling request %s failed", request_context(self.request).request_id)
        return True

    def _settlement(self, outcome: Outcome) -> tuple[int, dict, int]:
        """The tokens to charge, the log row and the cost in money units."""
        usage = outcome.usage
        prices = self.reservation.prices
        cost = prices.cost(usage) if prices is not None else None
        record = log_record(
            self.request,
            caller=self.caller,
            model=self.reservation.model,
            endpoint=self.reservation.endpoint,
            status=outcome.status,
            error_type=outcome.error_type,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            cached_tokens=usage.cached_tokens,
            cost=cost,
            finish_reason=outcome.finish_reason,
            ttft_s=outcome.time_to_first_token,
            streamed=outcome.streamed,
            cancelled=outcome.cancelled,
            response_text=outcome.response_text,
        )
        return usage.total_tokens, record, money_units(cost) if cost is not None else 0

    def _settled(self) -> None:
        if self.lease_id is not None:
            budget_alerts_check(self.caller.key, self.subjects)

    def abandoned(self, task: asyncio.Task) -> None:
        """Settle (or just log) a request whose client left while it was being admitted,
        once `task` (the quota store's decision) is done."""
        decision = None if task.cancelled() or task.exception() else task.result()
        if decision is not None and decision.verdict is Verdict.OK:
            self.lease_id = decision.lease_id
        outcome = Outcome(
            status=499, usage=Usage(), error_type="client_disconnected", cancelled=True
        )
        background.spawn(self.settle(outcome))


class EarlyStarts:
    """Which keys' requests may reach Triton while their reservation is in flight.

    Sending the generation to Triton before the quota store answers takes that
    round trip off the request's latency. A request the store then refuses is
    cancelled inside Triton before it produced anything the client sees, and
    nothing is charged, so quotas still never overshoot; what a refusal can
    cost is a moment of Triton's time. That is bounded: a key's request starts
    early only when the key's last decision in this process admitted, and only
    one of a key's requests at a time starts early, so a key at its limit, or a
    burst of a key's requests, waits for the store as before. Off with
    QUOTA_EARLY_START=false.
    """

    def __init__(self) -> None:
        self._admitted: dict[int, bool] = {}
        self._pending: set[int] = set()

    def claim(self, key_id: int) -> bool:
        if not settings.QUOTA_EARLY_START:
            return False
        if not self._admitted.get(key_id) or key_id in self._pending:
            return False
        self._pending.add(key_id)
        return True

    def refused_last(self, key_id: int) -> bool:
        """Whether the key's last decision in this process was a refusal."""
        return self._admitted.get(key_id) is False

    def decided(self, key_id: int, admitted: bool, claimed: bool) -> None:
        self._admitted[key_id] = admitted
        if claimed:
            self._pending.discard(key_id)


early_starts = EarlyStarts()


def precheck_due(caller: Caller, *, large: bool) -> bool:
    """Whether a request should be prechecked (`admit_precheck`) before it is prepared:
    a large one of a key with limits, and any of a key whose last request this process
    decided was refused (a key at its limits gets its 429 before the request's checks
    against the model). Keys in good standing with small requests skip the read."""
    key = caller.key
    return key.has_limits and (large or early_starts.refused_last(key.id))


async def admit_precheck(*, caller: Caller) -> None:
    """Refuse (429) a key whose own or whose project's rpm, tpm or budget is already
    used up, before its request's prompt is prepared; nothing is reserved.

    For the requests `precheck_due` picks: it costs a read of the counters, and it
    spares the tokenizer a request that admission would refuse anyway (a key with no
    budget left could otherwise have a 19 MB prompt tokenized; issue 19). It only
    reads, so a race lets a request through to `admit`, which decides atomically as
    before. Per-model limits and concurrency are left to `admit`: the model is not
    resolved here, and the snapshot counts leases that expired without being released
    yet. A quota store that cannot answer is left to `admit` too (its 503).
    """
    key = caller.key
    for subject in key.subjects():
        try:
            now = await quota_store().snapshot(key, subject)
        except Exception:
            logger.warning("quota precheck skipped: the quota store did not answer", exc_info=True)
            return
        verdict, retry_ms = Verdict.OK, 0
        if subject.budget_tokens is not None and now.budget_used >= subject.budget_tokens:
            verdict = Verdict.BUDGET
        elif subject.budget_money is not None and now.money_used >= subject.budget_money:
            verdict = Verdict.MONEY
        elif subject.rpm_limit is not None and now.rpm_used >= subject.rpm_limit:
            verdict, retry_ms = Verdict.REQUESTS, now.rpm_retry_ms
        elif subject.tpm_limit is not None and now.tpm_used >= subject.tpm_limit:
            verdict, retry_ms = Verdict.TOKENS, now.tpm_retry_ms
        if verdict is not Verdict.OK:
            used = Used(now.rpm_used, now.tpm_used, now.budget_used, now.money_used, now.reset_ms)
            decision = Decision.of(verdict, (subject,), [used], 0, retry_ms, None)
            raise refusal(decision, None, None)


async def admit(
    request: HttpRequest,
    *,
    caller: Caller,
    reservation: Reservation,
    early: Startable | None = None,
) -> KeyAdmission:
    """Reserve `caller`'s quota for `reservation`, or raise APIError (429; 503 when the
    quota store is unavailable). Whether the caller may use the model is the runner's
    check, made before."""
    key = caller.key
    context = request_context(request)
    tokens = reservation.prompt_tokens + reservation.max_tokens
    prices = reservation.prices
    # A money budget reserves the most the request can cost, and settles to the cost.
    cost = (
        money_units(prices.most(reservation.prompt_tokens, reservation.max_tokens)) if prices else 0
    )
    lease_id, headers = None, {}
    subjects = key.subjects(reservation.model)
    if subjects:
        store = quota_store()
        task = store.reserve_soon(key, tokens, subjects=subjects, cost=cost)
        if task is None:
            task = asyncio.ensure_future(store.reserve(key, tokens, subjects=subjects, cost=cost))
        claimed = early is not None and early_starts.claim(key.id)
        admitted = False
        try:
            if claimed:
                await _start_early(early)
            decision = await asyncio.shield(task)
            admitted = decision.verdict is Verdict.OK
        except asyncio.CancelledError:
            # The client left while Redis or the database was admitting it: give back
            # whatever was reserved rather than leaving it to expire.
            abandoned = KeyAdmission(request, caller, reservation, None, subjects=subjects)
            context.admission = abandoned
            task.add_done_callback(abandoned.abandoned)
            raise
        except Exception as exc:
            logger.exception("quota store unavailable")
            metrics.quota_store_failed()
            raise APIError(
                503,
                "Quota accounting is unavailable. Please retry shortly.",
                type="server_error",
                code="service_unavailable",
                headers={"retry-after": "1"},
            ) from exc
        finally:
            if claimed:
                early_starts.decided(key.id, admitted, claimed)
                if not admitted:
                    early.cancel()
            elif task.done() and not task.cancelled() and task.exception() is None:
                early_starts.decided(key.id, task.result().verdict is Verdict.OK, False)
        if not admitted:
            if decision.verdict in (Verdict.BUDGET, Verdict.MONEY) and decision.subject:
                kind = "tokens" if decision.verdict is Verdict.BUDGET else "money"
                budget_alerts_check(key, (decision.subject,), exhausted=kind)
            raise refusal(decision, tokens, cost)
        lease_id, headers = decision.lease_id, ratelimit_headers(decision)
    admission = KeyAdmission(request, caller, reservation, lease_id, headers, subjects)
    context.admission = admission
    return admission


async def _start_early(early: Startable) -> None:
    """Send the generation now; a failure here is left for the route's own start()
    after admission to raise and answer."""
    try:
        await early.start()
    except Exception:
        logger.debug("early start failed; the route retries it after admission", exc_info=True)
