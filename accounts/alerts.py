"""Budget alerts: a project's webhook is POSTed once when its spend crosses 80% and 100%
of a budget (tokens or money) in a budget period.

- Spend is the project's budget counter in the quota store, read after a settlement:
  settled usage plus what requests in flight still hold. Since a budget is never
  overshot, the counter rarely lands on exactly 100%: the 100% alert also fires when
  the project's budget refuses a request (it is then exhausted for that traffic).
- Once: the first process to see a crossing inserts the BudgetAlert row, which is
  unique per (project, period, budget, threshold); every other process (and replica)
  fails that insert and sends nothing. Each process also remembers what it saw, so a
  settlement after the crossing costs no query.
- Delivery: POST JSON, retried with backoff (BUDGET_ALERT_ATTEMPTS tries, waiting
  BUDGET_ALERT_RETRY_SECONDS, then twice that, ...) on a network error or a non-2xx
  answer. The same `id` (also in the Idempotency-Key header) travels with every try, so
  a receiver that answered but whose answer was lost can drop the repeat. A delivery
  whose process stops before it succeeds stays undelivered in the admin (attempts,
  last error).
- The SSRF rules of image fetching apply (llmgateway.vision.intake.target_resolve): the
  host is resolved once, every address checked, the connection made to the checked
  address, no redirects followed; only public addresses unless VISION_ALLOWED_HOSTS or
  VISION_ALLOWED_NETWORKS lists the receiver.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

import httpx
import orjson
from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts.models import BudgetAlert
from accounts.quota import Clock, quota_store
from accounts.services import KeyRecord
from accounts.subjects import Subject
from llmgateway import background
from llmgateway.accounting import money_amount
from llmgateway.db import orm
from llmgateway.vision.intake import ImageRefused, target_resolve

logger = logging.getLogger(__name__)

THRESHOLDS = (80, 100)
USER_AGENT = "llmgateway-alerts/1"

# (project id, period, budget, threshold) this process has seen claimed.
_seen: set[tuple[int, str, str, int]] = set()


def budget_alerts_check(
    key: KeyRecord, subjects: tuple[Subject, ...], exhausted: str | None = None
) -> None:
    """After a settlement, or a refusal by a project budget (`exhausted`: "tokens" or
    "money"): look for crossed thresholds of the key's project, off the request's path."""
    if not key.project_alert_url:
        return
    for subject in subjects:
        budgeted = subject.budget_tokens is not None or subject.budget_money is not None
        if subject.scope == "project" and subject.model is None and budgeted:
            background.spawn(_check(key, subject, exhausted))


async def _check(key: KeyRecord, subject: Subject, exhausted: str | None = None) -> None:
    try:
        window, _ = Clock.read().budget_window(subject.budget_period)
        wanted = [
            (budget, threshold)
            for budget, limit in (
                ("tokens", subject.budget_tokens),
                ("money", subject.budget_money),
            )
            if limit
            for threshold in THRESHOLDS
            if (key.project_id, window, budget, threshold) not in _seen
        ]
        if not wanted:
            return
        counters = await quota_store().snapshot(key, subject)
        used = {"tokens": counters.budget_used, "money": counters.money_used}
        limits = {"tokens": subject.budget_tokens, "money": subject.budget_money}
        for budget, threshold in wanted:
            # A budget that refused a request is at 100% for alerting: it blocks traffic,
            # though never-overshoot keeps its counter just below the limit.
            full = threshold == 100 and budget == exhausted
            if not full and used[budget] * 100 < limits[budget] * threshold:
                continue
            _seen.add((key.project_id, window, budget, threshold))
            alert_id = await orm(_claim)(key.project_id, window, budget, threshold)
            if alert_id is None:
                continue
            payload = _payload(
                key, subject, window, budget, threshold, used[budget], limits[budget]
            )
            background.spawn(deliver(alert_id, key.project_alert_url, payload))
    except Exception:
        logger.exception("budget alert check for project %s failed", key.project_public_id)


def _claim(project_id: int, window: str, budget: str, threshold: int) -> int | None:
    """Insert the alert's row; its id, or None when another process did first."""
    try:
        with transaction.atomic():
            alert = BudgetAlert.objects.create(
                project_id=project_id, window=window, budget=budget, threshold=threshold
            )
    except IntegrityError:
        return None
    return alert.pk


def _payload(
    key: KeyRecord, subject: Subject, window: str, budget: str, threshold: int, used: int, limit
) -> dict:
    body = {
        "object": "budget.alert",
        "project_id": key.project_public_id,
        "budget": budget,
        "threshold": threshold,
        "period": subject.budget_period,
        "window": window,
        "created_at": int(datetime.now(UTC).timestamp()),
    }
    if budget == "money":
        # Strings: exact decimal amounts.
        body.update(
            used=str(money_amount(used).normalize()),
            limit=str(money_amount(limit).normalize()),
            currency=settings.GATEWAY_CURRENCY,
        )
    else:
        body.update(used=used, limit=limit)
    return body


async def deliver(alert_id: int, url: str, payload: dict) -> bool:
    """POST the alert until a 2xx answer or BUDGET_ALERT_ATTEMPTS tries; record each try."""
    body = orjson.dumps({**payload, "id": f"alert_{alert_id}"})
    delay = settings.BUDGET_ALERT_RETRY_SECONDS
    for attempt in range(1, settings.BUDGET_ALERT_ATTEMPTS + 1):
        error = await _post(url, body, f"alert_{alert_id}")
        await orm(_record)(alert_id, attempt, error)
        if error is None:
            return True
        logger.warning("budget alert %s: try %d failed (%s)", alert_id, attempt, error)
        if attempt < settings.BUDGET_ALERT_ATTEMPTS:
            await asyncio.sleep(delay)
            delay *= 2
    return False


async def _post(url: str, body: bytes, alert_id: str) -> str | None:
    """One try; None on a 2xx answer, else why not."""
    try:
        async with asyncio.timeout(settings.BUDGET_ALERT_TIMEOUT):
            target = await target_resolve(url, param="alert_webhook_url")
            extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
            headers = {
                "Host": target.host_header,
                "Content-Type": "application/json",
                "User-Agent": USER_AGENT,
                "Idempotency-Key": alert_id,
            }
            async with httpx.AsyncClient(trust_env=False, follow_redirects=False) as client:
                request = client.build_request(
                    "POST", target.connect_url, content=body, headers=headers, extensions=extensions
                )
                response = await client.send(request)
    except ImageRefused as exc:
        return exc.message.replace("image URL", "webhook URL")
    except TimeoutError:
        return f"no answer within {settings.BUDGET_ALERT_TIMEOUT:g} s"
    except httpx.HTTPError as exc:
        return type(exc).__name__
    if 200 <= response.status_code < 300:
        return None
    return f"HTTP {response.status_code}"


def _record(alert_id: int, attempt: int, error: str | None) -> None:
    fields: dict = {"attempts": attempt, "last_error": (error or "")[:300]}
    if error is None:
        fields["delivered_at"] = timezone.now()
    BudgetAlert.objects.filter(pk=alert_id).update(**fields)
