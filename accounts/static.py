"""WhiteNoise for the admin's static files, usable in the async middleware chain.

WhiteNoiseMiddleware is sync-only; inside admin_middleware (which builds its chain
without Django's sync/async adaptation) it would receive a coroutine. Finding a
file is a dictionary or filesystem lookup, so the async path does it inline.

Its file responses iterate a file synchronously, which Django's ASGI handler
serves with a warning and a thread hop per chunk; under ASGI the file is read
in one thread hop instead (admin assets are small) and served from an async
iterator.
"""

from __future__ import annotations

import asyncio
import os

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from whitenoise.middleware import WhiteNoiseMiddleware


class StaticFilesMiddleware(WhiteNoiseMiddleware):
    sync_capable = True
    async_capable = True

    def __init__(self, get_response=None) -> None:
        super().__init__(get_response)
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def add_files(self, root, prefix=None) -> None:
        if os.path.isdir(root):  # STATIC_ROOT exists only after collectstatic
            super().add_files(root, prefix)

    def __call__(self, request):
        if self.is_async:
            return self._acall(request)
        return super().__call__(request)

    async def _acall(self, request):
        find = self.find_file if self.autorefresh else self.files.get
        static_file = find(request.path_info)
        if static_file is None:
            return await self.get_response(request)
        response = self.serve(static_file, request)
        if response.streaming and not response.is_async:
            response.streaming_content = _read_once(response.streaming_content)
        return response


async def _read_once(chunks):
    yield await asyncio.to_thread(b"".join, chunks)
