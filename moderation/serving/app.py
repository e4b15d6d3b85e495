"""`moderation serve`: the ModerationService server, built from settings through runtime.py."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from moderation.core.judge import CoreMetrics
from moderation.ops.config import Settings
from moderation.ops.metrics import ModerationMetrics
from moderation.runtime import (
    ConfigurationError,
    StartupCancellation,
    build_core,
    build_escalation_tier,
    build_store,
    build_thumbnails,
    clip_spec,
    decode_workers,
    load_scorer,
    max_batch,
    resolve_device,
    video_limits,
)
from moderation.serving.listeners import (
    CategoryMetricsListener,
    EmbeddingStoreListener,
    Listener,
    ListenerQueue,
    Listeners,
    ReviewQueueListener,
    ShadowListener,
    ThumbnailListener,
)
from moderation.serving.bank_service import SERVICE_NAME as BANK_SERVICE_NAME
from moderation.serving.bank_service import BankServicer
from moderation.serving.builder import ServerBuilder, policy_reloader
from moderation.serving.console import ConsoleServer
from moderation.serving.review_service import SERVICE_NAME as REVIEW_SERVICE_NAME
from moderation.serving.review_service import ReviewServicer
from moderation.serving.policy_reload import PolicyReloader
from moderation.serving.shell import ServingShell
from moderation.signals.clip.batcher import BatcherMetrics
from moderation.state.store import StateStore
from moderation.state.thumbnails import Thumbnails
from moderation.serving.recorder import RequestRecorder
from moderation.serving.servicer import ModerationServicer
from moderation.v1 import banks_pb2_grpc, moderation_pb2, moderation_pb2_grpc, review_pb2_grpc

if TYPE_CHECKING:
    from moderation.serving.bank_refresh import Banks

log = logging.getLogger(__name__)

SERVICE_NAME = moderation_pb2.DESCRIPTOR.services_by_name["ModerationService"].full_name


def configure_torch_threads(settings: Settings, device: str, cpu_share: int | None = None) -> None:
    """Serving startup: torch's process-wide intra-op thread count, set once, before any model loads.
    An exported model folder serves without torch: nothing to set, and torch stays unimported.
    `cpu_share`: the cores this process may use when it is one of several workers (serving/workers.py)."""
    if settings.clip_model_dir is not None:
        return
    import torch

    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    elif not device.startswith("cpu"):
        # The model runs on the GPU; the CPU's torch work is preprocessing in the decode
        # threads, which are the parallelism: intra-op threads in each of them would
        # only oversubscribe the cores (measured no faster on 2 cores, see README).
        torch.set_num_threads(1)
    elif cpu_share:
        # One of several server processes on the CPU: torch's default (every core) in each would oversubscribe them.
        torch.set_num_threads(cpu_share)


def count_dropped(metrics: ModerationMetrics, kind: str, count: int) -> None:
    """The store's drops: review cases in the review metric (queue full, or lost with the store), rows in the store's."""
    if kind == "case_queue_full":
        metrics.review_cases_dropped.labels("queue_full").inc(count)
        return
    if kind == "case":
        metrics.review_cases_dropped.labels("store").inc(count)
    metrics.store_dropped.labels(kind).inc(count)


def build_listeners(
    metrics: ModerationMetrics, store: StateStore | None, thumbnails: Thumbnails | None, review_queue: bool = False
) -> Listeners:
    """A bounded queue and a thread per listener: category metrics and shadows always, stores when configured.

    The review queue listener comes before the embedding store's, whose close closes the store:
    at shutdown the cases it still holds reach the store's buffer before its last flush.
    """
    listeners: list[Listener] = [CategoryMetricsListener(metrics), ShadowListener(metrics)]
    if store is not None and review_queue:
        listeners.append(ReviewQueueListener(store))
    if store is not None:
        listeners.append(EmbeddingStoreListener(store))
    if thumbnails is not None:
        listeners.append(ThumbnailListener(thumbnails))
    return Listeners([ListenerQueue(listener, metrics.listener_dropped.labels(listener.name).inc) for listener in listeners])


def build_shell(
    settings: Settings, metrics: ModerationMetrics, cancellation: StartupCancellation | None = None
) -> tuple[ServingShell, PolicyReloader]:
    """Load the CLIP model, every policy and the escalation tier; slow, runs in a worker thread.

    With `cancellation`, raises CompileCancelled soon after it is cancelled (between steps,
    or within one chunk of a policy compile).
    """
    from moderation.policy.registry import PolicyRegistry

    cancellation = cancellation or StartupCancellation()
    spec = clip_spec(settings)
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
    core_metrics = CoreMetrics(
        signal_seconds=lambda signal, seconds: metrics.signal_seconds.labels(signal).observe(seconds),
        tier_agreement=lambda policy, category, agrees: metrics.tier_agreement.labels(policy, category, "agree" if agrees else "disagree").inc(),
    )
    # Drops (the database away longer than the buffer lasts) are counted, never a failed request.
    evicted = metrics.thumbnails_evicted.inc
    store = build_store(settings, on_dropped=lambda kind, count: count_dropped(metrics, kind, count), on_evicted=evicted)
    banks = load_banks(settings, store, metrics)
    if banks is None:
        needing = sorted({f"{s.policy.id}@{s.policy.version}" for s in registry.all() if s.policy.banks})
        if needing:
            raise ConfigurationError(
                f"policies {', '.join(needing)} match banks of known content, but this server has no banks: they need a "
                "state store (MODERATION_DATABASE_URL, or MODERATION_EMBEDDING_STORE on one machine) and the banks extra"
            )
    else:
        refresher = banks.refresher
        metrics.bank_version.set_function(lambda: refresher.version)
        metrics.bank_refresh_age.set_function(lambda: time.monotonic() - refresher.refreshed_at)
    cancellation.check()
    core = build_core(settings, scorer, build_escalation_tier(settings, metrics, spec.device), core_metrics, banks.live if banks else None)
    thumbnails = build_thumbnails(settings, store, on_evicted=evicted)
    if thumbnails is not None:
        kept = thumbnails  # read at scrape time: never stale
        metrics.thumbnails_bytes.set_function(lambda: kept.kept_bytes)
    shell = ServingShell(
        core,
        scorer,
        registry,
        build_listeners(metrics, store, thumbnails, review_queue=settings.reviewer_tokens_file is not None),
        BatcherMetrics(
            queue_depth=metrics.queue_depth.set,
            queue_capacity=metrics.queue_capacity.set,
            batch_wait_s=metrics.batch_wait_seconds.observe,
            batch_size=metrics.batch_size.observe,
        ),
        decode_workers=workers,
        max_batch=batch,
        max_wait_ms=settings.max_batch_wait_ms,
        max_queue=settings.max_queue,
        thumbnail_px=thumbnails.max_px if thumbnails is not None else None,
        banks=banks,
        video_limits=video_limits(settings),
    )
    return shell, reloader


def load_banks(settings: Settings, store: StateStore | None, metrics: ModerationMetrics) -> Banks | None:
    """This replica's banks, loaded from the state store; None without a store or without the banks extra."""
    if store is None:
        return None
    try:
        from moderation.serving.bank_refresh import RefreshMetrics, build_banks
    except ImportError as error:  # pdqhash or faiss-cpu missing
        log.warning("banks are off: %s (install the banks extra: pip install 'moderation[banks]')", error)
        return None

    def entries(counts: dict[tuple[str, str], int]) -> None:
        for (bank, kind), count in counts.items():
            metrics.bank_entries.labels(bank, kind).set(count)

    return build_banks(settings, store, RefreshMetrics(entries=entries, failed=metrics.bank_refresh_failures.inc))


