"""`<think>…</think>` before the answer: Qwen3, QwQ, DeepSeek-R1 and its distills."""

from __future__ import annotations

from llmgateway.textgen.reasoning.format import TaggedReasoning


class ThinkTags(TaggedReasoning):
    name = "think"
    label = "<think>…</think> tags (Qwen3, QwQ, DeepSeek-R1 distills)"
    start = "<think>"
    end = "</think>"


FORMAT = ThinkTags()
