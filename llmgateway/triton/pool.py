"""Several Tritons behind one model: which endpoint takes a request, and what is known
of each.

An `EndpointPool` serves one configured address list (a model config's `triton_url`:
`host:port`, comma-separated). Each address is an endpoint, and so is each address a
host name resolves to (a Kubernetes headless Service: one per ready pod), re-resolved
every TRITON_RESOLVE_SECONDS.

- Balancing: a request goes to the endpoint with the fewest requests in flight among
  those that serve its model, ties taken in turn (`acquire`).
- Health: probes ask each endpoint whether the server and the pool's models are ready
  (every TRITON_PROBE_SECONDS; a down endpoint four times as often, so that it is back
  in use within about half a second of being ready). A call failing with UNAVAILABLE
  marks its endpoint down at once (`failed`), and a model missing or not ready marks
  that model down there. A down endpoint gets no traffic until a probe passes.
- Recovery: a down endpoint is probed over a fresh channel, which replaces its old one
  when the probe passes: whatever backoff the old channel had built up is gone.
- Failover is the caller's (stream.py: once, before any output, within the deadline).

gRPC channels belong to the event loop that made them, so there is one pool per
address list and event loop: under uvicorn, per worker, and balancing is per worker.
Everything here runs on that loop, so counts need no lock. A pool nobody used for
IDLE_SECONDS stops probing and is dropped (an address list the admin replaced).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
from django.conf import settings
from tritonclient.grpc import service_pb2
from tritonclient.utils import InferenceServerException

from llmgateway.addresses import Target, address_join, targets_parse
from llmgateway.logconfig import describe_exception
from llmgateway.triton.client import ModelSpec, TritonBackend
from llmgateway.triton.errors import TritonUnavailable
from llmgateway.triton.metrics import EndpointMetrics

logger = logging.getLogger(__name__)

# Failure kinds (also the errors metric's `kind`). The first two move a request elsewhere.
UNAVAILABLE = "unavailable"
MODEL_NOT_READY = "model_not_ready"
INFERENCE = "inference"
DEADLINE = "deadline"

# Triton's words for a model it does not have loaded (gRPC NOT_FOUND, or the error of a
# streamed response): "Request for unknown model: 'x' is not found", "... has no
# available versions", "... is not ready".
_MODEL_MISSING = re.compile(r"unknown model|no available versions|is not ready", re.IGNORECASE)
# A pool unused this long stops probing and is forgotten (recreated on next use).
IDLE_SECONDS = 600.0
# How much more often a down endpoint is probed than an up one.
DOWN_PROBE_SPEEDUP = 4


def rpc_failure(exc: grpc.RpcError) -> str:
    """The failure kind of a failed gRPC call."""
    code = exc.code() if hasattr(exc, "code") else None
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return DEADLINE
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNIMPLEMENTED):
        return UNAVAILABLE
    details = exc.details() if hasattr(exc, "details") else ""
    if code == grpc.StatusCode.NOT_FOUND or _MODEL_MISSING.search(details or ""):
        return MODEL_NOT_READY
    return INFERENCE


def message_failure(error_message: str) -> str:
    """The failure kind of an error Triton sent as a streamed response."""
    return MODEL_NOT_READY if _MODEL_MISSING.search(error_message) else INFERENCE


def retryable(kind: str) -> bool:
    """Whether another endpoint may well succeed where this one failed."""
    return kind in (UNAVAILABLE, MODEL_NOT_READY)


@dataclass(eq=False)
class Endpoint:
    """One Triton server address and what this worker knows of it."""

    address: str  # ip:port, what its channel dials
    target: str  # the configured host:port it came from
    backend: TritonBackend
    in_flight: int = 0
    # None until the first probe: it takes traffic meanwhile (failover covers a dead one).
    up: bool | None = None
    not_ready: frozenset[str] = frozenset()  # models it does not serve now
    last_error: str = ""
    last_error_at: float | None = None  # time.time()
    last_probe_at: float | None = None  # time.time()
    errors: int = 0
    failovers: int = 0
    next_probe: float = 0.0  # time.monotonic()
    probing: bool = False
    metrics: EndpointMetrics = field(init=False)

    def __post_init__(self) -> None:
        self.metrics = EndpointMetrics(self.address)

    def serves(self, model: str) -> bool:
        return self.up is not False and model not in self.not_ready

    @property
    def state(self) -> str:
        return {None: "unprobed", True: "up", False: "down"}[self.up]


class EndpointPool:
    """The endpoints of one address list on one event loop (see the module docstring)."""

    def __init__(self, addresses: str) -> None:
        self.addresses = addresses
        self.targets: tuple[Target, ...] = targets_parse(addresses)
        self.endpoints: list[Endpoint] = []
        self.models: set[str] = set()
        self.used_at = time.monotonic()
        self._specs: dict[str, ModelSpec] = {}
        self._spec_lock = asyncio.Lock()
        self._turn = 0
        self._resolved = asyncio.Event()
        self._resolve_at = 0.0
        self._resolving = False
        self._task: asyncio.Task | None = None
        if all(t.is_ip for t in self.targets):
            self._apply({str(t): str(t) for t in self.targets})
            self._resolve_at = float("inf")  # nothing to resolve, ever
            self._resolved.set()

    # ---- balancing ---------------------------------------------------------------------

    def acquire(self, model: str, *, avoid: Endpoint | None = None) -> Endpoint:
        """The endpoint that takes the next request for `model`, counted in flight until
        `release`. TritonUnavailable when no endpoint (other than `avoid`) serves it."""
        self.used_at = time.monotonic()
        endpoints = self.endpoints
        count = len(endpoints)
        best: Endpoint | None = None
        start = self._turn
        for offset in range(count):
            endpoint = endpoints[(start + offset) % count]
            if endpoint is avoid or not endpoint.serves(model):
                continue
            if best is None or endpoint.in_flight < best.in_flight:
                best = endpoint
        if best is None:
            self.models.add(model)
            raise TritonUnavailable("The inference server is unavailable.")
        self._turn = start + 1 if start + 1 < count else 0
        best.in_flight += 1
        gauge = best.metrics.in_flight
        if gauge is not None:
            gauge.inc()
        return best

    def release(self, endpoint: Endpoint) -> None:
        endpoint.in_flight -= 1
        gauge = endpoint.metrics.in_flight
        if gauge is not None:
            gauge.dec()

    def failed(self, endpoint: Endpoint, model: str, kind: str, detail: str) -> None:
        """A call on `endpoint` failed: count it, and hold the endpoint (UNAVAILABLE) or
        the model there (MODEL_NOT_READY) down until a probe passes."""
        endpoint.errors += 1
        endpoint.last_error = f"{kind}: {detail}"[:300]
        endpoint.last_error_at = time.time()
        endpoint.metrics.error(kind)
        if kind == UNAVAILABLE and endpoint.up is not False:
            logger.warning("Triton at %s is down: %s", endpoint.address, detail)
            self._set_up(endpoint, False)
        elif kind == MODEL_NOT_READY and model not in endpoint.not_ready:
            logger.warning("Triton at %s does not serve %s: %s", endpoint.address, model, detail)
            endpoint.not_ready = endpoint.not_ready | {model}
            endpoint.next_probe = 0.0

    def failed_over(self, endpoint: Endpoint) -> None:
        endpoint.failovers += 1
        endpoint.metrics.failover()

    # ---- calls other than generation -----------------------------------------------------

    async def model_spec(self, model: str) -> ModelSpec:
        """The model's interface (read once from a serving endpoint; every endpoint of a
        pool is expected to serve the same model repository).

        TritonUnavailable at once when no endpoint serves the model now: callers ask for
        the interface first, so a request meets "no Triton" before anything else."""
        spec = self._specs.get(model)
        if spec is not None:
            for endpoint in self.endpoints:
                if endpoint.serves(model):
                    return spec
            raise TritonUnavailable("The inference server is unavailable.")
        self.models.add(model)
        await self._wait_resolved()
        async with self._spec_lock:
            if model not in self._specs:
                self._specs[model] = await self._with_failover(
                    model, lambda backend: backend.model_spec(model)
                )
        return self._specs[model]

    def forget(self, model: str) -> None:
        """Drop a cached interface (read it afresh: the model may have been replaced)."""
        self._specs.pop(model, None)

    async def infer(
        self,
        request: service_pb2.ModelInferRequest,
        *,
        timeout: float,  # noqa: ASYNC109 - a channel's own `infer` signature (the encoder's)
    ) -> service_pb2.ModelInferResponse:
        """One ModelInfer call (the visual encoder), failed over once like a generation.
        Raises grpc.RpcError as a channel's `infer` does."""
        deadline = time.monotonic() + timeout
        endpoint = self.acquire(request.model_name)
        try:
            try:
                return await endpoint.backend.infer(request, timeout=timeout)
            except grpc.RpcError as exc:
                kind = rpc_failure(exc)
                self.failed(endpoint, request.model_name, kind, exc.details() or "")
                if not retryable(kind):
                    raise
                first, endpoint = endpoint, self._try_acquire(request.model_name, first=endpoint)
                if endpoint is None:
                    raise
                self.failed_over(first)
            return await endpoint.backend.infer(request, timeout=deadline - time.monotonic())
        finally:
            if endpoint is not None:
                self.release(endpoint)

    def _try_acquire(self, model: str, *, first: Endpoint) -> Endpoint | None:
        """Another endpoint for a call that failed on `first` (released here), or None."""
        self.release(first)
        try:
            return self.acquire(model, avoid=first)
        except TritonUnavailable:
            return None

    async def _with_failover(self, model: str, call: Callable[[TritonBackend], object]):
        """`call(backend)` on a serving endpoint, then on one other if that one fails."""
        tried: Endpoint | None = None
        for _ in range(2):
            endpoint = self.acquire(model, avoid=tried)
            try:
                return await call(endpoint.backend)
            except TritonUnavailable as exc:
                kind = _unavailable_kind(exc)
                self.failed(endpoint, model, kind, _describe(exc))
                if tried is not None or not retryable(kind):
                    raise
                tried = endpoint
            finally:
                self.release(endpoint)
        raise AssertionError("unreachable")

    # ---- readiness and status ----------------------------------------------------------

    async def ready(self, model: str) -> bool:
        """Whether some endpoint serves `model`, as the probes last saw it (a first probe
        round runs now if `model` was never probed)."""
        self.used_at = time.monotonic()
        if model not in self.models or any(e.up is None for e in self.endpoints):
            self.models.add(model)
            await self.probe_now()
        return any(e.serves(model) for e in self.endpoints)

    async def check(self, model: str) -> list[Endpoint]:
        """Every endpoint, probed now for `model` too (the admin's Check Triton)."""
        self.used_at = time.monotonic()
        self.models.add(model)
        await self.probe_now()
        return list(self.endpoints)

    async def probe_now(self) -> None:
        """Resolve names and probe every endpoint, now (bounded by TRITON_CONNECT_TIMEOUT)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(settings.TRITON_CONNECT_TIMEOUT + 1):
                await self._resolve(force=True)
                await asyncio.gather(*(self._probe(e, force=True) for e in list(self.endpoints)))

    # ---- upkeep: resolution and probes ------------------------------------------------------

    def start(self) -> None:
        """Run the probes and re-resolution on the running loop until the pool idles."""
        self._task = asyncio.get_running_loop().create_task(self._upkeep())

    async def _upkeep(self) -> None:
        tick = probe_seconds() / DOWN_PROBE_SPEEDUP
        try:
            while time.monotonic() - self.used_at < IDLE_SECONDS:
                now = time.monotonic()
                if now >= self._resolve_at and not self._resolving:
                    _spawn(self._resolve())
                for endpoint in self.endpoints:
                    if now >= endpoint.next_probe and not endpoint.probing:
                        _spawn(self._probe(endpoint))
                await asyncio.sleep(tick)
        finally:
            _forget(self)

    async def _resolve(self, *, force: bool = False) -> None:
        if self._resolve_at == float("inf") or (self._resolving and not force):
            return
        self._resolving = True
        try:
            addresses: dict[str, str] = {}
            for target in self.targets:
                for address in await self._addresses(target):
                    addresses.setdefault(address, str(target))
            self._apply(addresses)
        finally:
            self._resolving = False
            self._resolve_at = time.monotonic() + settings.TRITON_RESOLVE_SECONDS
            self._resolved.set()

    async def _addresses(self, target: Target) -> list[str]:
        """The addresses `target` stands for now: itself for an IP, else what its name
        resolves to, IPv4 if it has any (a dual-stack pod must not count twice). A name
        that no longer exists resolves to none; other resolver failures keep what it had."""
        if target.is_ip:
            return [str(target)]
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            logger.warning("Triton address %s: %s", target, exc)
            if exc.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", None)):
                return []
            return [e.address for e in self.endpoints if e.target == str(target)]
        v4 = sorted({info[4][0] for info in infos if info[0] == socket.AF_INET})
        hosts = v4 or sorted({info[4][0] for info in infos if info[0] == socket.AF_INET6})
        return [address_join(host, target.port) for host in hosts]

    def _apply(self, addresses: dict[str, str]) -> None:
        """Make the endpoints those of `addresses` (address → target), keeping the ones
        already known. A dropped endpoint's calls in flight finish on their own channel."""
        known = {e.address: e for e in self.endpoints}
        if set(known) == set(addresses):
            return
        endpoints = []
        for address, target in addresses.items():
            endpoint = known.get(address)
            if endpoint is None:
                endpoint = Endpoint(address, target, TritonBackend(address))
                logger.info("Triton endpoint %s (%s) added", address, target)
            endpoints.append(endpoint)
        for address in set(known) - set(addresses):
            logger.info("Triton endpoint %s removed", address)
        self.endpoints = endpoints
        self._turn = 0

    async def _probe(self, endpoint: Endpoint, *, force: bool = False) -> None:
        """Ask the endpoint whether the server and the pool's models are ready. A down
        endpoint is asked over a new channel, which becomes its channel if it answers."""
        if endpoint.probing and not force:
            return
        endpoint.probing = True
        models = sorted(self.models)
        fresh = TritonBackend(endpoint.address) if endpoint.up is False else None
        backend = fresh or endpoint.backend
        try:
            server, *ready = await backend.readiness(models, within=settings.TRITON_CONNECT_TIMEOUT)
            problem = "" if server else "server not ready"
        except TritonUnavailable as exc:
            server, ready, problem = False, [], _describe(exc)
        finally:
            endpoint.probing = False
            endpoint.last_probe_at = time.time()
        interval = probe_seconds()
        if server:
            endpoint.not_ready = frozenset(m for m, ok in zip(models, ready, strict=True) if not ok)
            if fresh is not None:
                endpoint.backend, fresh = fresh, None  # the reset: calls start on the new channel
                logger.info("Triton at %s is back", endpoint.address)
            self._set_up(endpoint, True)
        else:
            if endpoint.up is not False:
                logger.warning("Triton at %s is down: %s", endpoint.address, problem)
            endpoint.last_error, endpoint.last_error_at = f"probe: {problem}"[:300], time.time()
            self._set_up(endpoint, False)
            interval /= DOWN_PROBE_SPEEDUP
        endpoint.next_probe = time.monotonic() + interval
        if fresh is not None:
            await fresh.close()

    def _set_up(self, endpoint: Endpoint, up: bool) -> None:
        endpoint.up = up
        endpoint.metrics.set_up(up)
        if not up:
            endpoint.next_probe = 0.0  # probe it soon, at the down rate

    async def _wait_resolved(self) -> None:
        if not self._resolved.is_set():
            self.used_at = time.monotonic()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(settings.TRITON_CONNECT_TIMEOUT):
                    await self._resolve(force=True)