@dataclass
class _Loaded:
    shell: ServingShell
    reloader: PolicyReloader


async def serve(settings: Settings, worker: int | None = None, cpu_share: int | None = None) -> None:
    """Run until SIGTERM or SIGINT. Raises ConfigurationError (and loading errors) when it cannot serve.

    `worker`: this process is worker `worker` of `serve --workers N` (moderation/serving/workers.py),
    entitled to `cpu_share` cores.
    """
    builder: ServerBuilder[_Loaded] = ServerBuilder(
        settings,
        SERVICE_NAME,
        limit=settings.max_concurrent_requests,
        loading_message="the server is still loading models and policies; retry shortly",
        options=[
            ("grpc.max_receive_message_length", settings.grpc_max_message_bytes),
            ("grpc.max_send_message_length", settings.grpc_max_message_bytes),
        ],
        unmetered_services=(BANK_SERVICE_NAME, REVIEW_SERVICE_NAME),
        # The review console calls ReviewService through a private Unix socket: TLS on the port is no obstacle.
        local_socket=bool(settings.console_port),
        worker=worker is not None,
    )
    metrics = builder.metrics
    servicer = ModerationServicer(
        RequestRecorder(metrics, tuple(settings.audit_metadata_keys), settings.audit_metadata_max_bytes),
        settings.max_image_bytes,
        settings.default_deadline_s,
        builder.admission,
        stream_window=settings.stream_window,
        max_video_bytes=settings.max_video_bytes,
    )
    moderation_pb2_grpc.add_ModerationServiceServicer_to_server(servicer, builder.server)
    # Always served: without a state store it answers FAILED_PRECONDITION saying what to set.
    bank_servicer = BankServicer.from_settings(settings)
    banks_pb2_grpc.add_BankServiceServicer_to_server(bank_servicer, builder.server)
    # Always served: without reviewer_tokens_file every call is refused (PERMISSION_DENIED) saying what to set.
    review_servicer = ReviewServicer.from_settings(settings, metrics)
    review_pb2_grpc.add_ReviewServiceServicer_to_server(review_servicer, builder.server)

    def load(cancellation: StartupCancellation) -> _Loaded:
        configure_torch_threads(settings, resolve_device(settings.device, settings.clip_model_dir), cpu_share)
        return _Loaded(*build_shell(settings, metrics, cancellation))

    console: ConsoleServer | None = None

    async def attach(loaded: _Loaded) -> None:
        nonlocal console
        loaded.shell.start()
        servicer.shell = loaded.shell
        await bank_servicer.attach(loaded.shell)
        await review_servicer.attach(loaded.shell)
        if settings.console_port:
            # The review console: a web page over ReviewService, called through the local socket with each reviewer's token.
            assert builder.lifecycle.local_target is not None  # bound with the port (local_socket above)
            console = ConsoleServer(settings.console_bind_host, settings.console_port, builder.lifecycle.local_target)
            await console.start()

    async def close(loaded: _Loaded) -> None:
        if console is not None:
            await console.close()
        await bank_servicer.close()
        await review_servicer.close()
        await loaded.shell.close()

    await builder.run("moderation", load, attach, close)
