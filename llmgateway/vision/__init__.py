"""Qwen-VL images: intake, preprocessing, the visual encoder and prompt construction.

Routes use `llmgateway.vision.service` only.
"""