def _unavailable_kind(exc: TritonUnavailable) -> str:
    """The failure kind behind a TritonBackend call's TritonUnavailable."""
    cause = exc.__cause__
    if isinstance(cause, grpc.RpcError):
        return rpc_failure(cause)
    if isinstance(cause, InferenceServerException):
        status = cause.status() or ""
        if "NOT_FOUND" in status or _MODEL_MISSING.search(cause.message() or ""):
            return MODEL_NOT_READY
    return UNAVAILABLE


def _describe(exc: Exception) -> str:
    """What went wrong, for logs and the admin: the gRPC status and details if any."""
    cause = exc.__cause__ or exc
    if isinstance(cause, TimeoutError):
        return "no answer in time"
    return describe_exception(cause)


def probe_seconds() -> float:
    return max(float(settings.TRITON_PROBE_SECONDS), 0.05)


# Tasks spawned by the pools, kept until done (the loop holds only weak references).
_tasks: set[asyncio.Task] = set()


def _spawn(coroutine) -> None:
    task = asyncio.get_running_loop().create_task(coroutine)
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)


_pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, EndpointPool]] = (
    weakref.WeakKeyDictionary()
)


def get_pool(addresses: str) -> EndpointPool:
    """The pool for `addresses` (a model config's triton_url) on the running loop.

    TritonUnavailable when `addresses` is malformed (ModelConfig validates it, so only
    a row written around the validation gets here).
    """
    loop = asyncio.get_running_loop()
    per_loop = _pools.get(loop)
    if per_loop is None:
        per_loop = _pools[loop] = {}
    pool = per_loop.get(addresses)
    if pool is None:
        try:
            pool = EndpointPool(addresses)
        except ValueError as exc:
            logger.error("Triton addresses %r: %s", addresses, exc)
            raise TritonUnavailable("The inference server is misconfigured.") from exc
        per_loop[addresses] = pool
        pool.start()
    return pool


def _forget(pool: EndpointPool) -> None:
    for per_loop in list(_pools.values()):
        if per_loop.get(pool.addresses) is pool:
            del per_loop[pool.addresses]
