"""`moderation serve`: the ModerationService server, built from settings through runtime.py."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from moderation.ops.config import Settings
from moderation.serving.pipeline import ModerationPipeline
from moderation.serving.policy_reload import PolicyReloader
from moderation.ops.metrics import ModerationMetrics
from moderation.runtime import (
    StartupCancellation,
    build_escalation_tier,
    build_store,
    build_thumbnails,
    clip_spec,
    decode_limits,
    decode_workers,
    load_scorer,
    max_batch,
)
from moderation.serving.builder import ServerBuilder, policy_reloader
from moderation.serving.recorder import RequestRecorder
from moderation.serving.servicer import ModerationServicer
from moderation.v1 import moderation_pb2, moderation_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = moderation_pb2.DESCRIPTOR.services_by_name["ModerationService"].full_name


def build_pipeline(
    settings: Settings, metrics: ModerationMetrics, cancellation: StartupCancellation | None = None
) -> tuple[ModerationPipeline, PolicyReloader]:
    """Load the CLIP model, every policy and the escalation tier; slow, runs in a worker thread.

    With `cancellation`, raises CompileCancelled soon after it is cancelled (between steps,
    or within one chunk of a policy compile).
    """
    import torch

    from moderation.policy.registry import PolicyRegistry

    cancellation = cancellation or StartupCancellation()
    spec = clip_spec(settings)
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    elif not spec.device.startswith("cpu"):
        # The model runs on the GPU; the CPU's torch work is preprocessing in the decode
        # threads, which are the parallelism: intra-op threads in each of them would
        # only oversubscribe the cores (measured no faster on 2 cores, see README).
        torch.set_num_threads(1)
    scorer = load_scorer(spec)
    cancellation.check()
    registry = PolicyRegistry(scorer.index_policy, scorer.model_id, random_weights=scorer.random_weights)
    reloader = policy_reloader(settings, registry, metrics, cancellation, scorer.model_id)
    summary = reloader.load_now()
    cancellation.check()
    batch, workers = max_batch(settings, spec.device), decode_workers(settings)
    metrics.model_info.labels(scorer.model_id, str(scorer.random_weights).lower()).set(1)
    log.info(
        "serving policies %s with model %s (%s backend, %s, %s; batches up to %d, %d decode threads) (default: %s)",
        ", ".join(summary.served), scorer.model_id, scorer.encoder.backend, spec.device,
        str(scorer.encoder.dtype).removeprefix("torch."), batch, workers,
        registry.default_id,
    )  # fmt: skip
    pipeline = ModerationPipeline(
        scorer,
        registry,
        decode_limits(settings, scorer.image_size),
        metrics,
        decode_workers=workers,
        max_batch=batch,
        max_wait_ms=settings.max_batch_wait_ms,
        max_queue=settings.max_queue,
        store=build_store(settings),
        thumbnails=build_thumbnails(settings),
        escalation=build_escalation_tier(settings, metrics, spec.device),
    )
    return pipeline, reloader


@dataclass
class _Loaded:
    pipeline: ModerationPipeline
    reloader: PolicyReloader


async def serve(settings: Settings) -> None:
    """Run until SIGTERM or SIGINT. Raises ConfigurationError (and loading errors) when it cannot serve."""
    builder: ServerBuilder[_Loaded] = ServerBuilder(
        settings,
        SERVICE_NAME,
        limit=settings.max_concurrent_requests,
        loading_message="the server is still loading models and policies; retry shortly",
        options=[
            ("grpc.max_receive_message_length", settings.grpc_max_message_bytes),
            ("grpc.max_send_message_length", settings.grpc_max_message_bytes),
        ],
    )
    metrics = builder.metrics
    servicer = ModerationServicer(
        RequestRecorder(metrics, tuple(settings.audit_metadata_keys), settings.audit_metadata_max_bytes),
        settings.max_image_bytes,
        settings.default_deadline_s,
        builder.admission,
        stream_window=settings.stream_window,
    )
    moderation_pb2_grpc.add_ModerationServiceServicer_to_server(servicer, builder.server)

    def load(cancellation: StartupCancellation) -> _Loaded:
        return _Loaded(*build_pipeline(settings, metrics, cancellation))

    async def attach(loaded: _Loaded) -> None:
        loaded.pipeline.start()
        servicer.pipeline = loaded.pipeline

    async def close(loaded: _Loaded) -> None:
        await loaded.pipeline.close()

    await builder.run("moderation", load, attach, close)
