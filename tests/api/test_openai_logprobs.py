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


# ---- logprobs cover exactly the text returned --------------------------------------


def check_chunk_logprobs(chunks) -> None:
    """No chunk carries logprobs without text, nor empty logprobs alone; with the dev
    model's one-character tokens, a chunk's tokens are exactly its text."""
    for chunk in chunks:
        for choice in chunk.choices:
            if choice.logprobs is None:
                continue
            text = choice.delta.content or ""
            assert text, f"logprobs without text: {choice}"
            raw = b"".join(bytes(t.bytes) for t in choice.logprobs.content)
            assert raw == text.encode()


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize(
    "text, stop, returned",
    [
        ("Hello world", ["wor"], "Hello "),
        ("é is not ée", ["ée"], "é is not "),  # a stop string's first bytes are held
        ("EN-not-a-stop END never", ["END"], "EN-not-a-stop "),  # a held prefix is sent
        ("ab👍", None, "ab👍"),
    ],
)
def test_chat_logprobs_cover_the_returned_text(client, model, text, stop, returned):
    args = dict(model=model, messages=user(say(text)), logprobs=True, stop=stop, seed=7)
    result = client.chat.completions.create(**args)
    assert result.choices[0].message.content == returned
    tokens = chat_logprobs(result)
    assert tokens == byte_tokens(returned)
    chunks = list(client.chat.completions.create(**args, stream=True))
    check_chunk_logprobs(chunks)
    streamed = streamed_chat_logprobs(chunks)
    plain = [(t.token, t.bytes, t.logprob) for t in result.choices[0].logprobs.content]
    assert streamed == plain


def test_chat_logprobs_raw_stream_has_no_logprobs_only_chunks(http):
    body = {
        "model": CHAT_MODEL,
        "messages": user(say("Hello world")),
        "stop": ["wor"],
        "logprobs": True,
    }
    events = raw_stream(http, "/v1/chat/completions", body)
    for event in events:
        for choice in event["choices"]:
            assert choice["delta"] or choice["finish_reason"], event
            if choice.get("logprobs") is not None:
                assert choice["delta"].get("content"), event
    text = "".join(c["delta"].get("content") or "" for e in events for c in e["choices"])
    assert text == "Hello "


def test_a_token_straddling_the_cut_is_kept(client):
    # The seeded answer is tokenized as text: " token" is one token, and the stop
    # string "kenize" cuts it. Its text starts before the cut, so it is listed; the
    # tokens after it are not.
    args = dict(
        model=CHAT_MODEL,
        messages=user("the tokenizer works"),
        stop=["kenize"],
        logprobs=True,
        seed=3,
    )
    result = client.chat.completions.create(**args)
    assert result.choices[0].message.content == "You said: the to"
    names = [t.token for t in result.choices[0].logprobs.content]
    assert names == ["You", " s", "a", "id", ":", " the", " token"]
    chunks = list(client.chat.completions.create(**args, stream=True))
    streamed = streamed_chat_logprobs(chunks)
    assert [name for name, _, _ in streamed] == names
    for chunk in chunks:
        for choice in chunk.choices:
            assert choice.logprobs is None or choice.delta.content


@pytest.mark.parametrize("model", MODELS)
def test_completion_logprobs_cover_the_returned_text(client, model):
    args = dict(model=model, prompt=say("Hello é world"), logprobs=1, stop=["wor"], seed=5)
    result = client.completions.create(**args)
    choice = result.choices[0]
    assert choice.text == "Hello é "
    logprobs = choice.logprobs
    assert logprobs.tokens == [name for name, _ in byte_tokens("Hello é ")]
    assert logprobs.text_offset == [0, 1, 2, 3, 4, 5, 6, 6, 7]
    assert all(offset < len(choice.text) for offset in logprobs.text_offset)
    assert len(logprobs.token_logprobs) == len(logprobs.top_logprobs) == len(logprobs.tokens)

    chunks = list(client.completions.create(**args, stream=True))
    streamed: list[tuple[str, float, int]] = []
    for chunk in chunks:
        for c in chunk.choices:
            if c.logprobs is None:
                continue
            assert c.text and c.logprobs.tokens, chunk
            streamed += zip(
                c.logprobs.tokens, c.logprobs.token_logprobs, c.logprobs.text_offset, strict=True
            )
    plain = list(zip(logprobs.tokens, logprobs.token_logprobs, logprobs.text_offset, strict=True))
    assert streamed == plain


def test_logprobs_leave_out_a_character_cut_by_the_limit(client):
    # max_tokens ends the answer after "a" and the first byte of "é": the character is
    # dropped from the text, so is its byte token.
    args = dict(model=CHAT_MODEL, messages=user(say("aé")), logprobs=True, max_tokens=2)
    result = client.chat.completions.create(**args)
    assert result.choices[0].message.content == "a"
    assert result.choices[0].finish_reason == "length"
    assert chat_logprobs(result) == [("a", [97])]
    chunks = list(client.chat.completions.create(**args, stream=True))
    check_chunk_logprobs(chunks)
    assert [(n, r) for n, r, _ in streamed_chat_logprobs(chunks)] == [("a", [97])]


def test_tool_call_logprobs_stream_as_they_are_returned(client):
    weather = {
        "type": "function",
        "function": {"name": "get_weather", "parameters": {"type": "object"}},
    }
    args = dict(
        model=CHAT_MODEL,
        messages=user('[[tool:get_weather:{"city": "Zürich"}]]'),
        tools=[weather],
        logprobs=True,
    )
    result = client.chat.completions.create(**args)
    assert result.choices[0].message.tool_calls
    plain = [(t.token, t.bytes, t.logprob) for t in result.choices[0].logprobs.content]
    assert b"".join(bytes(raw) for _, raw, _ in plain).decode().startswith("Thought:")
    chunks = list(client.chat.completions.create(**args, stream=True))
    assert streamed_chat_logprobs(chunks) == plain
    for chunk in chunks:
        for choice in chunk.choices:
            delta = choice.delta
            if choice.logprobs is not None:  # never logprobs alone
                assert delta.content or delta.tool_calls or choice.finish_reason, chunk
