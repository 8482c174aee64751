"""The visual encoder in Triton: `input` FP32 [B, 3, S, S] → `output` [B, tokens, hidden].

All of a request's images go in one call, unless the model's max_batch_size is
smaller (the TensorRT ViT engine's profile often stops at 4): then in as few
calls as that allows, in order.
"""

from __future__ import annotations

from collections.abc import Callable

import grpc
import numpy as np
from tritonclient.grpc import service_pb2

from llmgateway.triton.client import ModelSpec
from llmgateway.triton.errors import TritonInferenceError
from llmgateway.triton.pool import EndpointPool
from llmgateway.triton.stream import parse_response, rpc_error_map

INPUT = "input"
OUTPUT = "output"


async def features_encode(
    *,
    backend: EndpointPool,
    model: str,
    pixels: np.ndarray,
    tokens: int,
    request_id: str,
    time_left: Callable[[], float],
) -> np.ndarray:
    """Encode [B, 3, S, S] pixels to [B, tokens, hidden] features (the model's dtype).

    Each call's gRPC timeout is `time_left()` as it starts (GenerationRequest.time_left:
    what is left of the request's deadline, or DeadlineExceeded).
    """
    spec = await backend.model_spec(model)
    if INPUT not in spec.inputs or OUTPUT not in spec.outputs:
        raise TritonInferenceError(
            "The visual encoder has an unexpected interface.",
            detail=f"{model} must take `{INPUT}` and return `{OUTPUT}`",
        )
    chunks = []
    for part, batch in enumerate(_batches(spec, pixels)):
        request = _request(spec, batch, request_id=f"{request_id}-visual-{part}")
        try:
            message = await backend.infer(request, timeout=time_left())
        except grpc.RpcError as exc:
            raise rpc_error_map(exc) from exc
        output = parse_response(message, decoupled=False).outputs.get(OUTPUT)
        if output is None:
            raise TritonInferenceError(
                "The visual encoder returned no features.", detail=f"{model}: no `{OUTPUT}`"
            )
        chunks.append(output.reshape(len(batch), *output.shape[-2:]))
    features = np.concatenate(chunks)
    if features.shape[:2] != (len(pixels), tokens):
        raise TritonInferenceError(
            "The visual encoder returned features of an unexpected shape.",
            detail=f"{model}: {features.shape}, expected [{len(pixels)}, {tokens}, hidden]",
        )
    return features


def _batches(spec: ModelSpec, pixels: np.ndarray) -> list[np.ndarray]:
    step = spec.max_batch_size if spec.max_batch_size > 0 else len(pixels)
    if spec.max_batch_size == 0 and len(spec.inputs[INPUT].dims) == 3:
        step = 1  # no batch dimension at all: one image per call
    return [pixels[i : i + step] for i in range(0, len(pixels), step)]


def _request(
    spec: ModelSpec, batch: np.ndarray, *, request_id: str
) -> service_pb2.ModelInferRequest:
    tensor_spec = spec.inputs[INPUT]
    array = np.ascontiguousarray(batch, dtype=tensor_spec.np_type)
    if spec.max_batch_size == 0 and len(tensor_spec.dims) == 3:
        array = array[0]
    request = service_pb2.ModelInferRequest(model_name=spec.name, id=request_id)
    tensor = request.inputs.add(name=INPUT, datatype=tensor_spec.wire_type)
    tensor.shape.extend(array.shape)
    request.raw_input_contents.append(array.tobytes())
    request.outputs.add(name=OUTPUT)
    return request
