"""Server settings: command-line flags > MODERATION_* environment > config file > defaults.

The environment is read here and nowhere else. The settings object is frozen so
nothing downstream can change it behind the server's back.
"""

from __future__ import annotations

import enum
import os
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, YamlConfigSettingsSource

RANDOM_WEIGHTS = "random"
CONFIG_FILE_ENV = "MODERATION_CONFIG"
# Room in a gRPC message beyond the image for the request's other fields (ids, metadata).
MESSAGE_MARGIN_BYTES = 64 * 1024
# A --config file given to load_settings: context-local, so no process-wide state changes.
_config_file: ContextVar[Path | None] = ContextVar("moderation_config_file", default=None)


class Device(str, enum.Enum):
    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"


class Precision(str, enum.Enum):
    AUTO = "auto"
    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"


ClipPrecision = Precision  # the name clip_precision was declared with


class ExplainerMode(str, enum.Enum):
    AUTO = "auto"  # remote when explainer_target is set, else in-process when the weights are available, else off
    OFF = "off"
    IN_PROCESS = "in-process"
    REMOTE = "remote"


class LogFormat(str, enum.Enum):
    JSON = "json"
    TEXT = "text"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MODERATION_", frozen=True, extra="forbid")

    host: str = Field("0.0.0.0", description="address the gRPC server binds")
    port: int = Field(50051, ge=0, le=65535, description="gRPC port (0 picks a free one)")
    metrics_host: str | None = Field(None, description="address /metrics binds; default: the gRPC host")
    metrics_port: int = Field(9464, ge=0, le=65535, description="Prometheus /metrics port; 0 disables it")
    policies: Path = Field(Path("policies"), description="directory of policy YAML files")

    watch_policies: bool = Field(True, description="reload the policy directory when it changes")
    policy_watch_polling: bool = Field(False, description="poll instead of inotify (network filesystems)")

    clip_model: str = Field(
        "ViT-B-32",
        description="open_clip model name, 'hf-hub:org/repo', or a path to an open_clip model config JSON",
    )
    clip_weights: str = Field(
        "laion2b_s34b_b79k",
        description="open_clip pretrained tag, a local checkpoint path, or 'random' (smoke tests only)",
    )
    weights_cache: Path | None = Field(None, description="where downloaded weights are cached")
    allow_downloads: bool = Field(
        True, description="fetch missing weights from the hub; false fails at once when they are not cached"
    )
    device: Device = Device.AUTO
    clip_backend: str = Field(
        "auto",
        description="CLIP runtime: auto (onnxruntime-int8 on CPU, torch on CUDA), torch (eager PyTorch, CPU or CUDA), "
        "onnxruntime (CPU fp32), onnxruntime-int8 (CPU, dynamic int8), onnx-folder (clip_model_dir set); "
        "the names in moderation/signals/clip/backends",
    )
    clip_export_dir: Path = Field(
        default_factory=lambda: Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "moderation" / "clip-export",
        description="where CPU backends keep the image tower they export (once per model and weights), and --model-dir its text "
        "embeddings across starts; must be writable",
    )
    clip_model_dir: Path | None = Field(
        None,
        description="an exported model folder (`moderation export`): serve CLIP from it with onnxruntime, numpy and PIL, "
        "without torch (CPU; clip_model, clip_weights and clip_backend are then ignored)",
    )
    clip_precision: ClipPrecision = Field(
        ClipPrecision.AUTO, description="CLIP weights and inputs: auto (fp16 on CUDA, fp32 on CPU), fp32, fp16 or bf16"
    )
    torch_threads: int | None = Field(None, ge=1, description="intra-op threads for torch; default: torch's own")

    explainer_mode: ExplainerMode = Field(
        ExplainerMode.AUTO,
        description="SmolVLM2 escalation: auto (remote when explainer_target is set, else in-process when the explainer's "
        "weights are available, else off, saying why), off, in-process (fails to start without weights), or remote",
    )
    explainer_model: str = Field(
        "HuggingFaceTB/SmolVLM2-256M-Video-Instruct", description="Hugging Face id or local directory of a SmolVLM2 model"
    )
    explainer_weights: str = Field("pretrained", description="'pretrained' or 'random' (smoke tests and benchmarks only)")
    explainer_target: str | None = Field(None, description="host:port of `moderation explain-serve` when explainer_mode is remote")
    explainer_precision: Precision = Field(
        Precision.AUTO, description="explainer weights and inputs: auto (bf16 on CUDA, fp32 on CPU), fp32, bf16 or fp16"
    )
    explainer_quantize: bool = Field(
        False, description="int8 dynamic quantization of the explainer's Linear layers (CPU, fp32 only)"
    )
    explainer_timeout_s: float = Field(20.0, gt=0, description="longest an escalation may take before TIMED_OUT")
    explainer_max_concurrent: int = Field(1, ge=1, description="explanations running at once")
    explainer_max_waiting: int = Field(4, ge=0, description="escalations waiting for a slot before SHED")
    explainer_budget_per_minute: float = Field(60.0, gt=0, description="escalations started per minute at most; beyond: SHED")
    explainer_failure_threshold: int = Field(3, ge=1, description="consecutive failures that open the circuit breaker")
    explainer_cooldown_s: float = Field(30.0, ge=0, description="how long an open circuit breaker waits before a trial call")
    explainer_max_new_tokens: int = Field(96, ge=16, le=512, description="token budget of one verdict")
    explainer_tls_ca: Path | None = Field(
        None, description="CA bundle (PEM) that signed explain-serve's certificate; set: the scorer calls the explainer over TLS"
    )
    explainer_tls_client_cert: Path | None = Field(None, description="client certificate (PEM) the scorer presents to explain-serve (mutual TLS)")
    explainer_tls_client_key: Path | None = Field(None, description="private key (PEM) of explainer_tls_client_cert")
    explainer_tls_server_name: str | None = Field(
        None, description="name expected in explain-serve's certificate when it differs from the host in explainer_target"
    )
    explainer_token_file: Path | None = Field(
        None, description="file holding the bearer token the scorer sends to explain-serve (one of its auth_tokens_file tokens)"
    )

    max_image_bytes: int = Field(20 * 1024 * 1024, ge=1024, description="largest encoded image accepted")
    max_image_pixels: int = Field(40_000_000, ge=1024, description="largest width x height accepted")
    sample_frames: int = Field(8, ge=1, le=64, description="frames of an animation scored, spread from first to last")
    max_frames: int = Field(1000, ge=1, description="animations with more frames are rejected")
    max_animation_pixels: int = Field(
        400_000_000, ge=1024, description="pixels decoded in total to reach the sampled frames of an animation"
    )
    # Video (ModerateVideo, moderation/video/): each bound is refused with INVALID_ARGUMENT naming it.
    max_video_bytes: int = Field(50 * 1024 * 1024, ge=1024, description="largest video file accepted (the sum of its streamed chunks)")
    max_video_duration_s: float = Field(180.0, gt=0, le=3600, description="longest video accepted, by its header and by its packets")
    max_video_pixels: int = Field(3840 * 2160, ge=1024, description="largest width x height of a video frame accepted")
    max_video_fps: float = Field(120.0, gt=0, le=1000, description="highest frame rate accepted, declared or counted")
    video_sample_fps: float = Field(1.0, gt=0, le=60, description="frames sampled per second of video when the request sets none")
    max_video_sample_fps: float = Field(10.0, gt=0, le=60, description="highest sample rate a request may ask for")
    max_video_frames: int = Field(120, ge=1, le=3600, description="frames sampled from one video at most; the rate is lowered to fit")
    video_containers: list[str] = Field(
        ["mp4", "mov", "webm", "matroska"], description="containers accepted (mp4 and mov are one demuxer, webm and matroska another)"
    )
    video_codecs: list[str] = Field(["h264", "hevc", "vp8", "vp9", "av1", "mpeg4"], description="video codecs accepted (FFmpeg names)")
    max_video_decode_s: float = Field(60.0, gt=0, description="wall time one video's demux and decode may take")
    max_message_bytes: int | None = Field(
        None,
        ge=1024,
        description="largest gRPC message accepted; default max_image_bytes + 64 KiB (room for the request's other fields); "
        "larger messages are refused by gRPC with RESOURCE_EXHAUSTED before they are buffered in full",
    )
    jpeg_draft: bool = Field(True, description="decode large JPEGs at reduced scale (PIL draft mode)")
    workers: int = Field(
        1,
        ge=1,
        le=64,
        description="server processes in this pod, all on one gRPC port (SO_REUSEPORT) with one /metrics and one health; "
        "each gets cores // workers decode threads unless decode_workers is set (moderation/serving/workers.py)",
    )
    decode_workers: int | None = Field(
        None, ge=1, le=256, description="threads that decode and preprocess images off the event loop; default: the host's cores"
    )
    max_batch: int | None = Field(
        None, ge=1, le=1024, description="most images in one CLIP forward pass; default: 16 on CPU, 256 on CUDA"
    )
    max_batch_wait_ms: float = Field(
        0.0, ge=0, le=1000, description="how long a batch waits for more requests; 0 takes what is queued when the model is free"
    )
    max_queue: int = Field(64, ge=1, description="requests waiting for the model before RESOURCE_EXHAUSTED")
    max_concurrent_requests: int = Field(64, ge=1, description="requests in flight before RESOURCE_EXHAUSTED")
    # Not 0: a unary call refused whenever every slot is held never gets one while a
    # busy stream client hands slots from item to item (issue 18, item 6).
    admission_wait_s: float = Field(
        1.0,
        ge=0,
        le=30,
        description="how long a unary call waits for a request slot when all are held (at most half its deadline; "
        "waiting calls at most max_concurrent_requests); slots go to the waiting caller holding the fewest; 0 refuses at once",
    )
    default_deadline_s: float = Field(10.0, gt=0, description="deadline applied when a caller sets none")
    grace_period_s: float = Field(20.0, ge=0, description="how long SIGTERM waits for in-flight calls")
    max_concurrent_rpcs: int | None = Field(
        None,
        ge=1,
        description="RPCs of any service handled at once, enforced by gRPC before a request message is read; beyond: "
        "RESOURCE_EXHAUSTED; default max_concurrent_requests + 16 (room for health checks and refusals)",
    )
    max_concurrent_streams: int = Field(32, ge=1, description="HTTP/2 streams (calls) open at once on one connection; more wait in the client")
    max_connections: int = Field(512, ge=1, description="client connections held at once; more are closed at once (UNAVAILABLE)")
    # 30 s, not longer: a client that completes the HTTP/2 handshake and opens no call holds
    # a max_connections slot this long (issue 18, item 5); an idle client just reconnects.
    max_connection_idle_s: float = Field(
        30.0, gt=0, description="a connection without calls (or that never opened one) for this long is closed (GOAWAY)"
    )
    handshake_timeout_s: float = Field(
        5.0,
        gt=0,
        description="a new connection must finish its TLS handshake and send the HTTP/2 preface and SETTINGS within this "
        "long, or it is closed: idle sockets cannot hold the max_connections slots",
    )
    stream_window: int = Field(
        16, ge=1, le=1024, description="requests of one ModerateStream in flight or answered but not yet sent; beyond, reading stops"
    )
    health_port: int | None = Field(
        None, ge=1, le=65535, description="extra plaintext port serving only grpc.health.v1 (for kubelet probes when TLS is on)"
    )
    reflection: bool = Field(True, description="gRPC server reflection (grpcurl list/describe)")
    tls_cert: Path | None = Field(None, description="server certificate (PEM); with tls_key turns TLS on")
    tls_key: Path | None = Field(None, description="server private key (PEM)")
    tls_client_ca: Path | None = Field(None, description="CA bundle (PEM) for client certificates; set: mutual TLS required")
    auth_tokens_file: Path | None = Field(None, description="file of 'name:token' lines; set: bearer token required")
    curation_tokens_file: Path | None = Field(
        None,
        description="file of 'name:token' lines (as auth_tokens_file) allowed to curate banks (BankService); these tokens "
        "cannot moderate and auth_tokens_file's cannot curate; unset: bank curation is off",
    )
    reviewer_tokens_file: Path | None = Field(
        None,
        description="file of 'name:token' lines (as auth_tokens_file), one per reviewer, allowed to work the review queue "
        "(ReviewService); these tokens can neither moderate nor curate, and no other token can review; set (with a state "
        "store): every REVIEW decision opens a case; unset: the review queue is off",
    )
    review_max_open_cases: int = Field(
        10_000, ge=1, le=10_000_000,
        description="open cases the review queue holds; beyond, new REVIEW decisions are still answered but open no case: "
        "counted (moderation_review_cases_dropped_total{reason=\"queue_full\"}) and logged",
    )  # fmt: skip
    review_max_case_age_days: float = Field(
        3.0, gt=0, description="an open case older than this expires (audited; no longer leased; `review reopen` brings it back)"
    )
    review_lease_s: float = Field(600.0, ge=10, le=86400, description="how long a reviewer's lease on a case lasts before anyone may take it")
    review_max_leases_per_reviewer: int = Field(5, ge=1, le=1000, description="live leases one reviewer may hold at once")
    console_port: int = Field(
        0, ge=0, le=65535,
        description="port of the review console, a web page for reviewers (docs/reviewing.md) that calls ReviewService through "
        "a private Unix socket with the reviewer's own token (TLS on the gRPC port or not); plain HTTP: keep it behind a TLS proxy; 0 (the default) turns it off",
    )  # fmt: skip
    console_host: str | None = Field(None, description="address the review console binds; default: the gRPC host")
    explainer_insecure: bool = Field(
        False,
        description="explain-serve only: serve plaintext without tokens on `host` as given; unset, such a server binds loopback only",
    )
    audit_metadata_keys: list[str] = Field(
        default_factory=list, description="request metadata keys whose values may appear in the audit log"
    )
    audit_metadata_max_bytes: int = Field(
        256, ge=8, le=65536, description="longest metadata value (UTF-8 bytes) written to the audit log; longer ones are cut and marked"
    )
    auth_failure_logs_per_minute: int = Field(
        10, ge=0, description="log lines about refused credentials per minute at most (the counter counts every one)"
    )
    database_url: str | None = Field(
        None,
        description="the state store every replica shares: postgresql://user:password@host:port/db (or sqlite:///path, one "
        "machine); decisions' embeddings and, with keep_thumbnails, thumbnails go there; set, it takes precedence over "
        "embedding_store and thumbnail_store; unset: those two (a SQLite file, a directory) or nothing",
    )
    keep_thumbnails: bool = Field(
        False,
        description="keep thumbnails of flagged cases as rows of the database_url store (thumbnail_store set also turns them on)",
    )
    store_max_buffered: int = Field(
        10_000, ge=1, le=1_000_000,
        description="decisions buffered while the store cannot be written; beyond, the oldest are dropped and counted "
        "(moderation_store_dropped_total)",
    )  # fmt: skip
    embedding_store: Path | None = Field(
        None,
        description="SQLite file keeping each decision's image embedding (never the image) for `moderation policy diff`; "
        "ignored when database_url is set; unset keeps none",
    )
    embedding_retention_days: float = Field(30.0, gt=0, description="how long stored embeddings are kept")
    embedding_flush_interval_s: float = Field(
        5.0, gt=0, le=3600,
        description="buffered decisions reach the store at most this many seconds late: the most a killed server loses",
    )
    thumbnail_store: Path | None = Field(
        None,
        description="directory keeping a small JPEG of each flagged decision's image (not ALLOWed by the active or a shadow "
        "policy) for reviewers, by request id (`moderation case show`); mode 0700/0600; with database_url set, thumbnails go "
        "to the database instead; unset keeps none",
    )
    thumbnail_retention_days: float = Field(7.0, gt=0, description="how long thumbnails are kept")
    thumbnail_max_px: int = Field(256, ge=32, le=512, description="longer side of a thumbnail, pixels")
    # ~38 KB per flagged request at 256 px: without a cap a flood of flagged uploads fills the disk.
    thumbnail_max_bytes: int = Field(
        1 << 30,
        ge=1 << 20,
        description="most bytes of thumbnails kept (files or rows); beyond, the oldest are evicted "
        "(moderation_thumbnails_evicted_total); 1 GiB by default",
    )
    bank_refresh_s: float = Field(
        2.0, gt=0, le=300,
        description="how often each replica polls the state store for bank changes: a change made through any replica "
        "is matched everywhere within about this long",
    )  # fmt: skip
    bank_import_max_bytes: int = Field(
        256 << 20, ge=1024,
        description="most bytes one BankService.ImportEntries call may send (a million PDQ lines are about 100 MB); "
        "beyond, the import is refused and nothing is applied",
    )  # fmt: skip
    log_level: str = "INFO"
    log_format: LogFormat = LogFormat.JSON

    @field_validator("clip_weights")
    @classmethod
    def _weights_not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("clip_weights must be a pretrained tag, a checkpoint path or 'random'")
        return value.strip()

    @model_validator(mode="after")
    def _explainer_target_for_remote(self) -> Settings:
        if self.explainer_mode is ExplainerMode.REMOTE and not self.explainer_target:
            raise ValueError("explainer_mode is remote: set explainer_target (MODERATION_EXPLAINER_TARGET) to host:port")
        return self

    @model_validator(mode="after")
    def _thumbnails_need_a_home(self) -> Settings:
        if self.keep_thumbnails and self.database_url is None and self.thumbnail_store is None:
            raise ValueError("keep_thumbnails needs database_url (rows of the shared store) or thumbnail_store (a directory)")
        return self

    @model_validator(mode="after")
    def _review_needs_a_store(self) -> Settings:
        if self.reviewer_tokens_file is not None and self.database_url is None and self.embedding_store is None:
            raise ValueError("reviewer_tokens_file turns the review queue on, which needs a state store: set database_url (or embedding_store)")
        return self

    @model_validator(mode="after")
    def _console_needs_reviewers(self) -> Settings:
        if self.console_port and self.reviewer_tokens_file is None:
            raise ValueError("console_port serves the review console, which needs the review queue: set reviewer_tokens_file too")
        return self

    @property
    def thumbnails_on(self) -> bool:
        return self.keep_thumbnails or self.thumbnail_store is not None

    @model_validator(mode="after")
    def _tls_pairs(self) -> Settings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key must be set together")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("tls_client_ca (mutual TLS) needs tls_cert and tls_key")
        return self

    @property
    def random_weights(self) -> bool:
        return self.clip_weights == RANDOM_WEIGHTS

    @model_validator(mode="after")
    def _explainer_tls(self) -> Settings:
        if (self.explainer_tls_client_cert is None) != (self.explainer_tls_client_key is None):
            raise ValueError("explainer_tls_client_cert and explainer_tls_client_key must be set together")
        if self.explainer_tls_client_cert is not None and self.explainer_tls_ca is None:
            raise ValueError("explainer_tls_client_cert (mutual TLS to the explainer) needs explainer_tls_ca")
        return self

    @property
    def grpc_max_message_bytes(self) -> int:
        return self.max_message_bytes or self.max_image_bytes + MESSAGE_MARGIN_BYTES

    @property
    def metrics_bind_host(self) -> str:
        return self.metrics_host or self.host

    @property
    def console_bind_host(self) -> str:
        return self.console_host or self.host

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = _config_file.get() or os.environ.get(CONFIG_FILE_ENV)
        if config_file:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=config_file))
        return tuple(sources)


def load_settings(config_file: Path | None = None, **flags: Any) -> Settings:
    """Settings from flags that were given (None means 'not given'), env and file."""
    if config_file is not None and not config_file.is_file():
        raise FileNotFoundError(f"config file {config_file} does not exist")
    token = _config_file.set(config_file)
    try:
        return Settings(**{k: v for k, v in flags.items() if v is not None})
    finally:
        _config_file.reset(token)


def unknown_environment_settings(environ: dict[str, str] | None = None) -> list[str]:
    """MODERATION_* variables that name no setting: typos in a manifest, reported at start."""
    environ = dict(os.environ) if environ is None else environ
    known = {f"MODERATION_{name.upper()}" for name in Settings.model_fields} | {CONFIG_FILE_ENV}
    return sorted(key for key in environ if key.startswith("MODERATION_") and key not in known)
