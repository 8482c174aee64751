"""One request on one gRPC stream: build it, read its responses, cancel it.

We build `ModelInferRequest` protobufs ourselves rather than going through
`tritonclient`'s InferInput wrappers: it is cheaper per request, and it is the
only way to set `triton_enable_empty_final_response`, which the aio wrapper
rejects as reserved. With it, a flags-only final response (BLS, ensembles)
still reaches us, so every stream ends on `triton_final_response`.

One stream per request because gRPC cancellation cancels every request on a
stream: cancelling this call cancels exactly this generation inside Triton.

The call is ModelStreamInfer made as a unary-stream call: the request and the
client's half-close go out in the call's first batch, then responses are read.
On the wire that is exactly a bidirectional stream whose client sends one
message and half-closes (which is what tritonclient's own stream_infer does
with a one-item request iterator); Triton keeps answering in-flight requests
after the half-close. Against a bidi call it saves two gRPC operations per
request (the separate write and the closing done_writing), each a batch
through gRPC's completion queue and a wake-up of the event loop: measured,
about a quarter of the gateway's CPU per non-streamed request.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import numpy as np
from tritonclient.grpc import service_pb2

from llmgateway.triton.client import ModelSpec, TritonBackend
from llmgateway.triton.errors import DeadlineExceeded, TritonInferenceError, TritonUnavailable

logger = logging.getLogger(__name__)

WIRE_TO_NUMPY = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
}


@dataclass(slots=True)
class TritonResponse:
    outputs: dict[str, np.ndarray]
    final: bool


# struct formats for one little-endian element of each wire type (Triton's raw
# tensor contents are little-endian); BYTES and BF16 go through numpy.
SCALAR_FORMATS = {
    "BOOL": "<?",
    "UINT8": "<B",
    "UINT32": "<I",
    "UINT64": "<Q",
    "INT32": "<i",
    "INT64": "<q",
    "FP16": "<e",
    "FP32": "<f",
}
_INTEGER_TYPES = frozenset({"UINT8", "UINT32", "UINT64", "INT32", "INT64"})


def _scalar_bytes(wire_type: str, value: bool | int | float | str) -> bytes | None:
    """One element packed as `wire_type`, or None where numpy must do it.

    A request carries a dozen one-element inputs; packing them directly costs a
    fraction of building a numpy array for each. A string is one BYTES element:
    its length (uint32, little-endian), then its UTF-8 bytes.
    """
    if isinstance(value, str):
        if wire_type != "BYTES":
            raise TypeError(f"a string cannot be sent as {wire_type}")
        data = value.encode()
        return struct.pack("<I", len(data)) + data
    fmt = SCALAR_FORMATS.get(wire_type)
    if fmt is None:
        return None
    if wire_type in _INTEGER_TYPES:
        value = int(value)
    return struct.pack(fmt, value)


def build_request(
    spec: ModelSpec,
    *,
    request_id: str,
    inputs: dict[str, np.ndarray | bool | int | float | str],
    outputs: list[str],
) -> service_pb2.ModelInferRequest:
    """A request carrying only the inputs `spec` declares, cast to declared dtypes.

    `inputs` hold one batch item each: an array (input_ids is [N]) or a Python
    scalar for a one-element input (sent as [1]). The batch dimension is added
    when the model batches (max_batch_size > 0).

    The request is a copy of a template holding everything but the id, the
    arrays' shapes and the tensors' contents (see _template): filling a dozen
    tensors field by field costs several times more.
    """
    batched = spec.max_batch_size > 0
    # (name, contents, shape); the shape is None for a scalar, whose shape the template has.
    tensors: list[tuple[str, bytes, tuple[int, ...] | None]] = []
    for name, value in inputs.items():
        tensor_spec = spec.inputs.get(name)
        if tensor_spec is None:
            continue
        raw = None if isinstance(value, np.ndarray) else _scalar_bytes(tensor_spec.wire_type, value)
        if raw is not None:
            tensors.append((name, raw, None))
            continue
        array = np.ascontiguousarray(value, dtype=tensor_spec.np_type)
        if array.ndim == 0:
            array = array.reshape(1)
        if batched:
            array = array[np.newaxis, ...]
        tensors.append((name, array.tobytes(), array.shape))
    key = (tuple((name, shape is None) for name, _, shape in tensors), tuple(outputs))
    template = spec.request_templates.get(key)
    if template is None:
        template = _template(spec, *key)
        if len(spec.request_templates) < MAX_TEMPLATES:
            spec.request_templates[key] = template
    request = service_pb2.ModelInferRequest()
    request.CopyFrom(template)
    request.id = request_id
    declared = request.inputs
    for position, (_, _, shape) in enumerate(tensors):
        if shape is not None:
            declared[position].shape.extend(shape)
    request.raw_input_contents.extend([raw for _, raw, _ in tensors])
    return request


# Templates kept per model: one per combination of inputs sent (a few in practice).
MAX_TEMPLATES = 256


def _template(
    spec: ModelSpec, inputs: tuple[tuple[str, bool], ...], outputs: tuple[str, ...]
) -> service_pb2.ModelInferRequest:
    """A request with the model, the parameters, each input's name and type (and the
    shape of the scalar ones, flagged True) and the declared outputs asked for."""
    request = service_pb2.ModelInferRequest(model_name=spec.name)
    request.parameters["triton_enable_empty_final_response"].bool_param = True
    scalar_shape = (1, 1) if spec.max_batch_size > 0 else (1,)
    for name, scalar in inputs:
        tensor = request.inputs.add(name=name, datatype=spec.inputs[name].wire_type)
        if scalar:
            tensor.shape.extend(scalar_shape)
    for name in outputs:
        if name in spec.outputs:
            request.outputs.add(name=name)
    return request


def parse_response(message: service_pb2.ModelInferResponse, decoupled: bool) -> TritonResponse:
    outputs: dict[str, np.ndarray] = {}
    # One pass over tensors and their raw contents (a tensor without contents is skipped).
    for tensor, raw in zip(message.outputs, message.raw_output_contents, strict=False):
        dtype = WIRE_TO_NUMPY.get(tensor.datatype)
        if dtype is not None:
            outputs[tensor.name] = np.frombuffer(raw, dtype=dtype).reshape(tensor.shape)
    final = message.parameters.get("triton_final_response")
    return TritonResponse(outputs, final.bool_param if final is not None else not decoupled)


def rpc_error_map(exc: grpc.RpcError) -> Exception:
    """The TritonError a failed gRPC call to Triton stands for (for every call made on
    the core's channel: generations here, the visual encoder in vision/encoder.py)."""
    code = exc.code() if hasattr(exc, "code") else None
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return DeadlineExceeded("The request's deadline passed before generation finished.")
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNIMPLEMENTED):
        return TritonUnavailable("The inference server is unreachable or not ready.")
    detail = exc.details() if hasattr(exc, "details") else str(exc)
    return TritonInferenceError("The inference server failed the request.", detail=detail or "")


