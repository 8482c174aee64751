"""What the gateway serves: one row per public model name."""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator
from django.db import models

from llmgateway.addresses import targets_parse
from llmgateway.textgen.reasoning import reasoning_format, reasoning_format_choices
from llmgateway.textgen.tools import tool_format_choices


class ModelType(models.TextChoices):
    QWEN2_CHAT = "qwen2-chat", "Qwen1.5 / Qwen2 chat (ChatML, ends turns with <|im_end|>)"
    QWEN_VL = "qwen-vl", "Qwen-VL (visual encoder + LLM)"
    CHAT_TEMPLATE = "chat-template", "Any tokenizer with a chat template"


def triton_addresses_validate(value: str) -> None:
    try:
        targets_parse(value)
    except ValueError as exc:
        raise ValidationError(f"{exc}. Give host:port, or several separated by commas.") from None


class ModelConfig(models.Model):
    """A public model name mapped onto a Triton model and its tokenizer.

    Changing a row takes effect on the next request: engines are cached by
    (pk, updated_at).
    """

    name = models.CharField(
        max_length=128, unique=True, help_text="Public model name clients send as `model`."
    )
    triton_url = models.CharField(
        "Triton addresses",
        max_length=1024,
        default="127.0.0.1:8001",
        validators=[triton_addresses_validate],
        help_text=(
            "Triton gRPC address(es), host:port, comma-separated: requests are balanced over "
            "them. A host name resolving to several addresses (a Kubernetes headless Service) "
            "counts as one endpoint per address."
        ),
    )
    triton_model = models.CharField(
        max_length=255, default="tensorrt_llm", help_text="Model name inside Triton."
    )
    tokenizer_path = models.CharField(
        max_length=1024, help_text="Directory loadable with AutoTokenizer.from_pretrained."
    )
    trust_remote_code = models.BooleanField(
        default=False,
        help_text=(
            "Run the Python code shipped in the tokenizer directory (auto_map in "
            "tokenizer_config.json). Qwen-VL's tiktoken tokenizer needs it. The code runs "
            "inside the gateway: only for directories you control."
        ),
    )
    model_type = models.CharField(
        max_length=32, choices=ModelType.choices, default=ModelType.QWEN2_CHAT
    )
    tool_format = models.CharField(
        max_length=16,
        # The formats' modules (textgen/tools/formats/): a new one needs no migration.
        choices=tool_format_choices,
        default="react",
        help_text="How tools are rendered into the prompt and parsed back.",
    )
    reasoning_format = models.CharField(
        max_length=16,
        # The formats' modules (textgen/reasoning/formats/): a new one needs no migration.
        choices=reasoning_format_choices,
        default="none",
        help_text="How the model marks its reasoning apart from its answer "
        "(reasoning_content in chat, reasoning items in Responses).",
    )
    default_max_tokens = models.PositiveIntegerField(
        default=512, validators=[MinValueValidator(1)], help_text="Used when a request sets none."
    )
    default_temperature = models.FloatField(null=True, blank=True)
    default_top_p = models.FloatField(null=True, blank=True)
    default_top_k = models.PositiveIntegerField(null=True, blank=True)
    default_repetition_penalty = models.FloatField(null=True, blank=True)
    context_length = models.PositiveIntegerField(
        default=4096, help_text="Prompt plus output tokens the engine accepts."
    )
    max_output_tokens = models.PositiveIntegerField(
        default=2048, help_text="Ceiling for max_tokens on one request."
    )
    # Vision (model_type qwen-vl): the encoder's Triton model and the image geometry.
    visual_model = models.CharField(
        max_length=255,
        blank=True,
        help_text="Triton model of the visual encoder. Blank: triton_model without a trailing "
        "'-llm', plus '-visual' (qwen-vl-llm → qwen-vl-visual).",
    )
    image_size = models.PositiveIntegerField(
        default=448, help_text="Side in pixels images are resized to for the visual encoder."
    )
    image_tokens = models.PositiveIntegerField(
        default=256, help_text="Prompt positions (encoder output rows) per image."
    )
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        if self.default_max_tokens > self.max_output_tokens:
            raise ValidationError({"default_max_tokens": "Must not exceed max_output_tokens."})
        if self.max_output_tokens >= self.context_length:
            raise ValidationError({"max_output_tokens": "Must be below context_length."})

    @property
    def accepts_images(self) -> bool:
        return self.model_type == ModelType.QWEN_VL

    @property
    def visual_model_name(self) -> str:
        if self.visual_model:
            return self.visual_model
        return self.triton_model.removesuffix("-llm") + "-visual"

    @property
    def reasoning_tags(self) -> tuple[str, str] | None:
        """The (start, end) tags of the model's reasoning, None when it has none."""
        fmt = reasoning_format(self.reasoning_format)
        return (fmt.start, fmt.end) if fmt.reasons else None  # type: ignore[attr-defined]

    @property
    def cache_key(self) -> tuple[int, float]:
        return (self.pk, self.updated_at.timestamp() if self.updated_at else 0.0)


class StoredResponse(models.Model):
    """One /v1/responses answer kept for its key's owner (`store: true`).

    `context` is the whole conversation the response answered, as input items with
    ids: the earlier turns rebuilt from `previous_response_id`, then the request's own
    input. Kept whole on each response rather than as a pointer to its parent, so
    deleting an earlier response never changes a later one's context, and rebuilding
    a chain of any depth is one row read. `body` is the Response object as returned.
    """

    id = models.CharField(primary_key=True, max_length=64)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="stored_responses",
        help_text="The key's owner; empty with the platform off.",
    )
    created_at = models.DateTimeField(db_index=True)
    model = models.CharField(max_length=255)
    context = models.JSONField()
    body = models.JSONField()

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.id
