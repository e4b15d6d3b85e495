"""One builder for both gRPC servers (`serve` and `explain-serve`).

What the two servers share is assembled here, once: the metrics registry, the
one admission count, the interceptor chain (RPC metrics, bearer tokens,
admission), the lifecycle (transport, health, /metrics, signals, drain), the
policy reloader and its directory watch, and the start-up cancellation that
SIGTERM during the load triggers. Each server brings only its service: its
servicer, what its load builds, and what to do once that is loaded.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, Protocol, TypeVar

import grpc

from moderation.ops.config import Settings
from moderation.ops.metrics import ModerationMetrics
from moderation.policy.registry import PolicyRegistry, ServedPolicy
from moderation.runtime import StartupCancellation
from moderation.serving.admission import Admission
from moderation.serving.auth import TokenAuth
from moderation.serving.interceptors import AdmissionInterceptor, MalformedRequestInterceptor, RpcMetricsInterceptor, TokenAuthInterceptor
from moderation.serving.lifecycle import GrpcServerLifecycle, new_metrics
from moderation.serving.policy_reload import PolicyReloader


# Warnings about requests that do not parse, per minute at most (one caller can send thousands a second).
MALFORMED_REQUEST_LOGS_PER_MINUTE = 10


class Loaded(Protocol):
    """What a server's load returns: whatever it built, and the reloader of its policies."""

    reloader: PolicyReloader


L = TypeVar("L", bound=Loaded)


def policy_reloader(
    settings: Settings,
    registry: PolicyRegistry[Any],
    metrics: ModerationMetrics,
    cancellation: StartupCancellation,
    model_id: str | None,
) -> PolicyReloader:
    """The reloader of `settings.policies` into `registry`, counted and published in `metrics`.

    Attached to `cancellation`, so SIGTERM during the start stops a compile in progress.
    """

    def publish(served: Sequence[ServedPolicy[Any]]) -> None:
        metrics.publish_policies(
            [(s.policy.id, s.policy.version, [(c.id, c.thresholds.review, c.thresholds.block) for c in s.policy.categories]) for s in served],
            model_id or "",
        )

    reloader = PolicyReloader(
        registry, settings.policies, count_outcome=lambda outcome: metrics.policy_reloads.labels(outcome).inc(), publish_served=publish
    )
    cancellation.attach(reloader)
    return reloader


class ServerBuilder(Generic[L]):
    """A server with everything but its service: add the servicer to `server`, then `run`.

    `limit` is the one admission count's limit (request slots); `max_concurrent_rpcs`
    defaults to the limit plus room for health checks and refusals. `unmetered_services`
    are served beside the main one (BankService): listed by reflection and health,
    refused while loading or draining, but they take no request slot.
    """

    def __init__(
        self,
        settings: Settings,
        service_name: str,
        limit: int,
        loading_message: str,
        options: Sequence[tuple[str, object]] = (),
        unmetered_services: Sequence[str] = (),
        local_socket: bool = False,
        worker: bool = False,
    ):
        self.settings = settings
        self.metrics = new_metrics()
        self.admission = Admission(limit, self.metrics.in_flight, self.metrics.in_flight_limit, self.metrics.admission_waiting)
        self.cancellation = StartupCancellation()
        interceptors: list[grpc.aio.ServerInterceptor] = [RpcMetricsInterceptor(self.metrics)]
        auth = TokenAuth.from_file(settings.auth_tokens_file, "MODERATION_AUTH_TOKENS_FILE") if settings.auth_tokens_file else None
        curation = (
            TokenAuth.from_file(settings.curation_tokens_file, "MODERATION_CURATION_TOKENS_FILE") if settings.curation_tokens_file else None
        )
        review = (
            TokenAuth.from_file(settings.reviewer_tokens_file, "MODERATION_REVIEWER_TOKENS_FILE") if settings.reviewer_tokens_file else None
        )
        # Always there: without any token file it still refuses curation (BankService) and review (ReviewService) with a sentence.
        interceptors.append(
            TokenAuthInterceptor(auth, self.metrics, settings.auth_failure_logs_per_minute, curation=curation, review=review)
        )
        # After auth, so a caller without a valid token learns nothing about parsing.
        interceptors.append(MalformedRequestInterceptor(MALFORMED_REQUEST_LOGS_PER_MINUTE))
        interceptors.append(
            AdmissionInterceptor(
                self.admission, (service_name,), loading_message, settings.admission_wait_s, unmetered=tuple(unmetered_services)
            )
        )
        self.lifecycle: GrpcServerLifecycle[L] = GrpcServerLifecycle(
            settings,
            self.metrics,
            (service_name, *unmetered_services),
            interceptors,
            options=options,
            # Room beyond the admitted calls for health checks, ListPolicies and refusals.
            max_concurrent_rpcs=settings.max_concurrent_rpcs or limit + 16,
            local_socket=local_socket,
            worker=worker,
        )

    @property
    def server(self) -> grpc.aio.Server:
        return self.lifecycle.server

    def policy_reloader(self, registry: PolicyRegistry[Any], model_id: str | None) -> PolicyReloader:
        """The reloader of this server's policies (call it from the load)."""
        return policy_reloader(self.settings, registry, self.metrics, self.cancellation, model_id)

    async def run(
        self,
        name: str,
        load: Callable[[StartupCancellation], L],
        attach: Callable[[L], Awaitable[None]],
        close: Callable[[L], Awaitable[None]],
    ) -> None:
        """Serve until SIGTERM or SIGINT.

        `load` runs in a worker thread and should call `cancellation.check()` between
        its slow steps; `attach` hands what it built to the servicer on the event loop;
        then calls are admitted, the policy directory is watched (setting
        watch_policies) and health says SERVING. On the way out, after the drain,
        `close` frees what `load` built, then the watch and the reloader stop.
        """
        settings = self.settings
        watcher: asyncio.Task[None] | None = None

        async def on_loaded(loaded: L, stop: asyncio.Event) -> None:
            nonlocal watcher
            await attach(loaded)
            self.admission.loaded = True
            if settings.watch_policies:
                watcher = asyncio.create_task(loaded.reloader.watch(stop, force_polling=settings.policy_watch_polling))

        async def closed(loaded: L) -> None:
            await close(loaded)
            if watcher is not None:
                await watcher
            loaded.reloader.close()

        await self.lifecycle.run(name, lambda: load(self.cancellation), on_loaded, self.admission.drain, closed, cancel_load=self.cancellation.cancel)

