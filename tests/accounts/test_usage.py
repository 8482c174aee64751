"""The usage page's SVG charts: every x label whole, with its tooltip, none overlapping
(by the layout's own geometry; the browser test measures the rendered text)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import date, timedelta

from accounts.usage import CHAR_W, MAX_LABEL_CHARS, VERTICAL_PITCH, bar_chart

SVG = "{http://www.w3.org/2000/svg}"


def ticks(svg: str) -> list[tuple[str, str, float, bool]]:
    """(tooltip, text, x, vertical) of each drawn x label."""
    root = ET.fromstring(svg)
    found = []
    for group in root.iter(f"{SVG}g"):
        if group.get("class") != "tick":
            continue
        text = group.find(f"{SVG}text")
        vertical = "rotate(-90" in (text.get("transform") or "")
        found.append((group.find(f"{SVG}title").text, text.text, float(text.get("x")), vertical))
    return found


def chart(labels: list[str]) -> str:
    return str(bar_chart("t", labels, [("requests", [1.0] * len(labels))]))


def test_fourteen_days_are_drawn_whole_and_apart():
    days = [(date(2025, 1, 25) + timedelta(days=i)).isoformat() for i in range(14)]
    drawn = ticks(chart(days))
    assert [text for _, text, _, _ in drawn] == days
    assert [title for title, _, _, _ in drawn] == days
    xs = [x for _, _, x, _ in drawn]
    vertical = drawn[0][3]
    # Across, each label is narrower than the room between ticks; upright, a line apart.
    room = VERTICAL_PITCH if vertical else len(days[0]) * CHAR_W
    assert all(b - a >= room for a, b in zip(xs, xs[1:], strict=False)), xs


def test_model_names_are_not_cut():
    models = ["qwen1.5-chat", *(f"model-{i}-with-a-long-name" for i in range(11))]
    drawn = ticks(chart(models))
    assert [text for _, text, _, _ in drawn] == models
    assert drawn[0][3], "names wider than their bars are drawn upright"
    svg = ET.fromstring(chart(models))
    assert float(svg.get("height")) >= 24 + 156 + len(models[1]) * CHAR_W


def test_ninety_days_are_thinned_not_overlapped():
    days = [(date(2025, 1, 1) + timedelta(days=i)).isoformat() for i in range(90)]
    drawn = ticks(chart(days))
    shown = [text for _, text, _, _ in drawn]
    step = days.index(shown[1])
    assert shown == days[::step] and 1 < step <= 3
    xs = [x for _, _, x, _ in drawn]
    assert all(b - a >= VERTICAL_PITCH for a, b in zip(xs, xs[1:], strict=False))


def test_a_very_long_label_is_shortened_in_the_middle_with_the_whole_tooltip():
    label = "sk-gw-" + "x" * 30 + "-the-end-of-a-very-long-model-name"
    ((title, text, _, _),) = ticks(chart([label, *("m" * 50 for _ in range(20))]))[:1]
    assert title == label
    assert len(text) == MAX_LABEL_CHARS - 1 and "…" in text
    assert text.startswith("sk-gw-") and text.endswith("model-name")


def test_labels_are_escaped():
    (title, text, _, _), *_ = ticks(chart(["<b>&"]))
    assert title == text == "<b>&"
