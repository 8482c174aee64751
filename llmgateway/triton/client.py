"""One Triton client per URL (per event loop), and each model's declared interface.

gRPC channels belong to the event loop that created them. Under uvicorn there is
one loop per worker, so this is one channel per worker and URL. Under a WSGI
server (llmgateway/wsgi.py), Django runs async views in short-lived loops; the
weak mapping lets their channels go with them.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from dataclasses import dataclass, field

import grpc
import numpy as np
from django.conf import settings
from tritonclient.grpc import aio as triton_aio
from tritonclient.grpc import service_pb2
from tritonclient.utils import InferenceServerException

from llmgateway.compat import grpc_channel
from llmgateway.triton.errors import TritonUnavailable

logger = logging.getLogger(__name__)

# Config dtype name → (wire datatype, numpy dtype).
DTYPES: dict[str, tuple[str, type]] = {
    "TYPE_BOOL": ("BOOL", np.bool_),
    "TYPE_UINT8": ("UINT8", np.uint8),
    "TYPE_UINT32": ("UINT32", np.uint32),
    "TYPE_UINT64": ("UINT64", np.uint64),
    "TYPE_INT32": ("INT32", np.int32),
    "TYPE_INT64": ("INT64", np.int64),
    "TYPE_FP16": ("FP16", np.float16),
    "TYPE_FP32": ("FP32", np.float32),
    "TYPE_BF16": ("BF16", np.float32),
}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    wire_type: str
    np_type: type
    dims: tuple[int, ...]
    optional: bool


@dataclass(frozen=True)
class ModelSpec:
    """What a Triton model declares: only declared inputs may be sent."""

    name: str
    inputs: dict[str, TensorSpec]
    outputs: frozenset[str]
    decoupled: bool
    max_batch_size: int
    parameters: dict[str, str] = field(default_factory=dict)
    # build_request's request templates (triton/stream.py), filled as requests are made.
    request_templates: dict = field(default_factory=dict, compare=False, repr=False)

    def accepts(self, name: str) -> bool:
        return name in self.inputs

    @property
    def guides_decoding(self) -> bool:
        """Whether the model takes a guide (TensorRT-LLM 0.19+'s guided_decoding_guide_type
        input) and has a guided-decoding backend set in its config (xgrammar), without
        which TensorRT-LLM refuses guided requests."""
        backend = self.parameters.get("guided_decoding_backend", "").strip()
        return (
            self.accepts("guided_decoding_guide_type")
            and bool(backend)
            and not backend.startswith("${")  # fill_template.py left it unset
        )

    @property
    def echoes_prompt(self) -> bool:
        """Whether non-streamed output_ids start with the prompt (TRT-LLM 0.8 default)."""
        if "exclude_input_in_output" in self.inputs:
            return False  # we always send exclude_input_in_output=true when declared
        return self.parameters.get("exclude_input_in_output", "false").lower() != "true"


def parse_model_config(name: str, config: dict) -> ModelSpec:
    inputs = {}
    for item in config.get("input", []):
        wire, np_type = DTYPES.get(item["data_type"], ("BYTES", np.object_))
        dims = tuple(int(d) for d in item.get("dims", []))
        inputs[item["name"]] = TensorSpec(
            item["name"], wire, np_type, dims, bool(item.get("optional", False))
        )
    outputs = frozenset(item["name"] for item in config.get("output", []))
    policy = config.get("model_transaction_policy", {})
    params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
    return ModelSpec(
        name=name,
        inputs=inputs,
        outputs=outputs,
        decoupled=bool(policy.get("decoupled", False)),
        max_batch_size=int(config.get("max_batch_size", 0)),
        parameters=params,
    )


STREAM_INFER = "/inference.GRPCInferenceService/ModelStreamInfer"
INFER = "/inference.GRPCInferenceService/ModelInfer"


class TritonBackend:
    """A Triton server at one URL: its channel and the interfaces of its models."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.client = triton_aio.InferenceServerClient(url)
        # One generation = ModelStreamInfer called as unary-stream on the client's
        # channel (see stream.py); a non-decoupled model (the visual encoder) = ModelInfer.
        self.stream_infer = grpc_channel(self.client).unary_stream(
            STREAM_INFER,
            request_serializer=service_pb2.ModelInferRequest.SerializeToString,
            response_deserializer=service_pb2.ModelStreamInferResponse.FromString,
        )
        self.infer = grpc_channel(self.client).unary_unary(
            INFER,
            request_serializer=service_pb2.ModelInferRequest.SerializeToString,
            response_deserializer=service_pb2.ModelInferResponse.FromString,
        )
        self._specs: dict[str, ModelSpec] = {}
        self._lock = asyncio.Lock()

    async def model_spec(self, model: str) -> ModelSpec:
        spec = self._specs.get(model)
        if spec is not None:
            return spec
        async with self._lock:
            if model not in self._specs:
                config = await self._call(self.client.get_model_config(model, as_json=True))
                self._specs[model] = parse_model_config(model, config.get("config", config))
        return self._specs[model]

    def forget(self, model: str) -> None:
        """Drop a cached interface (the model was reloaded or the call failed oddly)."""
        self._specs.pop(model, None)

    async def is_ready(self, model: str | None = None) -> bool:
        try:
            if model is None:
                return bool(await self._call(self.client.is_server_ready()))
            return bool(await self._call(self.client.is_model_ready(model)))
        except TritonUnavailable:
            return False

    async def _call(self, awaitable):
        try:
            return await asyncio.wait_for(awaitable, settings.TRITON_CONNECT_TIMEOUT)
        except (TimeoutError, InferenceServerException, grpc.RpcError) as exc:
            logger.warning("Triton at %s: %r", self.url, exc)
            raise TritonUnavailable("The inference server is unreachable or not ready.") from exc


_backends: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, TritonBackend]] = (
    weakref.WeakKeyDictionary()
)


def get_backend(url: str) -> TritonBackend:
    """The shared client for `url` on the running event loop."""
    loop = asyncio.get_running_loop()
    per_loop = _backends.get(loop)
    if per_loop is None:
        per_loop = _backends[loop] = {}
    backend = per_loop.get(url)
    if backend is None:
        backend = per_loop[url] = TritonBackend(url)
    return backend
