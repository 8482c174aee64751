"""SSE framing: the preformatted text chunks are byte for byte the generic ones."""

from __future__ import annotations

import pytest

from llmgateway.api.sse import ChunkFrame

TEXTS = ["Hello", " wörld", '"quoted"\n\\', "👍 \u2028 \x00", ""]


@pytest.mark.parametrize("usage_null", [True, False])
@pytest.mark.parametrize("text", TEXTS)
def test_text_chunks_equal_the_generic_chunk(text: str, usage_null: bool) -> None:
    frame = ChunkFrame(
        {"id": "chatcmpl-1", "object": "chat.completion.chunk"}, usage_null=usage_null
    )
    chat = frame.text_chunks(
        b'{"index":%d,"delta":{"content":', b'},"logprobs":null,"finish_reason":null}'
    )
    legacy = frame.text_chunks(b'{"index":%d,"text":', b',"logprobs":null,"finish_reason":null}')
    for index in (0, 3, 0):
        assert chat(index, text) == frame.choice(
            {"index": index, "delta": {"content": text}, "logprobs": None, "finish_reason": None}
        )
        assert legacy(index, text) == frame.choice(
            {"index": index, "text": text, "logprobs": None, "finish_reason": None}
        )
