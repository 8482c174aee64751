"""One Triton server's gRPC channel, and each model's declared interface.

Which server a request goes to is the endpoint pool's business (pool.py); a
`TritonBackend` is the channel to one address, made with a capped reconnect
backoff so that a server that comes back is reached again within a second or
so, whatever the length of its outage (gRPC's default backoff grows to 120 s).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from dataclasses import dataclass, field

import grpc
import numpy as np
from django.conf import settings
from tritonclient.grpc import MAX_GRPC_MESSAGE_SIZE, KeepAliveOptions, service_pb2
from tritonclient.grpc import aio as triton_aio
from tritonclient.utils import InferenceServerException

from llmgateway.compat import grpc_channel
from llmgateway.logconfig import describe_exception
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


# Reconnect backoff, in ms. gRPC's default grows to 120 s, so a server back after a long
# outage would be tried again only minutes later. Capped, a channel retries at least every
# second; the pool's probes reset a channel anyway once its server answers (pool.py).
# min_reconnect_backoff_ms is also the shortest time gRPC gives one connection attempt.
RECONNECT_BACKOFF_MS = {
    "grpc.initial_reconnect_backoff_ms": 100,
    "grpc.min_reconnect_backoff_ms": 1000,
    "grpc.max_reconnect_backoff_ms": 1000,
}


def channel_options() -> list[tuple[str, int]]:
    """tritonclient's own defaults (message sizes, keepalive), plus the capped backoff."""
    keepalive = KeepAliveOptions()
    return [
        ("grpc.max_send_message_length", MAX_GRPC_MESSAGE_SIZE),
        ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_SIZE),
        ("grpc.keepalive_time_ms", keepalive.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", keepalive.keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", keepalive.keepalive_permit_without_calls),
        ("grpc.http2.max_pings_without_data", keepalive.http2_max_pings_without_data),
        *RECONNECT_BACKOFF_MS.items(),
        # gRPC shares connections (subchannels) between channels to the same address by
        # default: a new channel would inherit the old one's failed connection and its
        # backoff, and resetting a channel (pool.py) would not reset anything.
        ("grpc.use_local_subchannel_pool", 1),
    ]


class TritonBackend:
    """The channel to the Triton server at one address (`ip:port` or `host:port`)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.client = triton_aio.InferenceServerClient(url, channel_args=channel_options())
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

    @functools.cached_property
    def stream_infer_sync(self) -> grpc.UnaryStreamMultiCallable:
        """ModelStreamInfer on a sync channel, for the threaded reader (reader.py), made
        on first use: with the default grpc.aio reader no second channel is opened."""
        self._sync_channel = grpc.insecure_channel(self.url, options=channel_options())
        return self._sync_channel.unary_stream(
            STREAM_INFER,
            request_serializer=service_pb2.ModelInferRequest.SerializeToString,
            response_deserializer=service_pb2.ModelStreamInferResponse.FromString,
        )

    async def connection_failure(self, deadline: float) -> str | None:
        """None once the channel is connected (at once when it already is, as it almost
        always is); what went wrong if it fails to connect first. Waits at most until
        `deadline` (time.monotonic()), then leaves the rest to the call's own deadline.

        Why not the call's wait_for_connection(): for ModelStreamInfer it returns only
        with the server's initial metadata, which Triton sends with the first response,
        so it would wait for the first token (or a whole non-streamed answer).
        """
        channel = self.client._channel
        state = channel.get_state(try_to_connect=True)
        while state is not grpc.ChannelConnectivity.READY:
            if state in (
                grpc.ChannelConnectivity.TRANSIENT_FAILURE,
                grpc.ChannelConnectivity.SHUTDOWN,
            ):
                return f"could not connect ({state.name.lower()})"
            try:
                async with asyncio.timeout_at(_loop_time(deadline)):
                    await channel.wait_for_state_change(state)
            except TimeoutError:
                return None
            state = channel.get_state()
        return None

    async def model_spec(self, model: str) -> ModelSpec:
        """The model's declared interface, read from the server (the pool caches it)."""
        config = await self._call(self.client.get_model_config(model, as_json=True))
        return parse_model_config(model, config.get("config", config))

    async def readiness(self, models: list[str], *, within: float) -> list[bool]:
        """[server ready, then each model ready]; TritonUnavailable if the server does
        not answer within `within` seconds."""
        return await self._call(self._readiness(models), within=within)

    async def _readiness(self, models: list[str]) -> list[bool]:
        # One after the other: a millisecond each, and nothing left behind if cancelled.
        server = bool(await self.client.is_server_ready())
        return [server, *[bool(await self.client.is_model_ready(m)) for m in models]]

    async def close(self) -> None:
        await self.client.close()
        sync_channel = getattr(self, "_sync_channel", None)
        if sync_channel is not None:
            sync_channel.close()

    async def _call(self, awaitable, *, within: float | None = None):
        try:
            return await asyncio.wait_for(awaitable, within or settings.TRITON_CONNECT_TIMEOUT)
        except (TimeoutError, InferenceServerException, grpc.RpcError) as exc:
            logger.debug("Triton at %s: %s", self.url, describe_exception(exc))
            raise TritonUnavailable("The inference server is unreachable or not ready.") from exc


def _loop_time(deadline: float) -> float:
    """`deadline` on time.monotonic() as the running loop's clock (asyncio.timeout_at)."""
    return asyncio.get_running_loop().time() + (deadline - time.monotonic())
