"""Caps on the sizes of a request's lists, checked as soon as the body is parsed.

A list's cost grows with its length before any model work: 20,000 tools took 7.2 s
to render, 100k messages 2.4 s, 50,000 stop words 1.2 s (issue 19). Each cap is a
setting (GATEWAY_MAX_*, docs/deploy.md), and a request over one is a 400 naming the
parameter, in OpenAI's words for an array that is too long.
"""

from __future__ import annotations

from collections.abc import Sized

from django.conf import settings

from llmgateway.errors import APIError, invalid


def too_long(param: str, most: int, length: int) -> APIError:
    return invalid(
        f"Invalid '{param}': array too long. Expected an array with maximum length {most}, "
        f"but got an array with length {length} instead.",
        param,
        code="array_above_max_length",
    )


def cap(param: str, items: Sized | None, most: int) -> None:
    if items is not None and not isinstance(items, str) and len(items) > most:
        raise too_long(param, most, len(items))


def sequences_cap(param: str, count: int) -> None:
    """`n` (or beams): how many sequences one request has the model generate."""
    most = settings.GATEWAY_MAX_SEQUENCES
    if count > most:
        raise invalid(
            f"{param} is too large: {count}. At most {most} sequences are generated per request.",
            param,
        )


def stops_cap(param: str, stops: Sized | None) -> None:
    cap(param, stops, settings.GATEWAY_MAX_STOPS)
