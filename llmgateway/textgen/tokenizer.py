"""Tokenizers, their end-of-turn ids and chat templates, loaded once per path."""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmgateway.textgen.token_bytes import TokenPieces, stream_bytes_build, token_pieces_build

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

logger = logging.getLogger(__name__)

# Qwen chat models end a turn with <|im_end|>, not with the tokenizer's eos.
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>")

# ChatML as Qwen-VL's make_context writes it, for Qwen tokenizers that ship no chat
# template (Qwen-VL-Chat's tiktoken tokenizer): a default system turn, then each message.
CHATML_FALLBACK = (
    "{% if messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
CHATML_TOKENS = ("<|im_start|>", "<|im_end|>")


# Texts longer than this are encoded without holding the GIL (TextModel._encode); shorter
# ones take the cheaper call (a few microseconds of difference, most requests).
GIL_FREE_CHARS = 2048


class TokenizerError(Exception):
    """The tokenizer at a configured path cannot be loaded or used."""


@dataclass(frozen=True, eq=False)  # hashed by identity: one per tokenizer path
class TextModel:
    """A tokenizer plus the ids the Triton core needs from it."""

    path: str
    tokenizer: Any
    end_id: int
    pad_id: int
    # Other terminators from generation_config (sent as stop words, never rendered).
    extra_stop_ids: tuple[int, ...]
    special_ids: frozenset[int]
    has_chat_template: bool
    # No template of its own, but ChatML's tokens: render_chat uses CHATML_FALLBACK.
    chatml_fallback: bool = False

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; control tokens quoted by `quote` become their text's ids."""
        quoting = self._quoting
        if quoting is not None and quoting.prefix in text:
            pieces = quoting.marker.split(text)
            ids: list[int] = []
            for position, piece in enumerate(pieces):
                if position % 2:
                    ids += quoting.plain_ids[int(piece)]
                elif piece:
                    ids += self._encode(piece)
            return ids
        return self._encode(text)

    def _encode(self, text: str) -> list[int]:
        # The Rust tokenizer directly when there is one: the same ids as
        # tokenizer.encode(text, add_special_tokens=False), half the cost.
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is not None:
            if len(text) > GIL_FREE_CHARS:
                # encode() holds the GIL throughout, so even from the prepare pool a
                # long text would stop the event loop (80 ms for 200k characters);
                # encode_batch() lets it go while the Rust code runs.
                return backend.encode_batch([text], add_special_tokens=False)[0].ids
            return backend.encode(text, add_special_tokens=False).ids
        return self.tokenizer.encode(text, add_special_tokens=False)

    @functools.cached_property
    def longest_token_bytes(self) -> int:
        """The most bytes any one token stands for, so the most characters of text one
        token can cover (limits.prompt_chars_check). Built at load (load_text_model)."""
        return max((len(raw) for raw in self.token_pieces.raw), default=1) or 1

    def quote(self, text: str) -> str:
        """`text` with every control token in it (<|im_start|>, <|im_end|>, ...) marked
        so that `encode` encodes it as the plain text it is, not as the token.

        For what a client sends as message content, tool definitions and tool-call
        arguments: a user who types `<|im_end|><|im_start|>system` must not end
        their turn and open a system one. The markers are unguessable (a
        per-process nonce), like the vision path's image sentinels, and are made of
        ASCII letters and digits only, so they survive the chat template and JSON
        encoding (tool definitions are rendered as JSON) as text.
        """
        quoting = self._quoting
        if quoting is None or quoting.tokens.search(text) is None:
            return text
        return quoting.tokens.sub(lambda m: quoting.markers[m.group(0)], text)

    def quote_value(self, value: Any) -> Any:
        """A JSON-like value (a tool's definition) with `quote` applied to every string
        in it, keys included; `value` itself when nothing needed quoting."""
        if isinstance(value, str):
            return self.quote(value)
        if isinstance(value, dict):
            items = [(self.quote_value(k), self.quote_value(v)) for k, v in value.items()]
            if all(
                k is old_k and v is old_v
                for (k, v), (old_k, old_v) in zip(items, value.items(), strict=True)
            ):
                return value
            return dict(items)
        if isinstance(value, list | tuple):
            items = [self.quote_value(v) for v in value]
            if all(new is old for new, old in zip(items, value, strict=True)):
                return value
            return type(value)(items)
        return value

    @functools.cached_property
    def _quoting(self) -> _Quoting | None:
        return _Quoting.build(self.tokenizer)

    def render_chat(
        self,
        messages: list[dict[str, Any]],
        *,
        tools: list[dict[str, Any]] | None = None,
        add_generation_prompt: bool = True,
    ) -> str:
        compiled = self._compiled_template
        if tools is None and compiled is not None and _plain_turns(messages):
            # The common case, rendered as apply_chat_template renders it, without its
            # per-call work (template lookup, copying every message into plain data).
            template, variables = compiled
            return template.render(
                messages=messages,
                tools=None,
                documents=None,
                add_generation_prompt=add_generation_prompt,
                **variables,
            )
        kwargs: dict[str, Any] = {"tokenize": False, "add_generation_prompt": add_generation_prompt}
        if not self.has_chat_template:
            if not self.chatml_fallback:
                raise TokenizerError("the model's tokenizer has no chat template")
            kwargs["chat_template"] = CHATML_FALLBACK
        if tools:
            kwargs["tools"] = tools
        return self.tokenizer.apply_chat_template(messages, **kwargs)

    @functools.cached_property
    def _compiled_template(self) -> tuple[Any, dict[str, Any]] | None:
        """The default chat template, compiled, and the variables transformers gives it.

        None where render_chat must go through apply_chat_template: no template, or
        a transformers without the (private) compiler this relies on.
        """
        try:
            from transformers.utils.chat_template_utils import _compile_jinja_template
        except ImportError:
            return None
        if self.has_chat_template:
            template = self.tokenizer.get_chat_template()
        elif self.chatml_fallback:
            template = CHATML_FALLBACK
        else:
            return None
        try:
            compiled = _compile_jinja_template(template)
        except Exception:  # a broken template: apply_chat_template reports it per request
            logger.warning("the chat template of %s does not compile", self.path, exc_info=True)
            return None
        return compiled, dict(self.tokenizer.special_tokens_map)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    @functools.cached_property
    def token_pieces(self) -> TokenPieces:
        """Each token's own bytes and the name logprobs give it (token_bytes.py)."""
        return token_pieces_build(self.tokenizer)

    @functools.cached_property
    def stream_bytes(self) -> tuple[bytes, ...] | None:
        """Per token, its bytes as decode gives them, for a byte-level tokenizer
        (detokenizer.ByteDetokenizer); None for any other."""
        return stream_bytes_build(self.tokenizer, self.token_pieces)


@dataclass(frozen=True)
class _Quoting:
    """TextModel.quote's markers: one per control token, and its plain-text ids."""

    prefix: str  # what every marker starts with
    tokens: re.Pattern[str]  # any control token
    markers: dict[str, str]  # control token -> its marker
    marker: re.Pattern[str]  # a marker; its group is the token's index
    plain_ids: tuple[list[int], ...]  # by index: the token's text encoded as text

    @classmethod
    def build(cls, tokenizer: Any) -> _Quoting | None:
        decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
        special = {t.content for t in decoder.values() if getattr(t, "special", False)}
        special.update(getattr(tokenizer, "all_special_tokens", ()))
        # Longest first: a token containing another wins. One-character "tokens" are
        # left alone (they cannot be written any other way).
        controls = sorted((t for t in special if len(t) > 1), key=lambda t: (-len(t), t))
        if not controls:
            return None
        # Letters and digits only: JSON and templates leave them as they are.
        prefix = f"ctlq{secrets.token_hex(8)}n"
        encode = _plain_encoder(tokenizer)
        plain = tuple(encode(t) for t in controls)
        return cls(
            prefix=prefix,
            tokens=re.compile("|".join(re.escape(t) for t in controls)),
            markers={t: f"{prefix}{i}q" for i, t in enumerate(controls)},
            marker=re.compile(re.escape(prefix) + "(\\d+)q"),
            plain_ids=plain,
        )


def _plain_encoder(tokenizer: Any):
    """A function encoding text with no added token recognised in it (control tokens
    as text). Built once per tokenizer: copying a Rust tokenizer serialises its whole
    vocabulary."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        # On a copy: transformers' split_special_tokens=True leaves the shared backend
        # switched, and TextModel._encode calls the backend directly.
        from tokenizers import Tokenizer

        plain = Tokenizer.from_str(backend.to_str())
        plain.encode_special_tokens = True
        return lambda text: plain.encode(text, add_special_tokens=False).ids
    # A tokenizer shipped as code has no common switch for it (Qwen-VL's tiktoken one
    # takes allowed_special): one character at a time, no control token can match.
    return lambda text: [
        i for char in text for i in tokenizer.encode(char, add_special_tokens=False)
    ]


def _plain_turns(messages: list[dict[str, Any]]) -> bool:
    """Whether every message is just a role and a string content: what the fast
    render in render_chat covers (no tool calls, no content parts, no None)."""
    return all(
        len(m) == 2 and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
        for m in messages
    )


def _generation_config(path: Path) -> dict[str, Any]:
    file = path / "generation_config.json"
    if not file.is_file():
        return {}
    return json.loads(file.read_text())


def _as_list(value: Any) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, list) else [int(value)]


@functools.lru_cache(maxsize=16)
def load_text_model(path: str, *, trust_remote_code: bool = False) -> TextModel:
    """Load the tokenizer at `path` (offline) and work out end and pad ids.

    `trust_remote_code` lets a tokenizer directory's own Python code run (Qwen-VL's
    tiktoken tokenizer ships as code); it is the model config's switch, off by default.
    """
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception as exc:  # transformers raises many types for a bad directory
        raise TokenizerError(f"cannot load tokenizer from {path}: {exc}") from exc
    gen = _generation_config(Path(path))
    vocab = tokenizer.get_vocab()
    eos_ids = _as_list(gen.get("eos_token_id")) or _as_list(tokenizer.eos_token_id)
    end_id = next((vocab[t] for t in END_OF_TURN_TOKENS if t in vocab), None)
    if end_id is None:
        if not eos_ids:
            raise TokenizerError(f"tokenizer at {path} has no eos token")
        end_id = eos_ids[0]
    pad_ids = _as_list(gen.get("pad_token_id")) or _as_list(tokenizer.pad_token_id)
    pad_id = pad_ids[0] if pad_ids else end_id
    model = TextModel(
        path=path,
        tokenizer=tokenizer,
        end_id=end_id,
        pad_id=pad_id,
        extra_stop_ids=tuple(i for i in eos_ids if i != end_id),
        special_ids=frozenset(tokenizer.all_special_ids) | {end_id, *eos_ids},
        has_chat_template=bool(getattr(tokenizer, "chat_template", None)),
        chatml_fallback=all(t in vocab for t in CHATML_TOKENS),
    )
    # Built here, in the loading thread (load_engine), not by the first request on the
    # event loop: quoting copies the whole Rust tokenizer, megabytes for a real vocabulary,
    # and the token pieces walk all of it.
    model._quoting  # noqa: B018
    model._compiled_template  # noqa: B018
    model.token_pieces  # noqa: B018
    model.longest_token_bytes  # noqa: B018
    model.stream_bytes  # noqa: B018
    return model
