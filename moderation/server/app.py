"""`moderation serve`: the ModerationService server, built from settings through runtime.py."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from moderation.config import Settings
from moderation.pipeline import ModerationPipeline
from moderation.reload import PolicyReloader
from moderation.runtime import StartupCancellation, build_pipeline
from moderation.server.auth import load_tokens, TokenAuth
from moderation.server.interceptors import AdmissionInterceptor, RpcMetricsInterceptor, ServingState, TokenAuthInterceptor
from moderation.server.lifecycle import GrpcServerLifecycle, new_metrics
from moderation.server.recorder import RequestRecorder
from moderation.server.servicer import ModerationServicer
from moderation.v1 import moderation_pb2, moderation_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = moderation_pb2.DESCRIPTOR.services_by_name["ModerationService"].full_name


@dataclass
class _Loaded:
    pipeline: ModerationPipeline
    reloader: PolicyReloader
    watcher: asyncio.Task[None] | None = None


async def serve(settings: Settings) -> None:
    """Run until SIGTERM or SIGINT. Raises ConfigurationError (and loading errors) when it cannot serve."""
    metrics = new_metrics()
    state = ServingState()
    metrics.in_flight.set_function(lambda: state.in_flight)
    interceptors = [RpcMetricsInterceptor(metrics)]
    if settings.auth_tokens_file:
        interceptors.append(
            TokenAuthInterceptor(TokenAuth(load_tokens(settings.auth_tokens_file)), metrics, settings.auth_failure_logs_per_minute)
        )
    interceptors.append(
        AdmissionInterceptor(
            state, settings.max_concurrent_requests, (SERVICE_NAME,), "the server is still loading models and policies; retry shortly"
        )
    )
    lifecycle = GrpcServerLifecycle(
        settings,
        metrics,
        (SERVICE_NAME,),
        interceptors,
        options=[
            ("grpc.max_receive_message_length", settings.grpc_max_message_bytes),
            ("grpc.max_send_message_length", settings.grpc_max_message_bytes),
        ],
    )
    servicer = ModerationServicer(
        RequestRecorder(metrics, tuple(settings.audit_metadata_keys), settings.audit_metadata_max_chars),
        settings.max_image_bytes,
        settings.default_deadline_s,
        state,
        stream_window=settings.stream_window,
    )
    moderation_pb2_grpc.add_ModerationServiceServicer_to_server(servicer, lifecycle.server)

    cancellation = StartupCancellation()

    def load() -> _Loaded:
        return _Loaded(*build_pipeline(settings, metrics, cancellation))

    async def on_loaded(loaded: _Loaded, stop: asyncio.Event) -> None:
        loaded.pipeline.start()
        servicer.pipeline = loaded.pipeline
        state.loaded = True
        if settings.watch_policies:
            loaded.watcher = asyncio.create_task(loaded.reloader.watch(stop, force_polling=settings.policy_watch_polling))

    async def close(loaded: _Loaded) -> None:
        await loaded.pipeline.close()
        if loaded.watcher is not None:
            await loaded.watcher
        loaded.reloader.close()

    await lifecycle.run("moderation", load, on_loaded, state.drain, close, cancel_load=cancellation.cancel)
