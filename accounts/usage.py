"""The admin usage page's numbers and charts: per day, per key, per model.

Charts are inline SVG drawn here, so the page works offline with no script
or CDN. Aggregation reads the raw request logs of the chosen window; keep the
window short on very large tables (rollup tables are the next step).
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import timedelta

from django.utils import timezone
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

from accounts.models import RequestLog

BAR_COLORS = ("#417690", "#79aec8", "#c0392b")


@dataclass
class Bucket:
    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latencies: list[float] = field(default_factory=list)

    def add(self, status: int, prompt: int, completion: int, latency: float) -> None:
        self.requests += 1
        self.errors += status >= 400
        self.prompt_tokens += prompt
        self.completion_tokens += completion
        self.latencies.append(latency)

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def percentile(self, q: int) -> float:
        if len(self.latencies) < 2:
            return self.latencies[0] if self.latencies else 0.0
        return statistics.quantiles(self.latencies, n=100, method="inclusive")[q - 1]

    @property
    def p50(self) -> float:
        return self.percentile(50)

    @property
    def p95(self) -> float:
        return self.percentile(95)


def usage_report(*, days: int) -> dict[str, dict[str, Bucket]]:
    since = timezone.now() - timedelta(days=days)
    rows = RequestLog.objects.filter(created_at__gte=since).values_list(
        "created_at", "key_public_id", "model", "status", "prompt_tokens",
        "completion_tokens", "latency_ms",
    )  # fmt: skip
    report: dict[str, dict[str, Bucket]] = {
        "day": defaultdict(Bucket),
        "key": defaultdict(Bucket),
        "model": defaultdict(Bucket),
    }
    for created, key, model, status, prompt, completion, latency in rows.iterator():
        values = (status, prompt, completion, latency)
        report["day"][created.date().isoformat()].add(*values)
        report["key"][f"sk-gw-{key}" if key else "(no key)"].add(*values)
        report["model"][model or "(none)"].add(*values)
    start = (timezone.now() - timedelta(days=days - 1)).date()
    days_list = [(start + timedelta(days=i)).isoformat() for i in range(days)]
    report["day"] = {d: report["day"].get(d, Bucket()) for d in days_list}
    return {name: dict(sorted(buckets.items())) for name, buckets in report.items()}


def bar_chart(
    title: str, labels: list[str], series: list[tuple[str, list[float]]], *, unit: str = ""
) -> SafeString:
    """Grouped vertical bars as an SVG element; every text is escaped."""
    width, height, left, bottom, top = 720, 220, 56, 40, 24
    plot_w, plot_h = width - left - 10, height - top - bottom
    peak = max([v for _, values in series for v in values] + [1])
    group_w = plot_w / max(len(labels), 1)
    bar_w = max(group_w / (len(series) + 1), 1)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'role="img" aria-label="{escape(title)}" class="usage-chart">',
        f'<text x="{left}" y="16" font-size="13" font-weight="bold">{escape(title)}</text>',
        f'<line x1="{left}" y1="{top + plot_h}" x2="{width - 10}" y2="{top + plot_h}" '
        'stroke="#999"/>',
        f'<text x="{left - 4}" y="{top + 4}" font-size="10" text-anchor="end">'
        f"{peak:,.0f}{escape(unit)}</text>",
    ]
    for i, label in enumerate(labels):
        x0 = left + i * group_w
        for j, (name, values) in enumerate(series):
            value = values[i]
            h = plot_h * value / peak
            parts.append(
                f'<rect x="{x0 + (j + 0.5) * bar_w:.1f}" y="{top + plot_h - h:.1f}" '
                f'width="{bar_w:.1f}" height="{h:.1f}" fill="{BAR_COLORS[j % 3]}">'
                f"<title>{escape(label)} {escape(name)}: {value:,.1f}{escape(unit)}</title></rect>"
            )
        if len(labels) <= 16 or i % max(len(labels) // 8, 1) == 0:
            parts.append(
                f'<text x="{x0 + group_w / 2:.1f}" y="{height - bottom + 14}" font-size="10" '
                f'text-anchor="middle">{escape(label[-10:])}</text>'
            )
    for j, (name, _) in enumerate(series):
        x = left + j * 130
        parts.append(
            f'<rect x="{x}" y="{height - 14}" width="10" height="10" fill="{BAR_COLORS[j % 3]}"/>'
            f'<text x="{x + 14}" y="{height - 5}" font-size="11">{escape(name)}</text>'
        )
    parts.append("</svg>")
    return mark_safe("".join(parts))  # noqa: S308 - built from escaped parts only


def usage_charts(report: dict[str, dict[str, Bucket]]) -> dict[str, list[SafeString]]:
    charts: dict[str, list[SafeString]] = {}
    for name, buckets in report.items():
        labels = list(buckets)
        values = list(buckets.values())
        charts[name] = [
            bar_chart(
                f"Requests and errors per {name}",
                labels,
                [
                    ("requests", [b.requests for b in values]),
                    ("errors", [b.errors for b in values]),
                ],
            ),
            bar_chart(
                f"Tokens per {name}",
                labels,
                [
                    ("prompt", [b.prompt_tokens for b in values]),
                    ("completion", [b.completion_tokens for b in values]),
                ],
            ),
            bar_chart(
                f"Latency per {name}",
                labels,
                [("p50", [b.p50 for b in values]), ("p95", [b.p95 for b in values])],
                unit=" ms",
            ),
        ]
    return charts
