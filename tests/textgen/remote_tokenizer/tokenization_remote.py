"""A tokenizer shipped as code, the way Qwen-VL ships its tiktoken tokenizer.

Test data: copied next to the demo tokenizer's tokenizer.json, and named by auto_map in
tokenizer_config.json, so AutoTokenizer loads it only with trust_remote_code=True. Like
QWenTokenizer it is a slow (Python) tokenizer with its own tokenize and decode, and no
chat template.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer
from transformers import PreTrainedTokenizer


class RemoteTokenizer(PreTrainedTokenizer):
    vocab_files_names = {"vocab_file": "tokenizer.json"}

    def __init__(self, vocab_file: str, **kwargs) -> None:
        self._tk = Tokenizer.from_file(str(Path(vocab_file)))
        super().__init__(**kwargs)

    @property
    def vocab_size(self) -> int:
        return self._tk.get_vocab_size(with_added_tokens=True)

    def get_vocab(self) -> dict[str, int]:
        return self._tk.get_vocab(with_added_tokens=True)

    def tokenize(self, text: str, **kwargs) -> list[str]:
        return self._tk.encode(text, add_special_tokens=False).tokens

    def _convert_token_to_id(self, token: str) -> int:
        return self._tk.token_to_id(token)

    def _convert_id_to_token(self, index: int) -> str:
        return self._tk.id_to_token(index)

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        return self._tk.decode([self._tk.token_to_id(t) for t in tokens])

    def _decode(self, token_ids, skip_special_tokens: bool = False, **kwargs) -> str:
        if isinstance(token_ids, int):
            token_ids = [token_ids]
        return self._tk.decode(list(token_ids), skip_special_tokens=skip_special_tokens)

    def save_vocabulary(self, save_directory: str, filename_prefix: str | None = None):
        return ()
