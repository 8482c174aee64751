"""Train the small demo tokenizer committed in ``llmgateway/devtriton/tokenizer/``.

The dev Triton model and the gateway's tests need a real byte-level BPE tokenizer
that behaves like Qwen's (ChatML special tokens, partial-UTF-8 byte tokens) but is
small enough to commit and loads offline. Re-run with::

    python -m llmgateway.devtriton.train_tokenizer [--out DIR]

The corpus is the ASCII docstring text of the running Python's standard library,
walked in sorted order, so the output only changes when the Python version does.
Keeping the corpus ASCII-only guarantees that no merge ever fuses the bytes of a CJK
character or an emoji: those always come out as several byte tokens.
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import sysconfig
from collections.abc import Iterator
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

TOKENIZER_DIR = Path(__file__).resolve().parent / "tokenizer"

BPE_VOCAB_SIZE = 4000  # includes the 256 byte tokens
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<imgpad>"]
VOCAB_PAD_MULTIPLE = 64  # Qwen pads the embedding table; vision code reads the padded size
HIDDEN_SIZE = 64
MAX_CORPUS_CHARS = 6_000_000  # enough for 4k merges, keeps training to a few seconds

# Qwen1.5-Chat's template, verbatim (note: no full stop after the default system prompt).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant<|im_end|>\\n' }}"
    "{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def stdlib_docstrings() -> Iterator[str]:
    """Yield ASCII docstrings of the standard library, in a stable order."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(stdlib.rglob("*.py")):
        rel = path.relative_to(stdlib).parts
        # Tests hold deliberately odd (non-English, non-ASCII) strings; site-packages is not stdlib.
        if any(part in {"test", "tests", "site-packages", "idle_test"} for part in rel):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                doc = ast.get_docstring(node)
                if doc and doc.isascii():
                    yield doc


def build_corpus(limit: int = MAX_CORPUS_CHARS) -> list[str]:
    corpus: list[str] = []
    total = 0
    for doc in stdlib_docstrings():
        corpus.append(doc)
        total += len(doc)
        if total >= limit:
            break
    return corpus


def train(corpus: list[str]) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB_SIZE,
        min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    # Added after training so they are numbered after the BPE vocabulary, as in Qwen.
    tokenizer.add_special_tokens(SPECIAL_TOKENS)
    return tokenizer


def padded_vocab_size(real_size: int) -> int:
    return math.ceil(real_size / VOCAB_PAD_MULTIPLE) * VOCAB_PAD_MULTIPLE


def hf_files(tokenizer: Tokenizer) -> dict[str, dict]:
    """The transformers-side metadata, shaped like Qwen1.5-Chat's."""
    ids = {tok: tokenizer.token_to_id(tok) for tok in SPECIAL_TOKENS}
    added = {
        str(ids[tok]): {
            "content": tok,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for tok in SPECIAL_TOKENS
    }
    tokenizer_config = {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": added,
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "bos_token": None,
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 32768,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "PreTrainedTokenizerFast",
        "unk_token": None,
    }
    special_tokens_map = {
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "eos_token": {
            "content": "<|im_end|>",
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
        },
        "pad_token": {
            "content": "<|endoftext|>",
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
        },
    }
    generation_config = {
        "bos_token_id": ids["<|endoftext|>"],
        "do_sample": True,
        "eos_token_id": [ids["<|im_end|>"], ids["<|endoftext|>"]],
        "pad_token_id": ids["<|endoftext|>"],
        "repetition_penalty": 1.05,
        "temperature": 0.7,
        "top_k": 20,
        "top_p": 0.8,
    }
    # No "model_type": transformers would then pick its Qwen2 tokenizer class, which
    # rebuilds the pipeline from vocab/merges instead of using tokenizer.json as saved.
    config = {
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "hidden_size": HIDDEN_SIZE,
        "vocab_size": padded_vocab_size(tokenizer.get_vocab_size(with_added_tokens=True)),
        "image_start_id": ids["<img>"],
    }
    return {
        "tokenizer_config.json": tokenizer_config,
        "special_tokens_map.json": special_tokens_map,
        "generation_config.json": generation_config,
        "config.json": config,
    }


def check(tokenizer: Tokenizer) -> None:
    """Fail loudly if the tokenizer lost the properties the tests rely on."""
    for text in ("你", "好", "👍", "🎉", "日本語"):
        ids = tokenizer.encode(text).ids
        if len(ids) < len(text) * 2:
            raise RuntimeError(f"{text!r} is not split into byte tokens: {ids}")
    sample = "Héllo 你好 👍 <|im_start|>user\nhi<|im_end|>"
    if tokenizer.decode(tokenizer.encode(sample).ids, skip_special_tokens=False) != sample:
        raise RuntimeError("round trip failed")


def write(out: Path) -> Path:
    tokenizer = train(build_corpus())
    check(tokenizer)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(out / "tokenizer.json"), pretty=False)
    for name, payload in hf_files(tokenizer).items():
        (out / name).write_text(
            json.dumps(payload, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=TOKENIZER_DIR)
    out = write(parser.parse_args().out)
    size = sum(p.stat().st_size for p in out.iterdir())
    print(f"wrote {out} ({size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
