"""GET /v1/models and /v1/models/{id}: the enabled models the caller may use."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse
from ninja import Router

from llmgateway.api.respond import json_response
from llmgateway.api.storable import nul_refused
from llmgateway.errors import model_not_found
from llmgateway.models import ModelConfig
from llmgateway.runner.lifecycle import model_visible
from llmgateway.services import model_get, model_list

router = Router(tags=["openai"])

OWNED_BY = "llmgateway"


def _model_card(config: ModelConfig) -> dict[str, Any]:
    return {
        "id": config.name,
        "object": "model",
        "created": int(config.created_at.timestamp()) if config.created_at else 0,
        "owned_by": OWNED_BY,
        "max_model_len": config.context_length,
    }


@router.get("/models")
async def models_list(request: HttpRequest) -> HttpResponse:
    caller = getattr(request, "auth", None)  # authentication's Caller (Ninja keeps it there)
    cards = [_model_card(c) for c in await model_list() if model_visible(caller, c.name)]
    return json_response({"object": "list", "data": cards})


@router.get("/models/{path:model_id}")
async def models_retrieve(request: HttpRequest, model_id: str) -> HttpResponse:
    if "\x00" in model_id:  # PostgreSQL refuses it in the lookup (storable.py)
        raise nul_refused("model")
    config = await model_get(name=model_id)
    if config is None or not model_visible(getattr(request, "auth", None), model_id):
        raise model_not_found(model_id)
    return json_response(_model_card(config))
