"""Model lookups and engines, cached per process.

A ModelConfig read costs a database round trip and a thread hop; at hundreds
of requests per second that is most of the gateway's overhead. Rows are cached
for MODEL_CACHE_SECONDS, so an admin change (or disabling a model) takes effect
on every replica within that time. Engines are rebuilt when a row changes.
"""

from __future__ import annotations

import asyncio
import time

from django.conf import settings

from llmgateway.db import orm
from llmgateway.engine import Engine, load_engine
from llmgateway.models import ModelConfig

_rows: dict[str, tuple[float, ModelConfig | None]] = {}
_all: tuple[float, list[ModelConfig]] | None = None
_engines: dict[tuple[int, float], Engine] = {}
_engine_locks: dict[tuple[int, float], asyncio.Lock] = {}


def _ttl() -> float:
    return float(getattr(settings, "MODEL_CACHE_SECONDS", 1.0))


@orm
def _enabled_model(name: str) -> ModelConfig | None:
    return ModelConfig.objects.filter(name=name, enabled=True).first()


@orm
def _enabled_models() -> list[ModelConfig]:
    return list(ModelConfig.objects.filter(enabled=True).order_by("name"))


async def model_get(*, name: str) -> ModelConfig | None:
    """The enabled config called `name`, or None."""
    now = time.monotonic()
    hit = _rows.get(name)
    if hit is not None and now - hit[0] < _ttl():
        return hit[1]
    row = await _enabled_model(name)
    _rows[name] = (now, row)
    return row


async def model_list() -> list[ModelConfig]:
    global _all
    now = time.monotonic()
    if _all is not None and now - _all[0] < _ttl():
        return _all[1]
    rows = await _enabled_models()
    _all = (now, rows)
    return rows


async def engine_get(*, config: ModelConfig) -> Engine:
    key = config.cache_key
    engine = _engines.get(key)
    if engine is not None:
        return engine
    lock = _engine_locks.setdefault(key, asyncio.Lock())
    async with lock:
        engine = _engines.get(key)
        if engine is None:
            for old in [k for k in _engines if k[0] == key[0]]:
                del _engines[old]
            engine = await load_engine(
                name=config.name,
                tokenizer_path=config.tokenizer_path,
                triton_url=config.triton_url,
                triton_model=config.triton_model,
                trust_remote_code=config.trust_remote_code,
            )
            _engines[key] = engine
    return engine


def model_upsert(**fields) -> ModelConfig:
    """Create or update the config called fields['name'] (used by `serve` and the demo)."""
    name = fields.pop("name")
    config, _ = ModelConfig.objects.update_or_create(name=name, defaults=fields)
    return config
