"""WhiteNoise for the admin's static files, usable in the async middleware chain.

WhiteNoiseMiddleware is sync-only; inside admin_middleware (which builds its chain
without Django's sync/async adaptation) it would receive a coroutine. Finding a
file is a dictionary or filesystem lookup, so the async path does it inline.
"""

from __future__ import annotations

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
        if static_file is not None:
            return self.serve(static_file, request)
        return await self.get_response(request)
