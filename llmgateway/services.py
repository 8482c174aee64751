"""Model lookups and engines, cached per process.

A ModelConfig read costs a database round trip and a thread hop; at hundreds
of requests per second that is most of the gateway's overhead. Rows are cached
for MODEL_CACHE_SECONDS, so an admin change (or disabling a model) takes effect
on every replica within that time, and reloaded ahead of expiry while in use
(llmgateway/cache.py). Engines are rebuilt when a row changes.
"""

from __future__ import annotations

import asyncio

from django.conf import settings

from llmgateway.cache import RowCache
from llmgateway.db import orm
from llmgateway.engine import Engine, load_engine
from llmgateway.models import ModelConfig

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


_rows: RowCache[ModelConfig | None] = RowCache(_enabled_model, ttl=_ttl)
_all: RowCache[list[ModelConfig]] = RowCache(_enabled_models, ttl=_ttl)


async def model_get(*, name: str) -> ModelConfig | None:
    """The enabled config called `name`, or None."""
    return await _rows.get(name, name)


async def model_list() -> list[ModelConfig]:
    return await _all.get(None)


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
