"""Scripted stand-in for Qwen-VL's visual encoder (Triton Python backend).

Same tensors as the TensorRT ViT engine, but the 256 output rows describe a 16×16
grid of 28×28-pixel cells instead of carrying learned features. Row r (cell
y = r // 16, x = r % 16) holds, in the first columns:

    0..2  the cell's mean colour, RGB in [0, 1] (CLIP normalisation undone)
    3..5  the whole image's mean colour
    6, 7  the cell's position: y / 15, x / 15

and zeros after. The dev LLM (platform/triton/dev/tensorrt_llm) reads these back
from its prompt_embedding_table to describe the picture, so a test can tell a red
image from a blue one at the far end of the gateway.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)[:, None, None]
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)[:, None, None]
GRID = 16
FEATURES = 8


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        self.model_name = args["model_name"]
        self.hidden = int(config["output"][0]["dims"][-1])
        if self.hidden < FEATURES:
            raise ValueError(f"hidden size {self.hidden} is below the {FEATURES} feature columns")
        self.events_path = os.path.join(params["state_dir"], "events.jsonl")

    def execute(self, requests: list[Any]) -> list[Any]:
        responses = []
        for request in requests:
            pixels = pb_utils.get_input_tensor_by_name(request, "input").as_numpy()
            self._event(request.request_id(), pixels.shape[0])
            features = np.stack([self.encode(image) for image in pixels]).astype(np.float16)
            responses.append(
                pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("output", features)])
            )
        return responses

    def encode(self, image: np.ndarray) -> np.ndarray:
        """[3, H, W] normalised pixels → [GRID², hidden] colour features."""
        rgb = np.clip(image * CLIP_STD + CLIP_MEAN, 0.0, 1.0)
        _, height, width = rgb.shape
        cells = rgb[:, : height - height % GRID, : width - width % GRID]
        cells = cells.reshape(3, GRID, height // GRID, GRID, width // GRID).mean(axis=(2, 4))
        out = np.zeros((GRID * GRID, self.hidden), dtype=np.float32)
        out[:, 0:3] = cells.reshape(3, -1).T
        out[:, 3:6] = rgb.mean(axis=(1, 2))
        ys, xs = np.divmod(np.arange(GRID * GRID), GRID)
        out[:, 6] = ys / (GRID - 1)
        out[:, 7] = xs / (GRID - 1)
        return out

    def _event(self, request_id: str, batch: int) -> None:
        line = json.dumps(
            {"event": "encode", "request_id": request_id, "model": self.model_name, "batch": batch}
        )
        fd = os.open(self.events_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (line + "\n").encode())
        finally:
            os.close(fd)
