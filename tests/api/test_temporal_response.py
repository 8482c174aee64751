"""Ninja's temporal response, built only on first use (llmgateway/api/__init__.py)."""

from __future__ import annotations

from django.test import RequestFactory

from llmgateway.api import TemporalResponse, build_api


def test_an_unused_temporal_response_is_never_built():
    response = TemporalResponse("application/json; charset=utf-8")
    assert response  # Ninja tests it for truth before use
    assert response.status_code == 200
    assert "headers" not in vars(response)


def test_a_used_temporal_response_behaves_as_ninjas_own():
    """Ninja's path for a view returning data: status, then body, then headers."""
    api = build_api()
    request = RequestFactory().get("/")
    temporal = api.create_temporal_response(request)
    assert isinstance(temporal, TemporalResponse)
    temporal.status_code = 201  # set before anything else builds it
    temporal["x-extra"] = "1"
    lazy = api.create_response(request, {"a": "é"}, temporal_response=temporal)
    eager = api.create_response(request, {"a": "é"}, status=201)
    eager["x-extra"] = "1"
    assert (lazy.status_code, lazy.content, list(lazy.items())) == (
        eager.status_code,
        eager.content,
        list(eager.items()),
    )


def test_a_body_written_before_the_headers_are_read_survives():
    response = TemporalResponse("application/json; charset=utf-8")
    response.content = b'{"a": 1}'
    assert response["content-type"] == "application/json; charset=utf-8"
    assert response.content == b'{"a": 1}'
