"""Where an endpoint's prepare phase runs: on the event loop, or in a bounded thread pool.

Rendering a chat template and tokenizing are CPU work proportional to the prompt.
On the event loop a long prompt holds up every other request of the process for as
long as it takes (a 19 MB prompt took 10-20 s; issue 19), so a request whose body is
larger than GATEWAY_PREPARE_INLINE_BYTES is prepared in a pool of
GATEWAY_PREPARE_THREADS threads. The tokenizer gives up the GIL while it encodes a
long text (TextModel._encode), so the loop keeps running beside it.

Small bodies stay on the loop, on purpose: handing work to a thread and waking the loop
when it is done costs ~0.05-0.1 ms of scheduling per request, more than tokenizing a
prompt of a few kilobytes (8 KiB of text: ~1-2 ms at the most for the dev tokenizer,
well under a millisecond for typical chat turns), and most requests are small.

The pool is bounded: at most GATEWAY_PREPARE_THREADS prompts are prepared at once per
process; the others wait their turn (their bodies are in memory already, and the
early refusal of text that cannot fit, limits.prompt_chars_check, keeps each job within
what the model's context could hold).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from django.conf import settings
from django.http import HttpRequest

T = TypeVar("T")


def inline(request: HttpRequest) -> bool:
    """Whether `request` is small enough to prepare on the event loop."""
    return len(request.body) <= settings.GATEWAY_PREPARE_INLINE_BYTES


@functools.cache
def _pool(threads: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=max(threads, 1), thread_name_prefix="prepare")


async def off_loop(function: Callable[..., T], *args: object) -> T:
    """`function(*args)` in the prepare pool. A cancelled request stops waiting; the
    thread finishes the job and its result is dropped."""
    loop = asyncio.get_running_loop()
    pool = _pool(settings.GATEWAY_PREPARE_THREADS)
    # In the request's context (run_in_executor passes none): log lines and trace spans
    # made while preparing still carry the request's fields (llmgateway/context.py).
    work = functools.partial(contextvars.copy_context().run, function, *args)
    return await loop.run_in_executor(pool, work)
