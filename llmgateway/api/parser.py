from __future__ import annotations

from typing import Any

import orjson
from django.http import HttpRequest
from ninja.parser import Parser

from llmgateway.api.errors import BODY_UNPARSEABLE
from llmgateway.api.storable import nul_check
from llmgateway.errors import invalid


class JSONParser(Parser):
    """JSON bodies, with OpenAI's rule that /v1 requests declare application/json.

    The seed's /generate is called as `curl -d '{...}'`, which sends a form
    content type; it keeps accepting any content type holding JSON.
    """

    def parse_body(self, request: HttpRequest) -> Any:
        if request.path.startswith("/v1/"):
            content_type = request.content_type or ""
            if content_type != "application/json":
                raise invalid(
                    f"Invalid content type {content_type or '(none)'!r}: send application/json.",
                    None,
                )
        body = request.body
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise invalid(BODY_UNPARSEABLE, None) from exc
        nul_check(body, parsed)
        return parsed
