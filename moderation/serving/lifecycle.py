"""The lifecycle both gRPC servers share (`serve` and `explain-serve`).

bind (TLS or plaintext) -> health NOT_SERVING -> start -> /metrics -> load models in a
worker thread -> SERVING -> wait for SIGTERM/SIGINT -> NOT_SERVING -> drain in-flight
calls -> stop the transport -> close. A failed load stops the server and re-raises,
so the command exits with its one-line error.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Generic, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import GCCollector, PlatformCollector, ProcessCollector, start_http_server

from moderation.ops.config import Settings
from moderation.ops.metrics import ModerationMetrics
from moderation.runtime import ConfigurationError, read_setting_file
from moderation.serving.interceptors import MalformedRequestInterceptor
from moderation.serving.reflection import enable_reflection

log = logging.getLogger(__name__)

Loaded = TypeVar("Loaded")
# After in-flight calls finish, new calls keep getting UNAVAILABLE this long before the transport stops.
DRAIN_LINGER_S = 1.0


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS from the settings (mutual TLS with a client CA), or None for plaintext."""
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    client_ca = read_setting_file(settings.tls_client_ca, "MODERATION_TLS_CLIENT_CA") if settings.tls_client_ca else None
    return grpc.ssl_server_credentials(
        [(read_setting_file(settings.tls_key, "MODERATION_TLS_KEY"), read_setting_file(settings.tls_cert, "MODERATION_TLS_CERT"))],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


def transport_options(settings: Settings, reuse_port: bool = False) -> list[tuple[str, object]]:
    """gRPC-level bounds every server port gets: streams per connection, connections, handshakes, idle connections.

    `reuse_port`: a worker of `serve --workers N` shares the port with its siblings (SO_REUSEPORT).

    Connections beyond `max_connections` are closed by grpc-core as they arrive
    (the client sees UNAVAILABLE); a connection's calls beyond
    `max_concurrent_streams` wait in the client (HTTP/2 flow control, no error).
    """
    return [
        ("grpc.max_concurrent_streams", settings.max_concurrent_streams),
        ("grpc.max_allowed_incoming_connections", settings.max_connections),
        ("grpc.max_connection_idle_ms", int(settings.max_connection_idle_s * 1000)),
        # grpc-core's default is 120 s: sockets that send nothing, or only the HTTP/2 preface,
        # held max_connections slots that long and every new connection, health checks
        # included, got UNAVAILABLE (issue 18, item 5). The timer covers the TCP/TLS handshake
        # and runs on until the client's SETTINGS frame arrives; a connection that completed
        # it and opens no call is closed after max_connection_idle_s.
        ("grpc.server_handshake_timeout_ms", int(settings.handshake_timeout_s * 1000)),
        # grpc-core's overload protection counts streams the server has finished but not yet
        # freed, so a busy client within the limit got REFUSED_STREAM (UNAVAILABLE); the
        # limit above and max_concurrent_rpcs are the bounds.
        ("grpc.http.overload_protection", 0),
        # grpc-core sets SO_REUSEPORT by default: a second server started on a port in use
        # bound it too and silently took half the connections. Off: it fails to bind, saying so.
        # On only in the workers of one pod, whose supervisor holds the port (serving/workers.py).
        ("grpc.so_reuseport", 1 if reuse_port else 0),
    ]


def new_metrics() -> ModerationMetrics:
    """The service's metrics plus process, platform and GC collectors, in the server's own registry."""
    metrics = ModerationMetrics()
    for collector in (ProcessCollector, PlatformCollector, GCCollector):
        collector(registry=metrics.registry)
    return metrics


def _in_daemon_thread(loop: asyncio.AbstractEventLoop, function: Callable[[], Loaded]) -> asyncio.Future[Loaded]:
    """Run a slow load in a daemon thread: SIGTERM during start-up exits at once instead of
    waiting for the load to finish (asyncio.run joins its default executor's threads)."""
    future: asyncio.Future[Loaded] = loop.create_future()

    def deliver(setter: Callable[[object], None], value: object) -> None:
        if not future.done():
            setter(value)

    def run() -> None:
        try:
            result = function()
        except BaseException as err:  # noqa: BLE001 - handed to the event loop
            outcome = (future.set_exception, err)
        else:
            outcome = (future.set_result, result)
        try:
            loop.call_soon_threadsafe(deliver, *outcome)
        except RuntimeError:  # the loop already closed: the server stopped during the load
            pass

    threading.Thread(target=run, name="load-models", daemon=True).start()
    return future


class GrpcServerLifecycle(Generic[Loaded]):
    """One server: the transport, health, reflection, metrics port and signals; the caller brings the services.

    `load` runs in a worker thread (models, policies); `on_loaded` runs on the event
    loop with its result and the stop event (start batchers, watchers) before
    SERVING; `drain(grace_s)` refuses new calls and waits for the request slots in use
    (serving/admission.py); `close` frees what `load` built.
    `max_concurrent_rpcs` bounds RPCs of every service at once; gRPC refuses the
    ones beyond it with RESOURCE_EXHAUSTED before reading their request message.
    """

    def __init__(
        self,
        settings: Settings,
        metrics: ModerationMetrics,
        services: Sequence[str],
        interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
        options: Sequence[tuple[str, object]] = (),
        *,
        max_concurrent_rpcs: int,
        local_socket: bool = False,
        worker: bool = False,
    ):
        self.settings = settings
        # A worker of `serve --workers N` (serving/workers.py): it shares the gRPC port (SO_REUSEPORT) and
        # binds it only once loaded, so the kernel never hands a connection to a worker that cannot serve it.
        self.worker = worker
        self.metrics = metrics
        # A Unix socket beside the gRPC port, in a directory only this process's user can
        # enter, for clients inside the process (the review console): it reaches the same
        # services, interceptors and tokens as the port, without the port's TLS, which such
        # a client could not present a client certificate for.
        self._local_socket = local_socket
        self._local_dir: Path | None = None
        self.local_target: str | None = None  # "unix:/tmp/moderation-grpc-.../grpc.sock" once `run` starts
        self.services = tuple(services)
        self._interceptors = tuple(interceptors)
        self.server = grpc.aio.server(
            interceptors=list(interceptors) or None,
            options=[*transport_options(settings, reuse_port=worker), *options],
            maximum_concurrent_rpcs=max_concurrent_rpcs,
        )
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        if settings.reflection:
            enable_reflection((*self.services, health.SERVICE_NAME), self.server)
        self._health_server: grpc.aio.Server | None = None
        self.port = 0  # the gRPC port bound (settings.port, or the one picked for 0), once `run` bound it

    async def _set_health(self, status: int) -> None:
        for name in ("", *self.services):
            await self.health.set(name, status)

    def _bind(self) -> str:
        settings = self.settings
        address = f"{settings.host}:{settings.port}"
        credentials = server_credentials(settings)
        try:
            port = self.server.add_secure_port(address, credentials) if credentials else self.server.add_insecure_port(address)
        except RuntimeError:  # grpcio raises "Failed to bind" where older releases returned 0
            port = 0
        if port == 0:
            raise ConfigurationError(f"cannot bind gRPC port {address}; set MODERATION_PORT (--port) to a free port")
        self.port = port
        if self.local_target is not None and self.server.add_insecure_port(self.local_target) == 0:
            raise ConfigurationError(f"cannot bind the local gRPC socket {self.local_target}; check that TMPDIR is writable")
        return f"{settings.host}:{port}"

    async def _start_health_port(self) -> None:
        """Plaintext grpc.health.v1 on its own port: kubelet gRPC probes cannot speak TLS."""
        settings = self.settings
        if not settings.health_port:
            return
        # Health checks only: tiny messages, a few calls at once. A server object of its own,
        # so its own max_connections count: sockets filling the main port's cap leave the
        # probes answering (each port's handshake timeout then frees the slots).
        # Malformed health requests are refused there as on the main port (the same log quota).
        malformed = next((i for i in self._interceptors if isinstance(i, MalformedRequestInterceptor)), None) or MalformedRequestInterceptor()
        self._health_server = grpc.aio.server(
            interceptors=[malformed],
            options=[*transport_options(settings), ("grpc.max_receive_message_length", 4096)],
            maximum_concurrent_rpcs=64,
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._health_server)
        if self._health_server.add_insecure_port(f"{settings.host}:{settings.health_port}") == 0:
            raise ConfigurationError(f"cannot bind health port {settings.health_port}; set MODERATION_HEALTH_PORT to a free port")
        await self._health_server.start()
        log.info("health (plaintext, grpc.health.v1 only) on %s:%d", settings.host, settings.health_port)

    async def _stop_transport(self, grace_s: float | None) -> None:
        await self.server.stop(grace_s)
        if self._health_server is not None:
            await self._health_server.stop(None)
        if self._local_dir is not None:
            shutil.rmtree(self._local_dir, ignore_errors=True)

    async def _abandon_load(self, loading: asyncio.Future[Loaded]) -> Loaded | None:
        """Wait for a cancelled load to stop; what it finished anyway is returned, to be closed."""
        from moderation.policy.compile import CompileCancelled

        try:
            return await asyncio.wait_for(asyncio.shield(loading), self.settings.grace_period_s)
        except CompileCancelled:
            return None
        except TimeoutError:
            log.warning("the load did not stop within the grace period; exiting anyway")
            return None

    async def run(
        self,
        name: str,
        load: Callable[[], Loaded],
        on_loaded: Callable[[Loaded, asyncio.Event], Awaitable[None]],
        drain: Callable[[float], Awaitable[bool]],
        close: Callable[[Loaded], Awaitable[None]],
        cancel_load: Callable[[], None] = lambda: None,
    ) -> None:
        """Serve until SIGTERM or SIGINT. Raises ConfigurationError (and loading errors) when it cannot serve.

        SIGTERM during the load calls `cancel_load` and waits up to the grace period for
        the load to stop (a load that ends in CompileCancelled is a clean stop).
        """
        settings = self.settings
        address = f"{settings.host}:{settings.port}"
        if self._local_socket:
            # Named before `on_loaded` (which may start its client), bound with the port: a
            # worker binds only once loaded, and a gRPC channel connects at its first call.
            self._local_dir = Path(tempfile.mkdtemp(prefix="moderation-grpc-"))  # mode 0700
            self.local_target = f"unix:{self._local_dir / 'grpc.sock'}"
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        if not self.worker:
            address = self._bind()
            await self.server.start()
            log.info("%s gRPC listening on %s (NOT_SERVING until models and policies load)", name, address)
        try:
            await self._start_health_port()
            if settings.metrics_port:
                try:
                    start_http_server(settings.metrics_port, addr=settings.metrics_bind_host, registry=self.metrics.registry)
                except OSError as error:
                    raise ConfigurationError(
                        f"cannot serve metrics on {settings.metrics_bind_host}:{settings.metrics_port}: {error.strerror or error}; "
                        "set MODERATION_METRICS_PORT (--metrics-port) to a free port"
                    ) from None
                log.info("metrics on http://%s:%d/metrics", settings.metrics_bind_host, settings.metrics_port)
        except BaseException:
            await self._stop_transport(None)
            raise

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        loaded: Loaded | None = None
        try:
            loading = _in_daemon_thread(loop, load)
            stopping = asyncio.ensure_future(stop.wait())
            done, _ = await asyncio.wait({loading, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if loading in done:
                loaded = loading.result()
                await on_loaded(loaded, stop)
                if self.worker:
                    address = self._bind()
                    await self.server.start()
                await self._set_health(health_pb2.HealthCheckResponse.SERVING)
                log.info("%s SERVING on %s", name, address)
                await stop.wait()
            else:
                log.info("stopping while models and policies load")
                cancel_load()
                loaded = await self._abandon_load(loading)
        except BaseException:
            await self._stop_transport(None)
            raise
        log.info("draining: NOT_SERVING, finishing in-flight calls for up to %.0f s", settings.grace_period_s)
        # Health first, so load balancers stop routing here; new calls are refused
        # while the in-flight ones finish. Only then does the transport stop, so the
        # stop itself cuts no call short.
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        drain_started = time.monotonic()
        if not await drain(settings.grace_period_s):
            log.warning("grace period over with calls still in flight; cancelling them")
        else:
            # Linger while refusing: a caller that sends just now gets UNAVAILABLE (retry
            # elsewhere) rather than CANCELLED by the transport stopping under its call.
            await asyncio.sleep(min(DRAIN_LINGER_S, max(0.0, settings.grace_period_s - (time.monotonic() - drain_started))))
        # Open streams hold no request slot between items: the transport's own stop gives
        # them what is left of the grace period to end (their items are still served),
        # then cancels them.
        await self._stop_transport(max(1.0, settings.grace_period_s - (time.monotonic() - drain_started)))
        if loaded is not None:
            await close(loaded)
        log.info("stopped")
