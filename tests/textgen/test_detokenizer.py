from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from llmgateway.textgen.detokenizer import REPLACEMENT, IncrementalDetokenizer
from llmgateway.textgen.tokenizer import load_text_model

TOKENIZER = str(Path(__file__).resolve().parents[2] / "llmgateway" / "devtriton" / "tokenizer")


@pytest.fixture(scope="module")
def text_model():
    return load_text_model(TOKENIZER)


def char_by_char_ids(text_model, text: str) -> list[int]:
    return [i for ch in text for i in text_model.encode(ch)]


@pytest.mark.parametrize(
    "text", ["Hello world, plain ASCII.", "Héllo 你好世界 👍🎉 naïve", "日本語\nand 🧑‍🚀 astronaut"]
)
def test_one_token_at_a_time_equals_full_decode(text_model, text):
    ids = char_by_char_ids(text_model, text)
    assert len(ids) > len(text.encode("utf-8")) // 4  # multi-byte chars really are split
    detok = IncrementalDetokenizer(text_model.tokenizer, text_model.special_ids)
    pieces = [detok.push([i]) for i in ids] + [detok.flush()]
    assert all(REPLACEMENT not in p for p in pieces)
    assert "".join(pieces) == text


def test_split_character_is_held_until_complete(text_model):
    ids = char_by_char_ids(text_model, "你")
    assert len(ids) == 3  # one byte per token
    detok = IncrementalDetokenizer(text_model.tokenizer, text_model.special_ids)
    assert detok.push(ids[:1]) == ""
    assert detok.push(ids[1:2]) == ""
    assert detok.push(ids[2:]) == "你"


def test_special_tokens_are_never_rendered(text_model):
    detok = IncrementalDetokenizer(text_model.tokenizer, text_model.special_ids)
    ids = text_model.encode("done") + [text_model.end_id]
    assert detok.push(ids) + detok.flush() == "done"


@pytest.mark.parametrize("as_tensor", [False, True], ids=["list", "int32-tensor"])
def test_prompt_context_keeps_the_leading_space(text_model, as_tensor):
    """Also when the prompt's ids are Triton's int32 tensor, which a prepared request
    holds instead of the list (GenerationRequest.input_ids), special ids included."""
    prompt = text_model.encode("Say hi") + [text_model.end_id]
    if as_tensor:
        prompt = np.asarray(prompt, dtype=np.int32)
    ids = text_model.encode(" there friend")
    detok = IncrementalDetokenizer(text_model.tokenizer, text_model.special_ids, prompt)
    assert all(type(i) is int for i in detok._ids)
    assert "".join(detok.push([i]) for i in ids) + detok.flush() == " there friend"


def test_cost_per_token_does_not_grow_with_output(text_model):
    """The decode window stays a few tokens wide however long the output gets."""
    detok = IncrementalDetokenizer(text_model.tokenizer, text_model.special_ids)
    calls: list[int] = []
    real = detok._decode

    def counting(ids, *args, **kwargs):
        calls.append(len(ids))
        return real(ids, *args, **kwargs)

    detok._decode = counting
    ids = text_model.encode("word " * 3000)
    for i in ids:
        detok.push([i])
    assert max(calls) <= 8
