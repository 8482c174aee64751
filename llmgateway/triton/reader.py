"""A Triton stream read on a thread of its own, handed to the event loop in batches.

grpc.aio reads one message per operation, each a round trip from the event loop
through gRPC's completion queue and back: one wake-up of the request's task per
token, however far behind the loop is. Here a thread iterates the call (gRPC's sync
API) and queues what arrives; the loop is woken once for whatever queued since it
last looked, and the engine makes one delta (one SSE event) of those tokens.

Unloaded that is one message per wake-up, as with grpc.aio, handed on by one more
thread (measured: no cheaper, sometimes dearer). It pays when the event loop is the
bottleneck: a stream's tokens that arrived while the loop was busy cost it one
wake-up and one write together (docs/performance.md, "Streaming capacity"). Chosen
with TRITON_STREAM_READER=thread; grpc.aio stays the default.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
from typing import Any

import grpc

# What read_batch returns after the last message (the same sentinel as grpc.aio's).
EOF_ = grpc.aio.EOF


class ThreadedCall:
    """One ModelStreamInfer call iterated on a daemon thread.

    `read_batch()` returns every item queued so far (messages, then EOF_ or the
    grpc.RpcError that ended the call), waiting only when there is none. `cancel()`
    may be called from the loop at any time (gRPC's sync calls are thread-safe); the
    thread then ends on the call's CANCELLED error, which nobody reads.
    """

    __slots__ = ("_call", "_queue", "_loop", "_waiter", "_scheduled")

    def __init__(
        self, multicallable: Any, request: Any, *, timeout: float, metadata: Any = None
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue: collections.deque = collections.deque()
        self._waiter: asyncio.Future | None = None
        self._scheduled = False
        # The sync call starts the RPC at once; iterating it reads the responses.
        self._call = multicallable(request, timeout=timeout, metadata=metadata)
        threading.Thread(target=self._pump, name="triton-stream", daemon=True).start()

    def cancel(self) -> None:
        self._call.cancel()

    async def read_batch(self) -> list:
        queue = self._queue
        while not queue:
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        # popleft, not a copy and clear: the thread may append meanwhile.
        return [queue.popleft() for _ in range(len(queue))]

    def _pump(self) -> None:
        try:
            for message in self._call:
                self._put(message)
            self._put(EOF_)
        except grpc.RpcError as exc:
            self._put(exc)
        except Exception as exc:  # a response that does not parse: the reader must not hang
            self._put(exc)

    def _put(self, item: Any) -> None:
        self._queue.append(item)
        # One wake-up scheduled at a time: it reads whatever is queued when it runs.
        # Appended before the flag is read, so a wake-up already scheduled sees the item.
        if not self._scheduled:
            self._scheduled = True
            # RuntimeError: the loop is closed, nobody is reading.
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        self._scheduled = False
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