class TritonStream:
    """One request on its own gRPC stream.

    `open()` sends the request (callers may open early, so Triton starts while
    the HTTP response is still being set up); `responses()` reads until the
    final response. Leaving `responses()` early (a stop string, a client
    disconnect, the deadline) or calling `cancel()` cancels the gRPC call, which
    cancels the request inside Triton.
    """

    def __init__(
        self,
        backend: TritonBackend,
        spec: ModelSpec,
        request: service_pb2.ModelInferRequest,
        *,
        deadline_s: float,
    ) -> None:
        self._backend = backend
        self._spec = spec
        self._request = request
        self._deadline_s = deadline_s
        self._call = None
        self._finished = False

    def open(self) -> None:
        """Start the RPC: the request is sent without waiting for anything."""
        if self._call is None:
            # The gRPC deadline also reaches the server, which cancels the request there.
            self._call = self._backend.stream_infer(self._request, timeout=self._deadline_s)

    def cancel(self) -> None:
        """Cancel the request inside Triton unless it already finished. Idempotent."""
        if self._call is not None and not self._finished:
            self._finished = True
            self._call.cancel()

    async def responses(self) -> AsyncIterator[TritonResponse]:
        self.open()
        call = self._call
        try:
            while True:
                try:
                    message = await call.read()
                except grpc.RpcError as exc:
                    raise rpc_error_map(exc) from exc
                if message is grpc.aio.EOF:
                    self._finished = True
                    return
                if message.error_message:
                    self._finished = True
                    logger.warning(
                        "Triton error for %s: %s", self._request.id, message.error_message
                    )
                    raise TritonInferenceError(
                        "The inference server failed the request.", detail=message.error_message
                    )
                response = parse_response(message.infer_response, self._spec.decoupled)
                if response.final:
                    # Nothing more will come for this request; the RPC's status
                    # follows on its own (the client half-closed when it sent).
                    self._finished = True
                yield response
                if response.final:
                    return
        finally:
            self.cancel()
