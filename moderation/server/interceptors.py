"""Cross-cutting concerns of every RPC, as grpc.aio server interceptors.

Order (outermost first): RPC metrics, bearer-token auth, admission. Each wraps
the method handler's behaviour rather than acting in `intercept_service`, so
what it sets (the caller's identity in a contextvar) is visible to the handler
and what it counts is released in `finally`, whatever the handler does.

Per-request concerns of ModerateStream (one RPC, many requests) cannot live at
the RPC level: the per-request audit line and counters are written by
`moderation/server/recorder.py`, called once per request by the servicer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc

from moderation.metrics import ModerationMetrics
from moderation.server.auth import OPEN_SERVICES, TokenAuth, authenticated_caller

UnaryBehaviour = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]
StreamBehaviour = Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]]


def wrap_handler(
    handler: grpc.RpcMethodHandler | None,
    unary: Callable[[UnaryBehaviour], UnaryBehaviour],
    stream: Callable[[StreamBehaviour], StreamBehaviour],
) -> grpc.RpcMethodHandler | None:
    """The same handler with its behaviour wrapped (unary-unary and stream-stream, the kinds served here)."""
    if handler is None:
        return None
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(
            unary(handler.unary_unary), handler.request_deserializer, handler.response_serializer
        )
    if handler.stream_stream is not None:
        return grpc.stream_stream_rpc_method_handler(
            stream(handler.stream_stream), handler.request_deserializer, handler.response_serializer
        )
    return handler


def _short_method(full_method: str) -> str:
    # '/moderation.v1.ModerationService/Moderate' -> 'ModerationService/Moderate': bounded label values.
    return full_method.rsplit(".", 1)[-1] if full_method.startswith("/") else full_method


class RpcMetricsInterceptor(grpc.aio.ServerInterceptor):
    """Every RPC's status code and duration, by method (health and reflection included)."""

    def __init__(self, metrics: ModerationMetrics):
        self._metrics = metrics

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]], details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        method = _short_method(details.method)
        metrics = self._metrics

        def observe(started: float, context: grpc.aio.ServicerContext, failed: BaseException | None) -> None:
            code = context.code()
            if code is None:
                code = grpc.StatusCode.OK if failed is None else (grpc.StatusCode.CANCELLED if isinstance(failed, asyncio.CancelledError) else grpc.StatusCode.UNKNOWN)
            name = code.name if isinstance(code, grpc.StatusCode) else str(code)
            metrics.rpc_seconds.labels(method, name).observe(time.perf_counter() - started)

        def unary(behaviour: UnaryBehaviour) -> UnaryBehaviour:
            async def timed(request: Any, context: grpc.aio.ServicerContext) -> Any:
                started, failed = time.perf_counter(), None
                try:
                    return await behaviour(request, context)
                except BaseException as err:
                    failed = err
                    raise
                finally:
                    observe(started, context, failed)

            return timed

        def stream(behaviour: StreamBehaviour) -> StreamBehaviour:
            async def timed(requests: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                started, failed = time.perf_counter(), None
                try:
                    async for response in behaviour(requests, context):
                        yield response
                except BaseException as err:
                    failed = err
                    raise
                finally:
                    observe(started, context, failed)

            return timed

        return wrap_handler(handler, unary, stream)


class TokenAuthInterceptor(grpc.aio.ServerInterceptor):
    """Bearer tokens, checked once per RPC; the caller's token name goes into `authenticated_caller`."""

    MESSAGE = "missing or invalid bearer token; send metadata 'authorization: Bearer <token>'"

    def __init__(self, auth: TokenAuth):
        self._auth = auth

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]], details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if details.method.startswith(OPEN_SERVICES):
            return handler
        caller = self._auth.caller(details.invocation_metadata)

        def unary(behaviour: UnaryBehaviour) -> UnaryBehaviour:
            async def checked(request: Any, context: grpc.aio.ServicerContext) -> Any:
                if caller is None:
                    await context.abort(grpc.StatusCode.UNAUTHENTICATED, self.MESSAGE)
                authenticated_caller.set(f"token:{caller}")
                return await behaviour(request, context)

            return checked

        def stream(behaviour: StreamBehaviour) -> StreamBehaviour:
            async def checked(requests: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                if caller is None:
                    await context.abort(grpc.StatusCode.UNAUTHENTICATED, self.MESSAGE)
                authenticated_caller.set(f"token:{caller}")
                async for response in behaviour(requests, context):
                    yield response

            return checked

        return wrap_handler(handler, unary, stream)


@dataclass
class ServingState:
    """The one count of RPCs in flight, and whether the server takes new ones."""

    loaded: bool = False
    draining: bool = False
    in_flight: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.idle.set()

    def started(self) -> None:
        self.in_flight += 1
        self.idle.clear()

    def finished(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self.idle.set()

    async def drain(self, timeout_s: float) -> bool:
        """Refuse new calls, then wait for in-flight ones; False if some are still running."""
        self.draining = True
        try:
            await asyncio.wait_for(self.idle.wait(), timeout_s)
            return True
        except TimeoutError:
            return False


class AdmissionInterceptor(grpc.aio.ServerInterceptor):
    """UNAVAILABLE while loading or draining, RESOURCE_EXHAUSTED beyond `max_in_flight` RPCs.

    Applies to `services` (the moderation API); health and reflection always answer.
    """

    def __init__(self, state: ServingState, max_in_flight: int, services: tuple[str, ...], loading_message: str):
        self._state = state
        self._max_in_flight = max_in_flight
        self._prefixes = tuple(f"/{name}/" for name in services)
        self._loading_message = loading_message

    def _refusal(self) -> tuple[grpc.StatusCode, str] | None:
        state = self._state
        if state.draining:
            return grpc.StatusCode.UNAVAILABLE, "the server is shutting down; retry on another instance"
        if not state.loaded:
            return grpc.StatusCode.UNAVAILABLE, self._loading_message
        if state.in_flight >= self._max_in_flight:
            return (
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"the server is at its limit of {self._max_in_flight} requests in flight; retry with backoff",
            )
        return None

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]], details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if not details.method.startswith(self._prefixes):
            return handler
        state = self._state

        def unary(behaviour: UnaryBehaviour) -> UnaryBehaviour:
            async def admitted(request: Any, context: grpc.aio.ServicerContext) -> Any:
                refusal = self._refusal()
                if refusal is not None:
                    await context.abort(*refusal)
                state.started()
                try:
                    return await behaviour(request, context)
                finally:
                    state.finished()

            return admitted

        def stream(behaviour: StreamBehaviour) -> StreamBehaviour:
            async def admitted(requests: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                refusal = self._refusal()
                if refusal is not None:
                    await context.abort(*refusal)
                state.started()
                try:
                    async for response in behaviour(requests, context):
                        yield response
                finally:
                    state.finished()

            return admitted

        return wrap_handler(handler, unary, stream)
