"""Settings -> what runs: model specs, device, scorer, judging core, explainer, escalation tier, stores.

The one place that turns configuration into objects. `moderation serve`,
`explain-serve` and the offline commands (policy test, calibrate, diff, compare,
bench) all build through here, so they run what the server would run. Nothing
here knows gRPC.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from moderation.signals.clip import ClipModelSpec, ClipScorer, load_encoder
from moderation.ops.config import Device, ExplainerMode, Settings
from moderation.ops.setting_files import ConfigurationError, read_bearer_token, read_setting_file
from moderation.core.decode import DecodeLimits
from moderation.ops.metrics import ModerationMetrics

if TYPE_CHECKING:  # transformers, xgrammar and torch load lazily
    from moderation.core.judge import CoreMetrics, JudgingCore
    from moderation.escalation.explainer import Explainer
    from moderation.escalation.loading import ExplainerSpec
    from moderation.escalation.tier import EscalationMetrics, EscalationTier
    from moderation.signals.banks.matcher import LiveBanks
    from moderation.state.store import DropCallback, StateStore
    from moderation.state.thumbnails import Thumbnails
    from moderation.video.decode import VideoLimits

log = logging.getLogger(__name__)


class Cancellable(Protocol):
    """What a startup cancellation stops: a policy compile in progress (serving's PolicyReloader)."""

    def cancel(self, reason: str) -> None: ...


class StartupCancellation:
    """SIGTERM while models and policies load: stop at the next step or text chunk, not after the whole load."""

    def __init__(self) -> None:
        self._cancelled = threading.Event()
        self._reloader: Cancellable | None = None
        self._lock = threading.Lock()

    def cancel(self) -> None:
        with self._lock:
            self._cancelled.set()
            reloader = self._reloader
        if reloader is not None:
            reloader.cancel("the server is shutting down")

    def check(self) -> None:
        """Raise CompileCancelled once cancel() was called."""
        from moderation.policy.compile import CompileCancelled

        if self._cancelled.is_set():
            raise CompileCancelled("the server is shutting down")

    def attach(self, reloader: Cancellable) -> None:
        with self._lock:
            self._reloader = reloader
            cancelled = self._cancelled.is_set()
        if cancelled:
            reloader.cancel("the server is shutting down")


def resolve_device(device: Device, model_dir: Path | None = None) -> str:
    """The device the CLIP tier runs on. An exported model folder runs on the CPU and never imports torch."""
    if model_dir is not None:
        if device is Device.CUDA:
            raise ConfigurationError("an exported model folder (clip_model_dir) runs on the CPU only; set MODERATION_DEVICE=cpu or auto")
        return "cpu"
    from moderation.ops.extras import missing_modules

    if missing_modules(("torch",)):
        raise ConfigurationError(
            "serving without an exported model folder needs the torch extra, and torch is not installed here: set "
            "MODERATION_CLIP_MODEL_DIR (--model-dir) to a folder `moderation export` wrote, or pip install 'moderation[torch]'"
        )
    import torch

    if device is Device.AUTO:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device is Device.CUDA and not torch.cuda.is_available():
        raise ConfigurationError("device is 'cuda' but torch sees no CUDA device; set MODERATION_DEVICE=cpu or auto")
    return device.value


# Images per CLIP forward pass when MODERATION_MAX_BATCH is not set. CPU: beyond 16 a
# batch only adds latency (the forward is compute-bound from a handful of images on).
# CUDA: ViT-B-32 fp16 on an H200 ran 15k img/s at 64, 26k at 256 and 28k at 1024
# (issue 11), so 256 takes ~95% of the peak at a quarter of 1024's latency per batch.
DEFAULT_MAX_BATCH = {"cpu": 16, "cuda": 256}


def max_batch(settings: Settings, device: str) -> int:
    """The micro-batcher's largest batch: the setting, else the default for the device."""
    if settings.max_batch is not None:
        return settings.max_batch
    return DEFAULT_MAX_BATCH.get(device.partition(":")[0], DEFAULT_MAX_BATCH["cpu"])


def host_cpus(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """Cores this process may run on: its CPU affinity, capped by a cgroup v2 CPU quota (a container's limit)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        quota, period = (cgroup_root / "cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def decode_workers(settings: Settings) -> int:
    """Threads decoding and preprocessing images: the setting, else one per core the host gives us."""
    return settings.decode_workers or host_cpus()


def clip_backend(settings: Settings, device: str) -> str:
    """The backend `clip_backend` names; auto: ONNX Runtime int8 on the CPU (4x eager fp32 here,
    scores within 0.02: README, Performance), eager PyTorch on CUDA."""
    if settings.clip_model_dir is not None:
        return "onnx-folder"
    if settings.clip_backend != "auto":
        return settings.clip_backend
    # The ONNX backends run fp32 on the CPU only; CUDA and half precision are torch's.
    cpu_fp32 = device == "cpu" and settings.clip_precision.value in ("auto", "fp32")
    return "onnxruntime-int8" if cpu_fp32 else "torch"


def clip_spec(settings: Settings, device: str | None = None) -> ClipModelSpec:
    """The CLIP model these settings name, on `device` (default: resolved from the settings)."""
    device = device or resolve_device(settings.device, settings.clip_model_dir)
    return ClipModelSpec(
        model=settings.clip_model,
        weights=settings.clip_weights,
        cache_dir=settings.weights_cache,
        device=device,
        allow_downloads=settings.allow_downloads,
        backend=clip_backend(settings, device),
        precision=settings.clip_precision.value,
        export_dir=settings.clip_export_dir,
        model_dir=settings.clip_model_dir,
    )


def load_scorer(spec: ClipModelSpec) -> ClipScorer:
    """Load the encoder behind `spec`. Raises WeightsUnavailable with one actionable line."""
    if not spec.random or spec.model_dir is not None:  # a folder's weights are fixed at export
        return ClipScorer(load_encoder(spec))
    import torch

    # Meaningless weights, but the same ones on every run: offline output and CI are reproducible.
    # Seeded inside fork_rng so loading leaves the caller's random state as it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return ClipScorer(load_encoder(spec))


PDQ_DRAFT_MIN_SIDE = 256


def decode_limits(settings: Settings, image_size: int | None) -> DecodeLimits:
    """The decode limits of every caller (server, offline commands, bench); `image_size` sets the JPEG draft scale.

    The one place DecodeLimits are built from settings: with `jpeg_draft` off, or
    `image_size` None, JPEGs decode at full size. The draft never goes below
    PDQ_DRAFT_MIN_SIDE: bank matching hashes the same frames, and Meta's bridge photos
    decoded at >= 256 px hash within 10 bits of the published hashes, while at 224 px
    they drifted up to 4 bits further (docs/banks.md).
    """
    draft = max(image_size, PDQ_DRAFT_MIN_SIDE) if image_size is not None and settings.jpeg_draft else None
    return DecodeLimits(
        max_bytes=settings.max_image_bytes,
        max_pixels=settings.max_image_pixels,
        draft_size=draft,
        sample_frames=settings.sample_frames,
        max_frames=settings.max_frames,
        max_animation_pixels=settings.max_animation_pixels,
    )


def video_limits(settings: Settings) -> VideoLimits:
    """The video bounds of every caller (server, bench), from settings: the one place VideoLimits are built."""
    from moderation.video.decode import VideoLimits  # PyAV loads only where videos are decoded
    return VideoLimits(
        max_bytes=settings.max_video_bytes,
        max_duration_s=settings.max_video_duration_s,
        max_pixels=settings.max_video_pixels,
        max_fps=settings.max_video_fps,
        max_frames=settings.max_video_frames,
        default_sample_fps=settings.video_sample_fps,
        max_sample_fps=settings.max_video_sample_fps,
        containers=tuple(settings.video_containers),
        codecs=tuple(settings.video_codecs),
        max_decode_s=settings.max_video_decode_s,
    )


def build_core(
    settings: Settings,
    scorer: ClipScorer,
    escalation: EscalationTier | None = None,
    metrics: CoreMetrics | None = None,
    banks: LiveBanks | None = None,
) -> JudgingCore:
    """The judging core every caller uses: these settings' decode limits and every registered signal.

    The bank signal joins when the caller has banks (the server with a state store); offline
    commands judge without them, so golden cases never depend on a store's contents.
    """
    from moderation.core.judge import CoreMetrics, JudgingCore
    from moderation.core.signal import SignalResources
    from moderation.signals.registry import SIGNALS, build_signals

    names = [name for name in SIGNALS if name != "banks" or banks is not None]
    signals = build_signals(SignalResources(encoder=scorer, settings=settings, banks=banks), names)
    return JudgingCore(decode_limits(settings, scorer.image_size), scorer, signals, escalation, metrics or CoreMetrics())


def explainer_spec(settings: Settings, device: str) -> ExplainerSpec:
    from moderation.escalation.loading import ExplainerSpec

    try:
        return ExplainerSpec(
            model=settings.explainer_model,
            weights=settings.explainer_weights,
            device=device,
            allow_downloads=settings.allow_downloads,
            cache_dir=settings.weights_cache,
            precision=settings.explainer_precision.value,
            quantize=settings.explainer_quantize,
        )
    except ValueError as error:  # e.g. int8 quantization asked for on CUDA
        raise ConfigurationError(str(error)) from None


def load_explainer(settings: Settings, device: str) -> Explainer:
    """Load and warm up the SmolVLM2 explainer the settings name; slow."""
    from moderation.escalation.explainer import Explainer

    spec = explainer_spec(settings, device)
    explainer = Explainer.load(spec)
    explainer.warmup()
    info = explainer.info
    log.info("explainer %s loaded on %s (%s)", spec.model_id, info.device, "int8" if info.quantized else info.dtype)
    return explainer


@dataclass(frozen=True)
class ExplainerChoice:
    """Which escalation tier runs (OFF, IN_PROCESS or REMOTE, never AUTO) and why."""

    mode: ExplainerMode
    reason: str


# Settings that only matter to one kind of tier, and the modes they matter in.
_EXPLAINER_SETTINGS_USED_BY = {
    "explainer_model": (ExplainerMode.IN_PROCESS,),
    "explainer_weights": (ExplainerMode.IN_PROCESS,),
    "explainer_quantize": (ExplainerMode.IN_PROCESS,),
    "explainer_max_new_tokens": (ExplainerMode.IN_PROCESS,),
    "explainer_target": (ExplainerMode.REMOTE,),
    "explainer_tls_ca": (ExplainerMode.REMOTE,),
    "explainer_tls_client_cert": (ExplainerMode.REMOTE,),
    "explainer_tls_client_key": (ExplainerMode.REMOTE,),
    "explainer_tls_server_name": (ExplainerMode.REMOTE,),
    "explainer_token_file": (ExplainerMode.REMOTE,),
    "explainer_timeout_s": (ExplainerMode.IN_PROCESS, ExplainerMode.REMOTE),
    "explainer_max_concurrent": (ExplainerMode.IN_PROCESS, ExplainerMode.REMOTE),
    "explainer_max_waiting": (ExplainerMode.IN_PROCESS, ExplainerMode.REMOTE),
    "explainer_budget_per_minute": (ExplainerMode.IN_PROCESS, ExplainerMode.REMOTE),
    "explainer_failure_threshold": (ExplainerMode.IN_PROCESS, ExplainerMode.REMOTE),
    "explainer_cooldown_s": (ExplainerMode.IN_PROCESS, ExplainerMode.REMOTE),
}


def choose_explainer(settings: Settings) -> ExplainerChoice:
    """Resolve explainer_mode (auto included) to the tier that runs, in about a second at most."""
    from moderation.escalation.availability import explainer_available

    mode = settings.explainer_mode
    if mode is ExplainerMode.OFF:
        return ExplainerChoice(ExplainerMode.OFF, "explainer_mode is off")
    if mode is ExplainerMode.REMOTE:
        return ExplainerChoice(ExplainerMode.REMOTE, f"explainer_mode is remote, explain-serve at {settings.explainer_target}")
    if mode is ExplainerMode.IN_PROCESS:
        return ExplainerChoice(ExplainerMode.IN_PROCESS, "explainer_mode is in-process")
    if settings.explainer_target:
        return ExplainerChoice(ExplainerMode.REMOTE, f"explainer_mode auto and explainer_target is set: explain-serve at {settings.explainer_target}")
    available, why = explainer_available(settings.explainer_model, settings.explainer_weights, settings.weights_cache, settings.allow_downloads)
    if available:
        return ExplainerChoice(ExplainerMode.IN_PROCESS, f"explainer_mode auto: {why}")
    return ExplainerChoice(
        ExplainerMode.OFF,
        f"explainer_mode auto: {why}; borderline cases go to REVIEW without a rationale "
        "(--explainer in-process requires the explainer and fails without it; --explainer off silences this)",
    )


def explainer_setting_warnings(settings: Settings, choice: ExplainerChoice) -> list[str]:
    """Explainer settings given (flag, environment or config file) that the chosen tier does not use."""
    warnings = []
    for name in sorted(settings.model_fields_set & set(_EXPLAINER_SETTINGS_USED_BY)):
        if choice.mode in _EXPLAINER_SETTINGS_USED_BY[name]:
            continue
        value = getattr(settings, name)
        if choice.mode is ExplainerMode.OFF:
            where = "escalation is off"
        elif choice.mode is ExplainerMode.REMOTE:
            where = "the explainer runs remotely (set it on explain-serve)"
        else:
            where = "the explainer runs in-process (explainer_target is for remote mode)"
        warnings.append(f"{name}={value} has no effect: {where}")
    return warnings


def remote_explainer_security(settings: Settings) -> dict[str, object]:
    """TLS material and bearer token for calling explain-serve, read from the files the settings name."""
    security: dict[str, object] = {"server_name": settings.explainer_tls_server_name}
    if settings.explainer_tls_ca is not None:
        security["root_certificates"] = read_setting_file(settings.explainer_tls_ca, "MODERATION_EXPLAINER_TLS_CA")
    if settings.explainer_tls_client_cert is not None and settings.explainer_tls_client_key is not None:
        security["certificate_chain"] = read_setting_file(settings.explainer_tls_client_cert, "MODERATION_EXPLAINER_TLS_CLIENT_CERT")
        security["private_key"] = read_setting_file(settings.explainer_tls_client_key, "MODERATION_EXPLAINER_TLS_CLIENT_KEY")
    if settings.explainer_token_file is not None:
        security["token"] = read_bearer_token(settings.explainer_token_file, "MODERATION_EXPLAINER_TOKEN_FILE")
    return security


def build_escalation_tier(settings: Settings, metrics: ModerationMetrics, device: str) -> EscalationTier | None:
    from moderation.escalation.backends import InProcessExplainer, RemoteExplainer
    from moderation.escalation.tier import EscalationTier

    choice = choose_explainer(settings)
    for warning in explainer_setting_warnings(settings, choice):
        log.warning("%s", warning)
    if choice.mode is ExplainerMode.OFF:
        log.info("escalation tier off: %s", choice.reason, extra={"fields": {"escalation": "off"}})
        return None
    if choice.mode is ExplainerMode.REMOTE:
        backend = RemoteExplainer(settings.explainer_target, **remote_explainer_security(settings))
        log.info("escalation tier remote: %s", choice.reason, extra={"fields": {"escalation": "remote"}})
        if not backend.secure:
            log.warning(
                "calling the explainer at %s in plaintext%s; set MODERATION_EXPLAINER_TLS_CA (and a client certificate for mutual TLS)",
                settings.explainer_target,
                " with a bearer token" if settings.explainer_token_file else "",
            )
    else:
        explainer = load_explainer(settings, device)
        backend = InProcessExplainer(explainer, settings.explainer_max_new_tokens)
        log.info(
            "escalation tier in-process, SmolVLM2 %s: %s", explainer.info.model_id, choice.reason, extra={"fields": {"escalation": "in-process"}}
        )
    return EscalationTier(
        backend,
        escalation_metrics(metrics),
        max_concurrent=settings.explainer_max_concurrent,
        max_waiting=settings.explainer_max_waiting,
        timeout_s=settings.explainer_timeout_s,
        budget_per_minute=settings.explainer_budget_per_minute,
        failure_threshold=settings.explainer_failure_threshold,
        cooldown_s=settings.explainer_cooldown_s,
    )


def escalation_metrics(metrics: ModerationMetrics) -> EscalationMetrics:
    """The escalation tier's narrow view of the server's metrics."""
    from moderation.escalation.tier import EscalationMetrics, EscalationOutcome

    def outcome(policy_id: str, outcome: EscalationOutcome) -> None:
        metrics.escalations.labels(policy_id, outcome.status.value).inc()
        metrics.escalation_seconds.labels(outcome.status.value).observe(outcome.latency_ms / 1e3)
        if outcome.verdict is not None:
            metrics.escalation_tokens.observe(outcome.generated_tokens)

    return EscalationMetrics(outcome, metrics.escalation_queue_depth.set)


def build_store(
    settings: Settings, on_dropped: DropCallback | None = None, on_evicted: Callable[[int], None] | None = None
) -> StateStore | None:
    """The state store: database_url if set (PostgreSQL or SQLite), else the embedding_store file, else none.

    Opened (and migrated) now, so a wrong URL, a refused password or a schema newer than
    this release fails the start, not the first write.
    """
    from moderation.state.records import StoreError
    from moderation.state.store import open_store, redact_url

    if settings.database_url is not None:
        location: str | Path = settings.database_url
        ignored = [name for name in ("embedding_store", "thumbnail_store") if getattr(settings, name) is not None]
        if ignored:
            log.warning("database_url is set: %s ignored, the database keeps that state", " and ".join(ignored))
    elif settings.embedding_store is not None:
        location = settings.embedding_store
    else:
        return None
    thumbnails_in_store = settings.database_url is not None and settings.thumbnails_on
    try:
        store = open_store(
            location,
            retention=timedelta(days=settings.embedding_retention_days),
            thumbnail_retention=timedelta(days=settings.thumbnail_retention_days) if thumbnails_in_store else None,
            max_delay_s=settings.embedding_flush_interval_s,
            flush_interval_s=settings.embedding_flush_interval_s,
            max_buffered=settings.store_max_buffered,
            batch_size=min(256, settings.store_max_buffered),
            on_dropped=on_dropped,
            thumbnail_max_bytes=settings.thumbnail_max_bytes if thumbnails_in_store else None,
            on_evicted=on_evicted,
            max_open_cases=settings.review_max_open_cases,
        )
    except StoreError as error:
        variable = "MODERATION_DATABASE_URL" if settings.database_url is not None else "MODERATION_EMBEDDING_STORE"
        raise ConfigurationError(f"{error}; fix or unset {variable}") from error
    where = redact_url(str(location))
    log.info(
        "state store %s at schema %d: decisions%s, flushed at least every %g s",
        where, store.schema_version, " and thumbnails" if thumbnails_in_store else "", settings.embedding_flush_interval_s,
    )  # fmt: skip
    return store


def build_thumbnails(
    settings: Settings, store: StateStore | None = None, on_evicted: Callable[[int], None] | None = None
) -> Thumbnails | None:
    """Thumbnails (opt-in): rows of the database_url store when one is set, else files in thumbnail_store."""
    from moderation.state.thumbnails import DatabaseThumbnails, ThumbnailError, ThumbnailStore

    if not settings.thumbnails_on:
        return None
    if settings.database_url is not None:
        if store is None:
            raise ConfigurationError("thumbnails go to the database_url store: build the store first and pass it")
        log.info(
            "thumbnails on: flagged cases keep a %d px JPEG in the state store for %g days",
            settings.thumbnail_max_px, settings.thumbnail_retention_days,
        )  # fmt: skip
        return DatabaseThumbnails(store, settings.thumbnail_max_px)
    try:
        thumbnails = ThumbnailStore(
            settings.thumbnail_store,
            timedelta(days=settings.thumbnail_retention_days),
            settings.thumbnail_max_px,
            max_bytes=settings.thumbnail_max_bytes,
            on_evicted=on_evicted,
        )
    except ThumbnailError as error:
        raise ConfigurationError(f"{error}; fix or unset MODERATION_THUMBNAIL_STORE") from error
    log.info(
        "thumbnail store on: flagged cases keep a %d px JPEG in %s (mode 0700) for %g days",
        settings.thumbnail_max_px, settings.thumbnail_store, settings.thumbnail_retention_days,
    )  # fmt: skip
    return thumbnails
