"""The Admin API's usage and costs: request-log rows summed into time buckets, shaped as
OpenAI's Usage and Costs APIs return them (page → buckets → results).

Buckets are aligned to UTC minutes, hours or days; the first starts at `start_time`
floored to the minute, the last ends at `end_time` (default: now); empty buckets are
returned too. A page holds `limit` buckets; `next_page` is an opaque cursor (the next
bucket's start and a checksum of the rest of the query), refused with another query.

Which rows count: those that reached a model (tokens were counted). Costs sum the
cost each row recorded at settlement; grouped by line item they are the model's
current prices times the same token counts the Usage API reports.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal

from django.conf import settings
from django.db.models import Q

from accounts.models import ApiKey, Project, RequestLog
from llmgateway.accounting import PER_TOKENS
from llmgateway.errors import APIError

WIDTHS = {"1m": 60, "1h": 3600, "1d": 86400}
# (default, most) buckets per page.
COMPLETIONS_LIMITS = {"1d": (7, 31), "1h": (24, 168), "1m": (60, 1440)}
COSTS_LIMITS = {"1d": (7, 180)}
COMPLETIONS_GROUPS = (
    "project_id", "user_id", "api_key_id", "model", "batch", "service_tier", "api_source",
)  # fmt: skip
COSTS_GROUPS = ("project_id", "line_item", "api_key_id", "user_id", "api_source")
FILTERS = {"project_ids", "user_ids", "api_key_ids", "models", "line_items"}


def _bad(param: str, message: str, code: str = "invalid_value") -> APIError:
    return APIError(400, message, param=param, code=code)


def array_param(query, name: str) -> list[str]:
    """`name=a&name=b` (requests, the cookbook), `name[]=a` (openai-python) and commas
    (not for line items, whose names hold one: "m, input")."""
    values = [*query.getlist(name), *query.getlist(name + "[]")]
    if name == "line_items":
        return [value.strip() for value in values if value.strip()]
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def _int_param(query, name: str, *, required: bool = False) -> int | None:
    raw = query.get(name)
    if raw is None or raw == "":
        if required:
            raise _bad(name, f"Missing required parameter: '{name}'.", "missing_required_parameter")
        return None
    try:
        return int(raw)
    except ValueError:
        raise _bad(name, f"Invalid value: '{raw}'. '{name}' must be an integer.") from None


@dataclass
class UsageQuery:
    start: int
    end: int
    width: int
    limit: int
    page_start: int
    group_by: list[str]
    filters: dict[str, list[str]] = field(default_factory=dict)
    batch: bool | None = None
    # The end_time the client sent; None when it defaulted to now. The cursor's checksum
    # reads this one, or a page asked for a second later would belong to another query.
    end_given: int | None = None

    def checksum(self) -> str:
        text = repr(
            (
                self.start,
                self.end_given,
                self.width,
                self.limit,
                self.group_by,
                sorted(self.filters.items()),
            )
        )
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _page_cursor(next_start: int, query: UsageQuery) -> str:
    raw = f"{next_start}.{query.checksum()}".encode()
    return "page_" + base64.urlsafe_b64encode(raw).decode()


def usage_query(
    query, *, groups: tuple[str, ...], limits: dict[str, tuple[int, int]]
) -> UsageQuery:
    """Parse and check the query string of a usage or costs request (400s name the param)."""
    start = _int_param(query, "start_time", required=True)
    end_given = end = _int_param(query, "end_time")
    # Rounded up: a row logged earlier in this very second is counted.
    end = math.ceil(time.time()) if end is None else end
    if start < 0:
        raise _bad("start_time", "'start_time' must not be negative.")
    if end <= start:
        raise _bad("end_time", "'end_time' must be after 'start_time'.")
    width_name = query.get("bucket_width") or "1d"
    if width_name not in limits:
        supported = ", ".join(f"'{w}'" for w in limits)
        if len(limits) == 3:
            supported = "'1m', '1h', and '1d'"
        raise _bad(
            "bucket_width", f"Invalid value: '{width_name}'. Supported values are: {supported}."
        )
    default, most = limits[width_name]
    limit = _int_param(query, "limit")
    limit = default if limit is None else limit
    if not 1 <= limit <= most:
        raise _bad("limit", f"Invalid value: {limit}. 'limit' must be between 1 and {most}.")
    group_by = array_param(query, "group_by")
    for value in group_by:
        if value not in groups:
            raise _bad(
                "group_by", f"Invalid value: '{value}'. Supported values are: {', '.join(groups)}."
            )
    filters = {name: array_param(query, name) for name in FILTERS if array_param(query, name)}
    batch_raw = query.get("batch")
    batch = None
    if batch_raw is not None:
        lowered = batch_raw.lower()
        if lowered not in {"true", "false", "1", "0"}:
            raise _bad("batch", f"Invalid value: '{batch_raw}'. 'batch' must be a boolean.")
        batch = lowered in {"true", "1"}
    parsed = UsageQuery(
        start - start % 60, end, WIDTHS[width_name], limit, 0, group_by, filters, batch, end_given
    )
    parsed.page_start = parsed.start
    page = query.get("page")
    if page:
        parsed.page_start = _page_start(page, parsed)
    return parsed


def _page_start(page: str, query: UsageQuery) -> int:
    try:
        raw = base64.urlsafe_b64decode(page.removeprefix("page_").encode()).decode()
        start, checksum = raw.split(".")
        value = int(start)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise _bad("page", "Invalid value for 'page': not a cursor this API returned.") from None
    if checksum != query.checksum() or not query.start <= value < query.end:
        raise _bad("page", "Invalid value for 'page': it belongs to a different query.")
    return value


def _buckets(query: UsageQuery) -> tuple[list[tuple[int, int]], int | None]:
    """This page's (start, end) buckets and the next page's first start (None: last)."""
    out: list[tuple[int, int]] = []
    cursor = query.page_start
    while cursor < query.end and len(out) < query.limit:
        boundary = (cursor // query.width + 1) * query.width
        out.append((cursor, min(boundary, query.end)))
        cursor = min(boundary, query.end)
    return out, (cursor if cursor < query.end else None)


@dataclass
class _Names:
    """Public ids for the numbers in log rows."""

    projects: dict[int, str]
    keys: dict[int, tuple[str, str | None]]  # key pk → (key id, owner user id or None)


def _rows(query: UsageQuery, first: int, last: int):
    rows = RequestLog.objects.filter(
        created_at__gte=datetime.fromtimestamp(first, UTC),
        created_at__lt=datetime.fromtimestamp(last, UTC),
    ).filter(Q(prompt_tokens__gt=0) | Q(completion_tokens__gt=0))
    filters = query.filters
    if "models" in filters:
        rows = rows.filter(model__in=filters["models"])
    if "project_ids" in filters:
        pks = Project.objects.filter(public_id__in=filters["project_ids"]).values_list(
            "pk", flat=True
        )
        rows = rows.filter(project_id__in=list(pks))
    if "api_key_ids" in filters:
        ids = [i.removeprefix("key_") for i in filters["api_key_ids"]]
        rows = rows.filter(key_public_id__in=ids)
    if "user_ids" in filters:
        owners = [i.removeprefix("user_") for i in filters["user_ids"]]
        keys = ApiKey.objects.filter(
            owner_id__in=[o for o in owners if o.isdigit()], service_account__isnull=True
        ).values_list("pk", flat=True)
        rows = rows.filter(api_key_id__in=list(keys))
    if query.batch is True:
        rows = rows.none()  # no Batch API here: every request is a non-batch one
    return rows.values_list(
        "created_at", "model", "project_id", "api_key_id", "prompt_tokens",
        "completion_tokens", "cached_tokens", "cost",
    )  # fmt: skip


def _names(rows: list) -> _Names:
    project_pks = {r[2] for r in rows if r[2] is not None}
    key_pks = {r[3] for r in rows if r[3] is not None}
    projects = dict(Project.objects.filter(pk__in=project_pks).values_list("pk", "public_id"))
    keys = {
        pk: (f"key_{public_id}", None if account else f"user_{owner}")
        for pk, public_id, owner, account in ApiKey.objects.filter(pk__in=key_pks).values_list(
            "pk", "public_id", "owner_id", "service_account_id"
        )
    }
    return _Names(projects, keys)


def _dimensions(row, names: _Names, group_by: list[str]) -> tuple:
    _, model, project, key, *_ = row
    key_id, user_id = names.keys.get(key, (None, None)) if key is not None else (None, None)
    values = {
        "project_id": names.projects.get(project) if project is not None else None,
        "user_id": user_id,
        "api_key_id": key_id,
        "model": model or None,
        "batch": False,
        "service_tier": "default",
        "api_source": None,  # newer SDKs group by it; one source here
    }
    return tuple((g, values[g]) for g in group_by if g in values)


def _page(query: UsageQuery, results_for) -> dict:
    buckets, next_start = _buckets(query)
    data = []
    if buckets:
        rows = list(_rows(query, buckets[0][0], buckets[-1][1]))
        names = _names(rows)
        per_bucket: dict[int, list] = defaultdict(list)
        for row in rows:
            stamp = int(row[0].timestamp())
            index = next((i for i, (s, e) in enumerate(buckets) if s <= stamp < e), None)
            if index is not None:
                per_bucket[index].append(row)
        for index, (start, end) in enumerate(buckets):
            data.append(
                {
                    "object": "bucket",
                    "start_time": start,
                    "end_time": end,
                    "results": results_for(per_bucket.get(index, []), names),
                }
            )
    return {
        "object": "page",
        "data": data,
        "has_more": next_start is not None,
        "next_page": _page_cursor(next_start, query) if next_start is not None else None,
    }


COMPLETION_DIMENSIONS = ("project_id", "user_id", "api_key_id", "model", "batch", "service_tier")


def completions_usage(query: UsageQuery) -> dict:
    def results(rows: list, names: _Names) -> list[dict]:
        groups: dict[tuple, list[int]] = {}
        for row in rows:
            totals = groups.setdefault(_dimensions(row, names, query.group_by), [0, 0, 0, 0])
            totals[0] += row[4]
            totals[1] += row[5]
            totals[2] += row[6]
            totals[3] += 1
        out = []
        for dims, (prompt, completion, cached, count) in groups.items():
            result = {
                "object": "organization.usage.completions.result",
                "input_tokens": prompt,
                "output_tokens": completion,
                "input_cached_tokens": cached,
                "input_audio_tokens": 0,
                "output_audio_tokens": 0,
                "num_model_requests": count,
                **dict.fromkeys(COMPLETION_DIMENSIONS),
            }
            result.update(dict(dims))
            out.append(result)
        return out

    return _page(query, results)


def empty_usage(query: UsageQuery) -> dict:
    """The usage endpoints this gateway has nothing for (images, audio, ...): the right
    envelope with empty buckets, so dashboards that walk every endpoint keep working."""
    return _page(query, lambda rows, names: [])


def _line_items(row, prices: dict) -> list[tuple[str, int, Decimal]]:
    """(line item, tokens, cost) of one row at the model's current prices."""
    model = row[1] or "(none)"
    price = prices.get(row[1])
    prompt, completion, cached = row[4], row[5], min(row[6], row[4])
    if price is None:
        return [
            (f"{model}, input", prompt, Decimal(0)),
            (f"{model}, output", completion, Decimal(0)),
        ]
    items = [
        (
            f"{model}, input",
            prompt - (cached if price.cached_input is not None else 0),
            price.input,
        ),
        (f"{model}, output", completion, price.output),
    ]
    if price.cached_input is not None:
        items.append((f"{model}, cached input", cached, price.cached_input))
    return [(name, tokens, tokens * each / PER_TOKENS) for name, tokens, each in items]


