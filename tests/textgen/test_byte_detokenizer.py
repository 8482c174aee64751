"""The byte-level detokenizer gives the windowed one's text, token for token."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from llmgateway.textgen.detokenizer import REPLACEMENT, ByteDetokenizer, IncrementalDetokenizer
from llmgateway.textgen.tokenizer import load_text_model

TOKENIZER = str(Path(__file__).resolve().parents[2] / "llmgateway" / "devtriton" / "tokenizer")
TEXTS = ["Hello world, plain ASCII.", "Héllo 你好世界 👍🎉 naïve", "日本語\nand 🧑‍🚀 astronaut"]


@pytest.fixture(scope="module")
def text_model():
    model = load_text_model(TOKENIZER)
    assert model.stream_bytes is not None  # the dev tokenizer is byte-level
    return model


def both(text_model, prompt=()):
    return (
        ByteDetokenizer(text_model.stream_bytes, text_model.special_ids),
        IncrementalDetokenizer(text_model.tokenizer, text_model.special_ids, list(prompt)),
    )


def char_by_char_ids(text_model, text: str) -> list[int]:
    return [i for ch in text for i in text_model.encode(ch)]


@pytest.mark.parametrize("text", TEXTS)
def test_pieces_equal_the_windowed_detokenizer(text_model, text):
    ids = char_by_char_ids(text_model, text) + text_model.encode(text)
    fast, windowed = both(text_model)
    pieces = [fast.push([i]) for i in ids] + [fast.flush()]
    assert pieces == [windowed.push([i]) for i in ids] + [windowed.flush()]
    assert "".join(pieces) == text + text
    assert all(REPLACEMENT not in p for p in pieces)


def test_split_character_is_held_and_a_cut_one_dropped(text_model):
    ids = char_by_char_ids(text_model, "你")
    fast, _ = both(text_model)
    assert [fast.push([i]) for i in ids[:2]] == ["", ""]
    assert fast.flush() == ""  # cut off by the output limit: never U+FFFD
    fast, _ = both(text_model)
    assert fast.push(ids[:1]) + fast.push(ids[1:]) == "你"


def test_special_tokens_are_never_rendered(text_model):
    fast, _ = both(text_model)
    ids = text_model.encode("done") + [text_model.end_id]
    assert fast.push(ids) + fast.flush() == "done"
    assert fast.push([len(text_model.stream_bytes) + 5]) == ""  # a padded-vocabulary id


def test_random_ids_join_to_the_tokenizers_decode(text_model):
    """Arbitrary neighbours make invalid byte runs: the same U+FFFD as decode, held at
    the end, pushed one by one or in batches."""
    rng = random.Random(16)
    vocab = len(text_model.stream_bytes)
    for _ in range(50):
        ids = [rng.randrange(vocab) for _ in range(rng.randrange(1, 40))]
        fast, windowed = both(text_model)
        cut = rng.randrange(len(ids) + 1)
        joined = fast.push(ids[:cut]) + "".join(fast.push([i]) for i in ids[cut:]) + fast.flush()
        expected = "".join(windowed.push([i]) for i in ids) + windowed.flush()
        assert joined == expected
