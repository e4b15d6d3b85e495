"""Server lifecycle: bind, report NOT_SERVING, load models and policies, SERVING, drain on SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal
from datetime import timedelta
from pathlib import Path

import grpc
import torch
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server

from moderation.clip import ClipModelSpec, ClipScorer, load_clip
from moderation.config import Device, ExplainerMode, Settings
from moderation.escalation.tier import EscalationTier, InProcessExplainer, RemoteExplainer
from moderation.imaging import DecodeLimits
from moderation.metrics import ModerationMetrics
from moderation.pipeline import ModerationPipeline
from moderation.policy.registry import PolicyRegistry
from moderation.store import EmbeddingStore
from moderation.server.auth import TokenAuth, TokenAuthInterceptor, load_tokens
from moderation.server.reload import PolicyReloader
from moderation.server.servicer import ModerationServicer, ServingState
from moderation.v1 import moderation_pb2, moderation_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = moderation_pb2.DESCRIPTOR.services_by_name["ModerationService"].full_name


class StartupError(RuntimeError):
    """Configuration that cannot serve: the message says which setting to change."""


def resolve_device(device: Device) -> str:
    if device is Device.AUTO:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device is Device.CUDA and not torch.cuda.is_available():
        raise StartupError("device is 'cuda' but torch sees no CUDA device; set MODERATION_DEVICE=cpu or auto")
    return device.value


def build_pipeline(settings: Settings, metrics: ModerationMetrics) -> tuple[ModerationPipeline, PolicyReloader]:
    """Load the CLIP model and every policy; slow, runs in a worker thread."""
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    spec = ClipModelSpec(
        model=settings.clip_model,
        weights=settings.clip_weights,
        cache_dir=settings.weights_cache,
        device=resolve_device(settings.device),
        allow_downloads=settings.allow_downloads,
    )
    scorer = ClipScorer(load_clip(spec))
    registry = PolicyRegistry(scorer.index_policy, scorer.model_id, random_weights=scorer.random_weights)
    reloader = PolicyReloader(registry, settings.policies, metrics, scorer.model_id)
    summary = reloader.load_now()
    metrics.model_info.labels(scorer.model_id, str(scorer.random_weights).lower()).set(1)
    log.info("serving policies %s with model %s (default: %s)", ", ".join(summary.served), scorer.model_id, registry.default_id)
    limits = DecodeLimits(
        max_bytes=settings.max_image_bytes,
        max_pixels=settings.max_image_pixels,
        draft_size=scorer.clip.image_size if settings.jpeg_draft else None,
        sample_frames=settings.sample_frames,
        max_frames=settings.max_frames,
        max_animation_pixels=settings.max_animation_pixels,
    )
    pipeline = ModerationPipeline(
        scorer,
        registry,
        limits,
        metrics,
        decode_workers=settings.decode_workers,
        max_batch=settings.max_batch,
        max_wait_ms=settings.max_batch_wait_ms,
        max_queue=settings.max_queue,
        store=EmbeddingStore(settings.embedding_store, retention=timedelta(days=settings.embedding_retention_days))
        if settings.embedding_store
        else None,
        escalation=build_escalation_tier(settings, metrics, spec.device),
    )
    return pipeline, reloader


def _read(path: Path, setting: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise StartupError(f"cannot read {path} ({err.strerror}); check {setting}") from err


def _add_port(server: grpc.aio.Server, settings: Settings) -> int:
    address = f"{settings.host}:{settings.port}"
    if settings.tls_cert is None or settings.tls_key is None:
        return server.add_insecure_port(address)
    client_ca = _read(settings.tls_client_ca, "MODERATION_TLS_CLIENT_CA") if settings.tls_client_ca else None
    credentials = grpc.ssl_server_credentials(
        [(_read(settings.tls_key, "MODERATION_TLS_KEY"), _read(settings.tls_cert, "MODERATION_TLS_CERT"))],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )
    return server.add_secure_port(address, credentials)


def load_explainer_for(settings: Settings, device: str):  # noqa: ANN201 - Explainer, imported lazily
    """Load (and warm up) the SmolVLM2 explainer named by the settings; slow."""
    from moderation.escalation.explainer import Explainer
    from moderation.escalation.loading import ExplainerSpec

    spec = ExplainerSpec(
        model=settings.explainer_model,
        weights=settings.explainer_weights,
        device=device,
        allow_downloads=settings.allow_downloads,
        cache_dir=settings.weights_cache,
        quantize=settings.explainer_quantize,
    )
    explainer = Explainer.load(spec)
    explainer.warmup()
    log.info("explainer %s loaded%s", spec.model_id, " (int8)" if spec.quantize else "")
    return explainer


def build_escalation_tier(settings: Settings, metrics: ModerationMetrics, device: str) -> EscalationTier | None:
    if settings.explainer_mode is ExplainerMode.OFF:
        return None
    if settings.explainer_mode is ExplainerMode.REMOTE:
        backend = RemoteExplainer(settings.explainer_target)
    else:
        backend = InProcessExplainer(load_explainer_for(settings, device), settings.explainer_max_new_tokens)
    return EscalationTier(
        backend,
        metrics,
        max_concurrent=settings.explainer_max_concurrent,
        max_waiting=settings.explainer_max_waiting,
        timeout_s=settings.explainer_timeout_s,
        budget_per_minute=settings.explainer_budget_per_minute,
        failure_threshold=settings.explainer_failure_threshold,
        cooldown_s=settings.explainer_cooldown_s,
    )


async def _start_health_port(settings: Settings, health_servicer: health.aio.HealthServicer) -> grpc.aio.Server | None:
    """Plaintext grpc.health.v1 on its own port: kubelet gRPC probes cannot speak TLS."""
    if not settings.health_port:
        return None
    health_server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, health_server)
    if health_server.add_insecure_port(f"{settings.host}:{settings.health_port}") == 0:
        raise StartupError(f"cannot bind health port {settings.health_port}; set MODERATION_HEALTH_PORT to a free port")
    await health_server.start()
    log.info("health (plaintext, grpc.health.v1 only) on %s:%d", settings.host, settings.health_port)
    return health_server


async def serve(settings: Settings) -> None:
    """Run until SIGTERM or SIGINT. Raises StartupError (and loading errors) when it cannot serve."""
    metrics = ModerationMetrics()
    state = ServingState()
    auth = TokenAuth(load_tokens(settings.auth_tokens_file)) if settings.auth_tokens_file else None
    server = grpc.aio.server(
        interceptors=[TokenAuthInterceptor(auth)] if auth else None,
        options=[
            ("grpc.max_receive_message_length", settings.grpc_max_message_bytes),
            ("grpc.max_send_message_length", settings.grpc_max_message_bytes),
        ]
    )
    moderation_pb2_grpc.add_ModerationServiceServicer_to_server(
        ModerationServicer(
            state,
            settings.max_concurrent_requests,
            settings.max_image_bytes,
            settings.default_deadline_s,
            auth=auth,
            audit_metadata_keys=tuple(settings.audit_metadata_keys),
        ),
        server,
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if settings.reflection:
        reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)

    async def set_health(status: int) -> None:
        for name in ("", SERVICE_NAME):
            await health_servicer.set(name, status)

    bound_port = _add_port(server, settings)
    if bound_port == 0:
        raise StartupError(f"cannot bind gRPC port {settings.host}:{settings.port}; set MODERATION_PORT (--port) to a free port")
    address = f"{settings.host}:{bound_port}"
    await set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
    await server.start()
    log.info("gRPC listening on %s (NOT_SERVING until models and policies load)", address)
    health_server = await _start_health_port(settings, health_servicer)
    if settings.metrics_port:
        start_http_server(settings.metrics_port, addr=settings.metrics_host)
        log.info("metrics on http://%s:%d/metrics", settings.metrics_host, settings.metrics_port)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    reloader: PolicyReloader | None = None
    watcher: asyncio.Task[None] | None = None
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    try:
        loading = loop.run_in_executor(None, build_pipeline, settings, metrics)
        done, _ = await asyncio.wait({loading, asyncio.ensure_future(stop.wait())}, return_when=asyncio.FIRST_COMPLETED)
        if loading in done:
            state.pipeline, reloader = loading.result()
            state.pipeline.start()
            if settings.watch_policies:
                watcher = asyncio.create_task(reloader.watch(stop, force_polling=settings.policy_watch_polling))
            await set_health(health_pb2.HealthCheckResponse.SERVING)
            log.info("SERVING on %s", address)
            await stop.wait()
    except BaseException:
        await server.stop(None)
        if health_server is not None:
            await health_server.stop(None)
        raise
    log.info("draining: NOT_SERVING, finishing in-flight calls for up to %.0f s", settings.grace_period_s)
    # Health first, so load balancers stop routing here; new calls get
    # UNAVAILABLE from the servicer while the in-flight ones finish. Only then
    # does the transport stop, so the stop itself cuts no call short.
    await set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
    if not await state.drain(settings.grace_period_s):
        log.warning("grace period over with %d calls still in flight; cancelling them", state.in_flight)
    await server.stop(1.0)
    if health_server is not None:
        await health_server.stop(None)
    if state.pipeline is not None:
        await state.pipeline.close()
    if watcher is not None:
        await watcher
    if reloader is not None:
        reloader.close()
    log.info("stopped")
