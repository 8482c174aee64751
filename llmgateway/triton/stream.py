"""One request on one gRPC stream: build it, read its responses, cancel it.

We build `ModelInferRequest` protobufs ourselves rather than going through
`tritonclient`'s InferInput wrappers: it is cheaper per request, and it is the
only way to set `triton_enable_empty_final_response`, which the aio wrapper
rejects as reserved. With it, a flags-only final response (BLS, ensembles)
still reaches us, so every stream ends on `triton_final_response`.

One stream per request because gRPC cancellation cancels every request on a
stream: cancelling this call cancels exactly this generation inside Triton.

Each stream runs on an endpoint its pool chooses (pool.py). A call that fails
before Triton sent anything for it (it could not connect, the server answered
UNAVAILABLE, the model is not ready there) moves once to another endpoint,
within the same deadline; the caller sees one stream. A failure after a
response arrived is raised: what was generated cannot be taken back.

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

import contextlib
import logging
import struct
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import numpy as np
from django.conf import settings
from tritonclient.grpc import service_pb2

from llmgateway.triton.client import ModelSpec
from llmgateway.triton.errors import DeadlineExceeded, TritonInferenceError, TritonUnavailable
from llmgateway.triton.pool import (
    DEADLINE,
    MODEL_NOT_READY,
    UNAVAILABLE,
    Endpoint,
    EndpointPool,
    message_failure,
    retryable,
    rpc_failure,
)
from llmgateway.triton.reader import ThreadedCall

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


class TritonResponse:
    """One response of a stream: its tensors, decoded when asked for, and whether it is
    the request's last.

    A streamed token's response carries a few tensors, of which the engine reads two
    (output_ids, sequence_length): `flat` decodes just the tensors named, without
    shaping them. `outputs` decodes them all, shaped (the visual encoder, tests).
    """

    __slots__ = ("message", "final", "_outputs")

    def __init__(self, message: service_pb2.ModelInferResponse, final: bool) -> None:
        self.message = message
        self.final = final
        self._outputs: dict[str, np.ndarray] | None = None

    def flat(self, *names: str) -> list[tuple[np.ndarray, int] | None]:
        """Per name, that tensor as a 1-D array and the length of its last dimension (a
        row of a [..., T] tensor is T elements), or None when the response lacks it.
        One pass over the response's tensors, whatever the number of names."""
        found: list[tuple[np.ndarray, int] | None] = [None] * len(names)
        message = self.message
        contents = message.raw_output_contents
        for position, tensor in enumerate(message.outputs):
            name = tensor.name
            if name not in names or position >= len(contents):
                continue
            dtype = WIRE_TO_NUMPY.get(tensor.datatype)
            if dtype is not None:
                shape = tensor.shape
                array = np.frombuffer(contents[position], dtype=dtype)
                found[names.index(name)] = (array, shape[-1] if shape else 1)
        return found

    @property
    def outputs(self) -> dict[str, np.ndarray]:
        if self._outputs is None:
            outputs: dict[str, np.ndarray] = {}
            message = self.message
            # One pass over tensors and their raw contents (a tensor without contents is skipped).
            for tensor, raw in zip(message.outputs, message.raw_output_contents, strict=False):
                dtype = WIRE_TO_NUMPY.get(tensor.datatype)
                if dtype is not None:
                    outputs[tensor.name] = np.frombuffer(raw, dtype=dtype).reshape(tensor.shape)
            self._outputs = outputs
        return self._outputs


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
    """The response, its tensors left undecoded until read (TritonResponse)."""
    final = message.parameters.get("triton_final_response")
    return TritonResponse(message, final.bool_param if final is not None else not decoupled)


# What _response returns for a request moved to another endpoint.
MOVED = object()
# A call is not moved to another endpoint with less time than this left.
MIN_FAILOVER_S = 0.01
UNAVAILABLE_MESSAGE = "The inference server is unreachable or not ready."


def rpc_error_map(exc: grpc.RpcError) -> Exception:
    """The TritonError a failed gRPC call to Triton stands for (for every call made on
    the core's channel: generations here, the visual encoder in vision/encoder.py)."""
    kind = rpc_failure(exc)
    if kind == DEADLINE:
        return DeadlineExceeded("The request's deadline passed before generation finished.")
    if kind in (UNAVAILABLE, MODEL_NOT_READY):
        return TritonUnavailable(UNAVAILABLE_MESSAGE)
    detail = exc.details() if hasattr(exc, "details") else str(exc)
    return TritonInferenceError("The inference server failed the request.", detail=detail or "")


