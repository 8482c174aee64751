"""The Admin API under /v1/organization/, shaped like OpenAI's Administration and Usage
APIs (docs/admin-api.md): projects, their API keys, service accounts and rate limits,
usage and costs. Authenticated by admin keys only (auth.py).

Routes parse, call a service of accounts/projects.py or accounts/usage_api.py through
orm(), and shape the answer (objects.py). Updates are POSTs, deletes answer
`<type>.deleted`, every success is a 200, lists page by `after`, usage and costs by
`page`.
"""

from __future__ import annotations

from accounts.admin_api.projects import router as projects_router
from accounts.admin_api.usage import router as usage_router

__all__ = ["projects_router", "usage_router"]
