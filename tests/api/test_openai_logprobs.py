"""Logprobs over /v1/chat/completions and /v1/completions, as OpenAI shapes them:
each token's real bytes, and tokens covering exactly the text returned."""

from __future__ import annotations

import pytest

from tests.api.test_openai_conformance import TOK, raw_stream, say, user
from tests.api.test_openai_conformance import client as client  # the fixture
from tests.conftest import CHAT_MODEL, V08_MODEL

MODELS = [CHAT_MODEL, V08_MODEL]


def byte_tokens(text: str) -> list[tuple[str, list[int]]]:
    """(token, bytes) the dev model answers [[say:text]] with: one character at a time,
    a multi-byte character one byte token per byte (the dev tokenizer is byte-level BPE)."""
    out = []
    for char in text:
        for token in TOK.encode(char).ids:
            raw = bytes(TOK.id_to_token(token).translate(_BYTE_LEVEL), "latin-1")
            try:
                name = raw.decode("utf-8")
            except UnicodeDecodeError:
                name = "bytes:" + raw.decode("utf-8", "backslashreplace")
            out.append((name, list(raw)))
    return out


def _byte_level() -> dict[int, int]:
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = {b: b for b in printable}
    for offset, byte in enumerate(b for b in range(256) if b not in table):
        table[0x100 + offset] = byte
    return table


_BYTE_LEVEL = _byte_level()


def chat_logprobs(result) -> list[tuple[str, list[int]]]:
    return [(t.token, t.bytes) for t in result.choices[0].logprobs.content]


def streamed_chat_logprobs(chunks, index: int = 0) -> list[tuple[str, list[int], float]]:
    return [
        (t.token, t.bytes, t.logprob)
        for chunk in chunks
        for choice in chunk.choices
        if choice.index == index and choice.logprobs
        for t in choice.logprobs.content
    ]


# ---- token bytes -------------------------------------------------------------------


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("text", ["Hi é", "é👍", "naïve 你好 🎉!"])
def test_chat_logprobs_carry_each_tokens_real_bytes(client, model, text):
    args = dict(model=model, messages=user(say(text)), logprobs=True)
    result = client.chat.completions.create(**args)
    assert result.choices[0].message.content == text
    tokens = chat_logprobs(result)
    assert tokens == byte_tokens(text)
    assert b"".join(bytes(raw) for _, raw in tokens).decode() == text
    assert all("\ufffd" not in name for name, _ in tokens)
    # A byte token that is not UTF-8 on its own is named by its bytes, as OpenAI does.
    assert ("bytes:\\xc3", [0xC3]) in tokens or "é" not in text

    chunks = list(client.chat.completions.create(**args, stream=True))
    streamed = streamed_chat_logprobs(chunks)
    assert [(name, raw) for name, raw, _ in streamed] == tokens
    plain = [t.logprob for t in result.choices[0].logprobs.content]
    assert [lp for _, _, lp in streamed] == plain


def test_chat_logprobs_bytes_on_the_wire(http):
    body = {"model": CHAT_MODEL, "messages": user(say("é👍")), "logprobs": True}
    content = http.post("/v1/chat/completions", json=body).json()["choices"][0]["logprobs"][
        "content"
    ]
    assert [t["bytes"] for t in content] == [[0xC3], [0xA9], [0xF0], [0x9F], [0x91], [0x8D]]
    assert [t["token"] for t in content][:2] == ["bytes:\\xc3", "bytes:\\xa9"]
    events = raw_stream(http, "/v1/chat/completions", body)
    streamed = [
        t
        for e in events
        for c in e["choices"]
        if c.get("logprobs")
        for t in c["logprobs"]["content"]
    ]
    assert streamed == content


@pytest.mark.parametrize("model", MODELS)
def test_completion_logprobs_carry_each_tokens_bytes(client, model):
    text = "Hi é👍!"
    args = dict(model=model, prompt=say(text), logprobs=1, max_tokens=40)
    result = client.completions.create(**args)
    choice = result.choices[0]
    assert choice.text == text
    expected = byte_tokens(text)
    assert choice.logprobs.tokens == [name for name, _ in expected]
    assert [list(top) for top in choice.logprobs.top_logprobs] == [[n] for n, _ in expected]
    # text_offset counts characters; a token that continues a character starts at it.
    assert choice.logprobs.text_offset == [0, 1, 2, 3, 3, 4, 4, 4, 4, 5]
    chunks = list(client.completions.create(**args, stream=True))
    streamed = [
        (name, offset)
        for chunk in chunks
        for c in chunk.choices
        if c.logprobs
        for name, offset in zip(c.logprobs.tokens, c.logprobs.text_offset, strict=True)
    ]
    assert streamed == list(zip(choice.logprobs.tokens, choice.logprobs.text_offset, strict=True))
