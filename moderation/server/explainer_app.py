"""`moderation explain-serve`: the SmolVLM2 explainer as its own gRPC service (ExplainerService).

The scorer calls it with a deadline when `explainer_mode` is remote; in
Kubernetes it runs as a separate Deployment that only the scorer may reach.
It serves the same policy directory as the scorer, and refuses a request for a
policy version it does not hold, so a rationale never cites another version.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server

from moderation.config import Settings
from moderation.imaging import DecodeLimits, ImageRejected, decode_frames
from moderation.metrics import ModerationMetrics
from moderation.policy.registry import PolicyNotFound, PolicyRegistry
from moderation.server.reload import PolicyReloader
from moderation.v1 import moderation_pb2 as pb
from moderation.v1 import moderation_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["ExplainerService"].full_name


class ExplainerServicer(pb_grpc.ExplainerServiceServicer):
    def __init__(self, registry: PolicyRegistry, limits: DecodeLimits, max_waiting: int, max_new_tokens: int):
        self.explainer = None  # set once the model has loaded; until then UNAVAILABLE
        self._registry = registry
        self._limits = limits
        self._max_new_tokens = max_new_tokens
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="explainer")
        self._max_waiting = max_waiting
        self._waiting = 0

    def _explain(self, request: pb.ExplainRequest, policy):  # noqa: ANN001, ANN202
        frame = decode_frames(request.image, self._limits, sample_frames=1).frames[0]
        return self.explainer.explain(frame, policy, list(request.category_ids), policy.escalation.instruction, self._max_new_tokens)

    async def Explain(self, request: pb.ExplainRequest, context: grpc.aio.ServicerContext) -> pb.ExplainResponse:
        from moderation.escalation.explainer import ExplanationFailed

        if self.explainer is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the explainer is still loading its model; retry shortly")
        try:
            policy = self._registry.get(request.policy_id).policy
        except PolicyNotFound as err:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(err))
        if policy.version != request.policy_version:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"the explainer serves {policy.id}@{policy.version}, not version {request.policy_version!r}; retry after the policy rollout",
            )
        unknown = [c for c in request.category_ids if c not in {k.id for k in policy.categories}]
        if not request.category_ids or unknown:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"category_ids must name categories of {policy.id}; unknown: {unknown}")
        if self._waiting >= self._max_waiting:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"{self._waiting} explanations are already waiting; retry later")
        started = time.perf_counter()
        self._waiting += 1
        try:
            result = await asyncio.get_running_loop().run_in_executor(self._pool, self._explain, request, policy)
        except ImageRejected as err:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"invalid image: {err}")
        except ExplanationFailed as err:
            await context.abort(grpc.StatusCode.INTERNAL, f"no valid verdict: {err}")
        finally:
            self._waiting -= 1
        v = result.verdict
        return pb.ExplainResponse(
            violates=v.violates,
            category_id=v.category_id,
            clause_id=v.clause_id,
            rationale=v.rationale,
            confidence=v.confidence,
            model=self.explainer.info.model_id,
            generated_tokens=result.generated_tokens,
            latency_ms=(time.perf_counter() - started) * 1e3,
        )


async def serve_explainer(settings: Settings) -> None:
    from moderation.server.app import StartupError, _add_port, load_explainer_for, resolve_device

    metrics = ModerationMetrics()
    registry: PolicyRegistry = PolicyRegistry(lambda policy, should_stop: None, model_id=None)
    reloader = PolicyReloader(registry, settings.policies, metrics, model_id=settings.explainer_model)
    limits = DecodeLimits(max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels)
    servicer = ExplainerServicer(registry, limits, settings.explainer_max_waiting, settings.explainer_max_new_tokens)
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", settings.grpc_max_message_bytes)])
    pb_grpc.add_ExplainerServiceServicer_to_server(servicer, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if settings.reflection:
        reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    port = _add_port(server, settings)
    if port == 0:
        raise StartupError(f"cannot bind {settings.host}:{settings.port}; set MODERATION_PORT (--port)")
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    await server.start()
    if settings.metrics_port:
        start_http_server(settings.metrics_port, addr=settings.metrics_host)
    log.info("explainer gRPC listening on %s:%d (NOT_SERVING until the model loads)", settings.host, port)

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    def load():  # noqa: ANN202
        reloader.load_now()
        return load_explainer_for(settings, resolve_device(settings.device))

    try:
        servicer.explainer = await loop.run_in_executor(None, load)
    except BaseException:
        await server.stop(None)
        raise
    watcher = asyncio.create_task(reloader.watch(stop, force_polling=settings.policy_watch_polling)) if settings.watch_policies else None
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info("explainer SERVING")
    await stop.wait()
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    await server.stop(settings.grace_period_s)
    if watcher is not None:
        await watcher
    reloader.close()
    log.info("stopped")
