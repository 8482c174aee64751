"""Triton going away and coming back: the gateway answers 503 meanwhile, then serves again
on its own; and the suite's harness restarts a dev Triton that crashed (conftest.py)."""

from __future__ import annotations

import signal

from tests.api.test_openai_conformance import user
from tests.conftest import CHAT_MODEL

ATTEMPTS: dict[str, int] = {}


def test_a_dev_triton_that_dies_is_restarted_and_the_test_run_again(request, devtriton, http):
    attempt = ATTEMPTS[request.node.nodeid] = ATTEMPTS.get(request.node.nodeid, 0) + 1
    body = {"model": CHAT_MODEL, "messages": user("[[say:back]]"), "max_tokens": 10}
    if attempt == 1:
        devtriton.process.send_signal(signal.SIGKILL)  # as a crash would
        devtriton.process.wait()
        response = http.post("/v1/chat/completions", json=body)
        # Triton is gone: OpenAI's 503, which the SDKs retry.
        assert response.status_code == 503, response.text
        assert response.json()["error"]["type"] == "server_error"
        assert response.headers["retry-after"]
        raise AssertionError("the first run ends here, failing, with the dev Triton down")
    # The harness restarted the dev Triton on the same ports and waited for the gateway,
    # which reconnected by itself: the same session gateway serves again.
    assert attempt == 2 and not devtriton.crashed
    response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "back"