class TritonStream:
    """One request on its own gRPC stream, on an endpoint of `pool`.

    `open()` sends the request (callers may open early, so Triton starts while
    the HTTP response is still being set up); `connected()` returns once its
    endpoint is connected (moving it once to another endpoint if it cannot be),
    so a caller can still answer with a status rather than a broken stream;
    `responses()` reads until the final response. Leaving `responses()` early (a
    stop string, a client disconnect, the deadline) or calling `cancel()` cancels
    the gRPC call, which cancels the request inside Triton.
    """

    def __init__(
        self,
        pool: EndpointPool,
        spec: ModelSpec,
        request: service_pb2.ModelInferRequest,
        *,
        deadline_s: float,
        metadata: tuple[tuple[str, str], ...] | None = None,
    ) -> None:
        self._pool = pool
        # gRPC metadata for Triton: the trace context (`traceparent`) when tracing is on.
        self._metadata = metadata
        self._spec = spec
        self._request = request
        self._deadline = time.monotonic() + deadline_s
        self._call = None
        self._endpoint: Endpoint | None = None
        self._moved = False
        self._finished = False

    def open(self) -> None:
        """Start the RPC: the request is sent without waiting for anything.

        TritonUnavailable at once when no endpoint serves the model."""
        if self._call is None:
            self._start(self._pool.acquire(self._spec.name))

    async def connected(self) -> None:
        """Return once the request's endpoint is connected (at once, as a rule); raise
        TritonUnavailable if neither it nor one other could be reached. A call on a
        connected channel can still fail before its first response: `responses()` then
        moves it, before any output."""
        self.open()
        while True:
            failure = await self._endpoint.backend.connection_failure(self._deadline)
            if failure is None:
                return
            if not self._fail(UNAVAILABLE, failure, may_move=True):
                self.cancel()
                raise TritonUnavailable(UNAVAILABLE_MESSAGE)

    def cancel(self) -> None:
        """Cancel the request inside Triton unless it already finished. Idempotent."""
        if self._call is not None and not self._finished:
            self._finished = True
            self._call.cancel()
        self._release()

    async def responses(self) -> AsyncIterator[TritonResponse]:
        """The responses one by one (see `batches`)."""
        async with contextlib.aclosing(self.batches()) as batches:
            async for batch in batches:
                for response in batch:
                    yield response

    async def batches(self) -> AsyncIterator[list[TritonResponse]]:
        """The responses, in lists of those that arrived together: one at a time with
        grpc.aio (one message per read), all those queued since the last look with the
        threaded reader (reader.py). A failure after responses of the same batch is
        raised once they are handed over."""
        self.open()
        received = False
        try:
            while True:
                call = self._call
                if isinstance(call, ThreadedCall):
                    items = await call.read_batch()
                else:
                    try:
                        items = [await call.read()]
                    except grpc.RpcError as exc:
                        items = [exc]
                batch: list[TritonResponse] = []
                failure: Exception | None = None
                for item in items:
                    try:
                        response = self._response(item, may_move=not received)
                    except Exception as exc:
                        if not batch:
                            raise
                        failure = exc
                        break
                    if response is MOVED:
                        break  # nothing else came on the failed call
                    if response is None:  # the end of the call
                        self._finished = True
                        if batch:
                            yield batch
                        return
                    batch.append(response)
                    received = True
                    if response.final:
                        # Nothing more will come for this request; the RPC's status
                        # follows on its own (the client half-closed when it sent).
                        self._finished = True
                        yield batch
                        return
                if batch:
                    yield batch
                if failure is not None:
                    raise failure
        finally:
            self.cancel()

    def _response(self, item: Any, *, may_move: bool) -> TritonResponse | object | None:
        """What one item read stands for: a response, None at the end of the call, MOVED
        when the request went to another endpoint; a failure is raised."""
        if isinstance(item, grpc.RpcError):
            if self._fail(rpc_failure(item), item.details() or "", may_move=may_move):
                return MOVED
            raise rpc_error_map(item) from item
        if isinstance(item, Exception):  # the threaded reader's thread failed otherwise
            self._finished = True
            raise TritonInferenceError(
                "The inference server failed the request.", detail=str(item)
            ) from item
        if item is grpc.aio.EOF:
            return None
        if item.error_message:
            kind = message_failure(item.error_message)
            if self._fail(kind, item.error_message, may_move=may_move):
                return MOVED
            self._finished = True
            logger.warning("Triton error for %s: %s", self._request.id, item.error_message)
            if kind == MODEL_NOT_READY:
                raise TritonUnavailable(UNAVAILABLE_MESSAGE)
            raise TritonInferenceError(
                "The inference server failed the request.", detail=item.error_message
            )
        return parse_response(item.infer_response, self._spec.decoupled)

    def _start(self, endpoint: Endpoint) -> None:
        self._endpoint = endpoint
        # The gRPC deadline also reaches the server, which cancels the request there.
        timeout = self._deadline - time.monotonic()
        if settings.TRITON_STREAM_READER == "thread":
            self._call = ThreadedCall(
                endpoint.backend.stream_infer_sync,
                self._request,
                timeout=timeout,
                metadata=self._metadata,
            )
        else:
            self._call = endpoint.backend.stream_infer(
                self._request, timeout=timeout, metadata=self._metadata
            )

    def _fail(self, kind: str, detail: str, *, may_move: bool) -> bool:
        """Record a failed call; True if the request was moved to another endpoint (once,
        before any response, with time left), False if the caller must raise."""
        failed = self._endpoint
        if failed is None:  # cancelled meanwhile
            return False
        self._pool.failed(failed, self._spec.name, kind, detail)
        if not (may_move and retryable(kind)) or self._moved or self._finished:
            return False
        if self._deadline - time.monotonic() < MIN_FAILOVER_S:
            return False
        self._call.cancel()  # a no-op once the call has failed; ends an errored stream
        self._release()
        try:
            endpoint = self._pool.acquire(self._spec.name, avoid=failed)
        except TritonUnavailable:
            self._finished = True
            return False
        self._moved = True
        self._pool.failed_over(failed)
        logger.info(
            "request %s moved from %s to %s", self._request.id, failed.address, endpoint.address
        )
        self._start(endpoint)
        return True

    def _release(self) -> None:
        endpoint, self._endpoint = self._endpoint, None
        if endpoint is not None:
            self._pool.release(endpoint)