def costs(query: UsageQuery) -> dict:
    from llmgateway.models import ModelConfig

    prices = {c.name: c.prices for c in ModelConfig.objects.all() if c.prices is not None}
    by_line = "line_item" in query.group_by
    others = [g for g in query.group_by if g != "line_item"]
    only_lines = set(query.filters.get("line_items", ()))
    currency = settings.GATEWAY_CURRENCY

    def results(rows: list, names: _Names) -> list[dict]:
        groups: dict[tuple, list] = {}
        for row in rows:
            dims = _dimensions(row, names, others)
            if by_line or only_lines:
                for name, tokens, cost in _line_items(row, prices):
                    if only_lines and name not in only_lines:
                        continue
                    key = (*dims, ("line_item", name)) if by_line else dims
                    totals = groups.setdefault(key, [Decimal(0), 0])
                    totals[0] += cost
                    totals[1] += tokens
            else:
                totals = groups.setdefault(dims, [Decimal(0), 0])
                totals[0] += row[7] or Decimal(0)
        out = []
        for dims, (amount, quantity) in groups.items():
            result = {
                "object": "organization.costs.result",
                "amount": {"value": float(amount), "currency": currency},
                "line_item": None,
                "project_id": None,
                "api_key_id": None,
                "quantity": quantity if by_line else None,
                "quantity_unit": "tokens" if by_line else None,
            }
            result.update(dict(dims))
            out.append(result)
        return out

    return _page(query, results)
