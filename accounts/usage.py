"""The admin usage page's numbers and charts: per day, per key, per project, per model,
requests, tokens, spend (each row's recorded cost) and latency.

Charts are inline SVG drawn here, so the page works offline with no script
or CDN. Aggregation reads the raw request logs of the chosen window; keep the
window short on very large tables (rollup tables are the next step).
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal

from django.conf import settings
from django.utils import timezone
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

from accounts.models import Project, RequestLog

BAR_COLORS = ("#417690", "#79aec8", "#c0392b")


@dataclass
class Bucket:
    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    spend: Decimal = Decimal(0)
    latencies: list[float] = field(default_factory=list)

    def add(
        self, status: int, prompt: int, completion: int, latency: float, cost: Decimal | None
    ) -> None:
        self.requests += 1
        self.errors += status >= 400
        self.prompt_tokens += prompt
        self.completion_tokens += completion
        self.spend += cost or 0
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
        "created_at", "key_public_id", "project_id", "model", "status", "prompt_tokens",
        "completion_tokens", "latency_ms", "cost",
    )  # fmt: skip
    projects = dict(Project.objects.values_list("pk", "name"))
    report: dict[str, dict[str, Bucket]] = {
        "day": defaultdict(Bucket),
        "key": defaultdict(Bucket),
        "project": defaultdict(Bucket),
        "model": defaultdict(Bucket),
    }
    for created, key, project, model, *values in rows.iterator():
        report["day"][created.date().isoformat()].add(*values)
        report["key"][f"sk-gw-{key}" if key else "(no key)"].add(*values)
        report["project"][projects.get(project, "(none)") if project else "(none)"].add(*values)
        report["model"][model or "(none)"].add(*values)
    start = (timezone.now() - timedelta(days=days - 1)).date()
    days_list = [(start + timedelta(days=i)).isoformat() for i in range(days)]
    report["day"] = {d: report["day"].get(d, Bucket()) for d in days_list}
    return {name: dict(sorted(buckets.items())) for name, buckets in report.items()}


# Axis labels are drawn at 10 px. CHAR_W is a generous average glyph width there, so a
# label estimated to fit does fit; VERTICAL_PITCH is the room one vertical label needs.
CHAR_W = 6.2
VERTICAL_PITCH = 13
# Longer labels are shortened in the middle on the axis; the tooltip has them whole.
MAX_LABEL_CHARS = 40


@dataclass(frozen=True)
class AxisLayout:
    """How a chart's x labels are drawn: across, or vertical (reading upwards) when
    some label is wider than its bar group, then only every `step`-th so none overlap."""

    vertical: bool
    step: int
    depth: float  # the pixels below the axis that the labels take


def axis_label(label: str) -> str:
    """The label as drawn on the axis (whole up to MAX_LABEL_CHARS characters)."""
    if len(label) <= MAX_LABEL_CHARS:
        return label
    half = MAX_LABEL_CHARS // 2 - 1
    return f"{label[:half]}…{label[-half:]}"


def axis_layout(labels: list[str], group_w: float) -> AxisLayout:
    widest = max((len(axis_label(label)) for label in labels), default=0) * CHAR_W
    if widest <= group_w - 4:
        return AxisLayout(vertical=False, step=1, depth=18)
    return AxisLayout(vertical=True, step=math.ceil(VERTICAL_PITCH / group_w), depth=widest + 10)


def _tick(label: str, x: float, y: float, layout: AxisLayout) -> str:
    """One x label: its text, and a tooltip (`<title>`) with the whole label."""
    place = (
        f'x="{x:.1f}" y="{y:.1f}" text-anchor="end" dominant-baseline="central" '
        f'transform="rotate(-90 {x:.1f} {y:.1f})"'
        if layout.vertical
        else f'x="{x:.1f}" y="{y + 12:.1f}" text-anchor="middle"'
    )
    return (
        f'<g class="tick"><title>{escape(label)}</title>'
        f'<text {place} font-size="10">{escape(axis_label(label))}</text></g>'
    )


def _legend(series: list[tuple[str, list[float]]], right: float) -> list[str]:
    parts = []
    x = right
    for j, (name, _) in reversed(list(enumerate(series))):
        x -= 16 + len(name) * 7
        parts.append(
            f'<rect x="{x:.0f}" y="6" width="10" height="10" fill="{BAR_COLORS[j % 3]}"/>'
            f'<text x="{x + 14:.0f}" y="15" font-size="11">{escape(name)}</text>'
        )
    return parts


def bar_chart(
    title: str, labels: list[str], series: list[tuple[str, list[float]]], *, unit: str = ""
) -> SafeString:
    """Grouped vertical bars as an SVG element; every text is escaped.

    Every x label is drawn whole (see axis_layout), each with a `<title>` tooltip; the
    chart grows downwards to make room for vertical labels.
    """
    width, plot_h, left, top = 720, 156, 56, 24
    plot_w = width - left - 10
    group_w = plot_w / max(len(labels), 1)
    layout = axis_layout(labels, group_w)
    axis_y = top + plot_h
    height = math.ceil(axis_y + 4 + layout.depth)
    peak = max([v for _, values in series for v in values] + [1])
    bar_w = max(group_w / (len(series) + 1), 1)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'role="img" aria-label="{escape(title)}" class="usage-chart">',
        f'<text x="{left}" y="16" font-size="13" font-weight="bold">{escape(title)}</text>',
        *_legend(series, width - 10),
        f'<line x1="{left}" y1="{axis_y}" x2="{width - 10}" y2="{axis_y}" stroke="#999"/>',
        f'<text x="{left - 4}" y="{top + 4}" font-size="10" text-anchor="end">'
        f"{peak:,.0f}{escape(unit)}</text>",
    ]
    for i, label in enumerate(labels):
        x0 = left + i * group_w
        for j, (name, values) in enumerate(series):
            value = values[i]
            h = plot_h * value / peak
            parts.append(
                f'<rect x="{x0 + (j + 0.5) * bar_w:.1f}" y="{axis_y - h:.1f}" '
                f'width="{bar_w:.1f}" height="{h:.1f}" fill="{BAR_COLORS[j % 3]}">'
                f"<title>{escape(label)} {escape(name)}: {value:,.1f}{escape(unit)}</title></rect>"
            )
        if i % layout.step == 0:
            parts.append(_tick(label, x0 + group_w / 2, axis_y + 4, layout))
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
                f"Spend per {name} ({settings.GATEWAY_CURRENCY.upper()})",
                labels,
                [("spend", [float(b.spend) for b in values])],
            ),
            bar_chart(
                f"Latency per {name}",
                labels,
                [("p50", [b.p50 for b in values]), ("p95", [b.p95 for b in values])],
                unit=" ms",
            ),
        ]
    return charts
