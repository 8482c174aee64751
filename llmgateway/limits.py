"""A request's limits from its model's config, for the endpoints' prepare phase: how
many tokens it may generate within the model's context, and when it must be over."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from django.conf import settings

from llmgateway.errors import invalid
from llmgateway.models import ModelConfig

if TYPE_CHECKING:
    from llmgateway.textgen.tokenizer import TextModel


def prompt_chars_check(*, config: ModelConfig, text: TextModel, chars: int, param: str) -> None:
    """Refuse, before anything is tokenized, text that cannot fit in the model's context.

    No token of the model's tokenizer covers more characters than its longest token has
    bytes (`TextModel.longest_token_bytes`), so `chars` characters are at least
    chars / longest tokens: beyond context_length x longest the prompt is over the
    context whatever it says. Tokenizing it would only cost time and memory (a 19 MB
    prompt took 10-20 s and 3 GB; issue 19). `chars` is a lower bound of the text
    tokenized (what the client wrote; the template only adds to it).
    """
    context, longest = config.context_length, text.longest_token_bytes
    if chars > context * longest:
        raise invalid(
            f"This model's maximum context length is {context} tokens. However, your "
            f"{param} is {chars} characters long, more than {context} tokens of this model "
            f"can hold (at most {longest} characters each), so it was not tokenized. "
            f"Please reduce the length of the {param}.",
            param,
            code="context_length_exceeded",
        )


def beams_check(*, parameters: dict[str, str], beams: int, param: str) -> None:
    """Refuse more beams than the Triton model's max_beam_width (its config's parameter;
    TensorRT-LLM refuses such a request, which would otherwise surface as a 500)."""
    declared = parameters.get("max_beam_width", "").strip()
    if not declared.isdigit():
        return  # not declared (an ensemble) or left unset ("${max_beam_width}"): Triton decides
    most = max(int(declared), 1)
    if beams > most:
        raise invalid(
            f"{param} is too large: {beams}. This model supports at most {most} beams.",
            param,
        )


def max_tokens_resolve(
    *,
    config: ModelConfig,
    requested: int | None,
    prompt_tokens: int,
    param: str,
    prompt_param: str = "messages",
) -> int:
    """The output limit for a request, enforcing the model's context and output limits.

    `prompt_param` names the input in errors ("messages" for chat, "prompt" for completions).
    """
    if requested is not None and requested > config.max_output_tokens:
        raise invalid(
            f"{param} is too large: {requested}. This model supports at most "
            f"{config.max_output_tokens} completion tokens.",
            param,
        )
    max_tokens = requested if requested is not None else config.default_max_tokens
    if prompt_tokens >= config.context_length:
        raise invalid(
            f"This model's maximum context length is {config.context_length} tokens. "
            f"However, your {prompt_param} resulted in {prompt_tokens} tokens. "
            f"Please reduce the length of the {prompt_param}.",
            prompt_param,
            code="context_length_exceeded",
        )
    if prompt_tokens + max_tokens > config.context_length:
        if requested is None:
            return config.context_length - prompt_tokens
        raise invalid(
            f"This model's maximum context length is {config.context_length} tokens. "
            f"However, you requested {prompt_tokens + max_tokens} tokens "
            f"({prompt_tokens} in the {prompt_param}, {max_tokens} in the completion). "
            f"Please reduce the length of the {prompt_param} or completion.",
            param,
            code="context_length_exceeded",
        )
    return max_tokens


def deadline_resolve(requested: float | None) -> float:
    """The request's deadline on time.monotonic(): `requested` seconds from now, at most
    GATEWAY_REQUEST_TIMEOUT. Resolved as the request is prepared, so everything after it
    (admission, images fetched and encoded, generation) counts against the one deadline."""
    ceiling = settings.GATEWAY_REQUEST_TIMEOUT
    return time.monotonic() + (min(requested, ceiling) if requested else ceiling)
