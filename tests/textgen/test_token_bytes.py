"""Each token's own bytes, for logprobs: byte-level BPE, SentencePiece byte fallback,
a tokenizer shipped as code, and a vocabulary of bytes (tiktoken)."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, decoders, models
from transformers import PreTrainedTokenizerFast

from llmgateway.textgen.token_bytes import token_name, token_pieces_build
from llmgateway.textgen.tokenizer import load_text_model
from tests.conftest import TOKENIZER
from tests.textgen.test_remote_code import remote_tokenizer_dir


def pieces_of(text_model, text: str) -> list[tuple[str, bytes]]:
    pieces = text_model.token_pieces
    return [(pieces.names[i], pieces.raw[i]) for i in text_model.encode(text)]


def test_byte_level_tokens_keep_their_bytes():
    text_model = load_text_model(TOKENIZER)
    text = "Héllo 你好 👍 naïve"
    got = pieces_of(text_model, text)
    assert b"".join(raw for _, raw in got) == text.encode()
    assert ("bytes:\\xc3", b"\xc3") in got and ("bytes:\\xf0", b"\xf0") in got
    assert all("\ufffd" not in name for name, _ in got)
    # Tokens that are text on their own are named by it, the same as decoding them.
    for token, (name, raw) in zip(text_model.encode(text), got, strict=True):
        if not name.startswith("bytes:"):
            assert name == text_model.decode([token]) and raw == name.encode()
    # Built when the model loads: every token has its entry, added tokens as their text.
    pieces = text_model.token_pieces
    assert len(pieces) == len(text_model.tokenizer)
    assert pieces.raw[text_model.end_id] == b"<|im_end|>"


def test_a_tokenizer_shipped_as_code_over_a_byte_level_vocabulary(tmp_path):
    remote = load_text_model(str(remote_tokenizer_dir(tmp_path / "tok")), trust_remote_code=True)
    reference = load_text_model(TOKENIZER)
    assert remote.token_pieces == reference.token_pieces


def byte_fallback_tokenizer(decoder) -> PreTrainedTokenizerFast:
    """A Llama-style SentencePiece BPE: `▁` for spaces, `<0xNN>` for bytes it has no token for."""
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({f"<0x{b:02X}>": 3 + b for b in range(256)})
    vocab.update({"▁Hello": 259, "▁wor": 260, "ld": 261, "é": 262, "▁": 263})
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], byte_fallback=True, unk_token="<unk>"))
    tokenizer.decoder = decoder
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )


@pytest.mark.parametrize(
    "decoder",
    [
        decoders.Sequence(
            [
                decoders.Replace("▁", " "),
                decoders.ByteFallback(),
                decoders.Fuse(),
                decoders.Strip(" ", 1, 0),
            ]
        ),
        decoders.Sequence([decoders.Metaspace(), decoders.ByteFallback(), decoders.Fuse()]),
    ],
    ids=["replace", "metaspace"],
)
def test_sentencepiece_byte_fallback_tokens_are_their_byte(decoder):
    pieces = token_pieces_build(byte_fallback_tokenizer(decoder))
    assert (pieces.names[3 + 0xC3], pieces.raw[3 + 0xC3]) == ("bytes:\\xc3", b"\xc3")
    assert (pieces.names[3 + 0x41], pieces.raw[3 + 0x41]) == ("A", b"A")
    assert (pieces.names[259], pieces.raw[259]) == (" Hello", b" Hello")
    assert (pieces.names[261], pieces.raw[262]) == ("ld", "é".encode())
    assert pieces.raw[263] == b" "


class BytesVocabulary:
    """The parts of Qwen-VL's tiktoken tokenizer that token pieces use: a vocabulary of
    bytes, and special tokens outside it."""

    ranks = {b"H": 0, b"\xc3": 1, b"\xa9": 2, b" \xf0\x9f": 3, "é".encode(): 4}
    special = {5: "<|im_end|>"}

    def get_vocab(self) -> dict[bytes, int]:
        return dict(self.ranks)

    def __len__(self) -> int:
        return len(self.ranks) + len(self.special)

    def decode(self, ids: list[int]) -> str:
        return "".join(self.special.get(i, "") for i in ids)


def test_a_vocabulary_of_bytes_is_used_as_it_is():
    pieces = token_pieces_build(BytesVocabulary())
    assert pieces.raw == (b"H", b"\xc3", b"\xa9", b" \xf0\x9f", "é".encode(), b"<|im_end|>")
    assert pieces.names == (
        "H",
        "bytes:\\xc3",
        "bytes:\\xa9",
        "bytes: \\xf0\\x9f",
        "é",
        "<|im_end|>",
    )


def test_token_names():
    assert token_name(b"abc") == "abc"
    assert token_name("é".encode()) == "é"
    assert token_name(b"\xe4\xbd") == "bytes:\\xe4\\xbd"
