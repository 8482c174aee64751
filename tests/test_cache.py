"""RowCache (llmgateway/cache.py): served within its ttl, reloaded ahead, one load at a time."""

from __future__ import annotations

import asyncio

import pytest

from llmgateway.cache import REFRESH_AHEAD, RowCache

TTL = 10.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Rows:
    """A loader whose loads finish when the test opens `gate`."""

    def __init__(self) -> None:
        self.version = 0
        self.loads = 0
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail = False

    async def load(self, name: str) -> str:
        self.loads += 1
        version = self.version
        await self.gate.wait()
        if self.fail:
            raise RuntimeError("database down")
        return f"{name}@{version}"


def cache_for(rows: Rows, clock: Clock) -> RowCache[str]:
    return RowCache(rows.load, ttl=lambda: TTL, clock=clock)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_an_entry_is_served_until_it_is_due_for_a_reload():
    rows, clock = Rows(), Clock()
    cache = cache_for(rows, clock)
    assert await cache.get("m", "m") == "m@0"
    rows.version = 1
    clock.now += TTL * REFRESH_AHEAD * 0.9
    assert await cache.get("m", "m") == "m@0"
    await settle()
    assert rows.loads == 1


async def test_an_entry_due_for_a_reload_is_served_while_one_reload_runs_beside_it():
    rows, clock = Rows(), Clock()
    cache = cache_for(rows, clock)
    await cache.get("m", "m")
    rows.version, rows.gate = 1, asyncio.Event()
    clock.now += TTL * (REFRESH_AHEAD + 1) / 2
    # Served at once from the cache, however long the reload takes.
    assert await asyncio.wait_for(cache.get("m", "m"), 1) == "m@0"
    assert await asyncio.wait_for(cache.get("m", "m"), 1) == "m@0"
    await settle()
    assert rows.loads == 2  # one reload for both requests
    rows.gate.set()
    await settle()
    assert await cache.get("m", "m") == "m@1"
    assert rows.loads == 2


async def test_an_expired_entry_is_never_served_and_waiters_share_one_load():
    rows, clock = Rows(), Clock()
    cache = cache_for(rows, clock)
    await cache.get("m", "m")
    rows.version, rows.gate = 1, asyncio.Event()
    clock.now += TTL
    waiting = [asyncio.ensure_future(cache.get("m", "m")) for _ in range(5)]
    await settle()
    assert not any(w.done() for w in waiting)
    rows.gate.set()
    assert await asyncio.gather(*waiting) == ["m@1"] * 5
    assert rows.loads == 2


async def test_a_waiter_leaving_does_not_cancel_the_load_others_wait_for():
    rows, clock = Rows(), Clock()
    cache = cache_for(rows, clock)
    rows.gate.clear()
    leaving = asyncio.ensure_future(cache.get("m", "m"))
    staying = asyncio.ensure_future(cache.get("m", "m"))
    await settle()
    leaving.cancel()
    await settle()
    rows.gate.set()
    assert await staying == "m@0"
    assert rows.loads == 1


async def test_a_failed_load_raises_to_its_waiters_and_a_failed_reload_lets_the_entry_expire(
    caplog,
):
    rows, clock = Rows(), Clock()
    cache = cache_for(rows, clock)
    rows.fail = True
    with pytest.raises(RuntimeError):
        await cache.get("m", "m")
    rows.fail = False
    assert await cache.get("m", "m") == "m@0"
    rows.fail, rows.version = True, 1
    clock.now += TTL * (REFRESH_AHEAD + 1) / 2
    assert await cache.get("m", "m") == "m@0"  # the reload ahead fails beside it
    await settle()
    assert "loading 'm' failed" in caplog.text
    clock.now += TTL
    with pytest.raises(RuntimeError):
        await cache.get("m", "m")


async def test_keys_are_cached_apart_and_the_cache_is_bounded():
    rows, clock = Rows(), Clock()
    cache = RowCache(rows.load, ttl=lambda: TTL, clock=clock, max_entries=2)
    assert [await cache.get(k, k) for k in ("a", "b", "a")] == ["a@0", "b@0", "a@0"]
    assert rows.loads == 2
    await cache.get("c", "c")  # full: cleared first
    await cache.get("a", "a")
    assert rows.loads == 4
