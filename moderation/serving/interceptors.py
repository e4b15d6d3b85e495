"""Cross-cutting concerns of every RPC, as grpc.aio server interceptors.

Order (outermost first): RPC metrics, bearer-token auth, malformed requests, admission. Each wraps
the method handler's behaviour rather than acting in `intercept_service`, so
what it sets (the caller's identity in a contextvar) is visible to the handler
and what it counts is released in `finally`, whatever the handler does.

Per-request concerns of ModerateStream (one RPC, many requests) cannot live at
the RPC level: the per-request audit line and counters are written by
`moderation/serving/recorder.py`, called once per request by the servicer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from moderation.ops.logs import RateLimitedLog
from moderation.ops.metrics import ModerationMetrics
from moderation.serving.admission import UNARY, Admission
from moderation.serving.auth import OPEN_SERVICES, TokenAuth, authenticated_caller, caller_identity

UnaryBehaviour = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]
StreamBehaviour = Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]]


def wrap_handler(
    handler: grpc.RpcMethodHandler | None,
    unary: Callable[[UnaryBehaviour], UnaryBehaviour],
    stream: Callable[[StreamBehaviour], StreamBehaviour],
    request_deserializer: Callable[[bytes], Any] | None = None,
) -> grpc.RpcMethodHandler | None:
    """The same handler with its behaviour wrapped (unary-unary and stream-stream, the kinds served here).

    `request_deserializer`, when given, replaces the handler's (MalformedRequestInterceptor).
    """
    if handler is None:
        return None
    deserializer = request_deserializer or handler.request_deserializer
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(unary(handler.unary_unary), deserializer, handler.response_serializer)
    if handler.stream_stream is not None:
        return grpc.stream_stream_rpc_method_handler(stream(handler.stream_stream), deserializer, handler.response_serializer)
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
    """Bearer tokens, checked once per RPC; the caller's token name goes into `authenticated_caller`.

    Every refusal is counted in `moderation_auth_failures_total{reason}` and logged
    with the peer's address, at most `logs_per_minute` lines a minute (a
    credential-stuffing caller must not flood the log).
    """

    MESSAGE = "missing or invalid bearer token; send metadata 'authorization: Bearer <token>'"
    MESSAGES = {"duplicate": "more than one authorization header; send exactly one 'authorization: Bearer <token>'"}

    def __init__(self, auth: TokenAuth, metrics: ModerationMetrics | None = None, logs_per_minute: int = 10):
        self._auth = auth
        self._metrics = metrics
        self._log = RateLimitedLog(logging.getLogger(__name__), logs_per_minute)

    async def _refuse(self, context: grpc.aio.ServicerContext, method: str, reason: str) -> None:
        if self._metrics is not None:
            self._metrics.auth_failures.labels(reason).inc()
        self._log.log(
            logging.WARNING,
            "refused a call without valid credentials",
            fields={"peer": context.peer(), "method": _short_method(method), "reason": reason},
        )
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, self.MESSAGES.get(reason, self.MESSAGE))

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]], details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if details.method.startswith(OPEN_SERVICES):
            return handler
        caller, reason = self._auth.check(details.invocation_metadata)

        def unary(behaviour: UnaryBehaviour) -> UnaryBehaviour:
            async def checked(request: Any, context: grpc.aio.ServicerContext) -> Any:
                if caller is None:
                    await self._refuse(context, details.method, reason)
                authenticated_caller.set(f"token:{caller}")
                return await behaviour(request, context)

            return checked

        def stream(behaviour: StreamBehaviour) -> StreamBehaviour:
            async def checked(requests: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                if caller is None:
                    await self._refuse(context, details.method, reason)
                authenticated_caller.set(f"token:{caller}")
                async for response in behaviour(requests, context):
                    yield response

            return checked

        return wrap_handler(handler, unary, stream)


class AdmissionInterceptor(grpc.aio.ServerInterceptor):
    """UNAVAILABLE while loading or draining; a request slot per unary call, RESOURCE_EXHAUSTED when none comes.

    Applies to `services` (the moderation API); health and reflection always answer.
    The slots are the server's one `Admission` count, whose limit is fixed when it is
    built; a stream's items take theirs in the servicer, from the same `Admission`.
    A unary call that finds every slot held waits up to `unary_wait_s` (and never past
    its deadline) for one, in the queue where slots are shared fairly between callers
    and between streams and unary calls. A new stream is admitted while the server
    serves: it holds no slot until an item comes, and open RPCs are bounded by gRPC's
    max_concurrent_rpcs.
    """

    def __init__(self, admission: Admission, services: tuple[str, ...], loading_message: str, unary_wait_s: float = 0.0):
        self._admission = admission
        self._prefixes = tuple(f"/{name}/" for name in services)
        self._loading_message = loading_message
        self._unary_wait_s = unary_wait_s

    def _refusal(self) -> tuple[grpc.StatusCode, str] | None:
        admission = self._admission
        if admission.draining:
            return grpc.StatusCode.UNAVAILABLE, "the server is shutting down; retry on another instance"
        if not admission.loaded:
            return grpc.StatusCode.UNAVAILABLE, self._loading_message
        return None

    def _wait_s(self, context: grpc.aio.ServicerContext) -> float:
        remaining = context.time_remaining()
        # Leave the call most of what is left of its deadline: a slot that comes at the
        # last moment helps nobody.
        return self._unary_wait_s if remaining is None else min(self._unary_wait_s, remaining / 2)

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]], details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if not details.method.startswith(self._prefixes):
            return handler
        admission = self._admission

        def unary(behaviour: UnaryBehaviour) -> UnaryBehaviour:
            async def admitted(request: Any, context: grpc.aio.ServicerContext) -> Any:
                refusal = self._refusal()
                if refusal is not None:
                    await context.abort(*refusal)
                slot = await admission.acquire(caller_identity(context), UNARY, timeout=self._wait_s(context))
                if slot is None:
                    await context.abort(
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"the server is at its limit of {admission.limit} requests in flight; retry with backoff",
                    )
                try:  # admitted: holds a request slot until the call ends, however it ends
                    return await behaviour(request, context)
                finally:
                    slot.release()

            return admitted

        def stream(behaviour: StreamBehaviour) -> StreamBehaviour:
            async def admitted(requests: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                refusal = self._refusal()
                if refusal is not None:
                    await context.abort(*refusal)
                async for response in behaviour(requests, context):
                    yield response

            return admitted

        return wrap_handler(handler, unary, stream)


class Malformed:
    """What the tolerant deserializer hands on for bytes that are no valid message (never raised, never logged with its bytes)."""

    __slots__ = ()


MALFORMED = Malformed()


class _MalformedItem(Exception):
    """Raised by a stream's request iterator at a malformed item; turned into INVALID_ARGUMENT by the interceptor."""


class MalformedRequestInterceptor(grpc.aio.ServerInterceptor):
    """Bytes that do not parse as the method's request message: INVALID_ARGUMENT and a rate-limited warning.

    grpc.aio deserializes the request before any interceptor's behaviour runs, so a
    DecodeError escaped as UNKNOWN "Unexpected <class 'DecodeError'>" with an ERROR
    line and a traceback per call, before auth and without a rate limit (issue 18,
    item 4). Here the deserializer hands on a `MALFORMED` sentinel instead of raising,
    and this wrapper, placed after auth, refuses it: an unauthenticated caller still
    gets UNAUTHENTICATED first, and nothing about the bytes reaches a handler or the log.
    A stream is refused at its first malformed item (its request iterator is wrapped).
    """

    def __init__(self, logs_per_minute: int = 10):
        self._log = RateLimitedLog(logging.getLogger(__name__), logs_per_minute)

    @staticmethod
    def message_name(deserializer: Callable[[bytes], Any]) -> str:
        # Generated stubs pass `MessageClass.FromString`, a classmethod bound to the class.
        descriptor = getattr(getattr(deserializer, "__self__", None), "DESCRIPTOR", None)
        return getattr(descriptor, "full_name", "") or "request"

    async def _refuse(self, context: grpc.aio.ServicerContext, method: str, name: str) -> None:
        self._log.log(
            logging.WARNING,
            "refused a request that is not a valid protobuf message",
            fields={"peer": context.peer(), "method": _short_method(method), "message_type": name},
        )
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"the request is not a valid {name} message")

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]], details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or handler.request_deserializer is None:
            return handler
        parse = handler.request_deserializer
        name = self.message_name(parse)

        def tolerant(data: bytes) -> Any:
            try:
                return parse(data)
            except DecodeError:
                return MALFORMED

        def unary(behaviour: UnaryBehaviour) -> UnaryBehaviour:
            async def checked(request: Any, context: grpc.aio.ServicerContext) -> Any:
                if request is MALFORMED:
                    await self._refuse(context, details.method, name)
                return await behaviour(request, context)

            return checked

        def stream(behaviour: StreamBehaviour) -> StreamBehaviour:
            async def items(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
                async for request in requests:
                    if request is MALFORMED:
                        raise _MalformedItem
                    yield request

            async def checked(requests: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                try:
                    async for response in behaviour(items(requests), context):
                        yield response
                except _MalformedItem:
                    # The servicer's reader surfaces the error of its request stream once the
                    # items before it are answered; the call then ends with this status.
                    await self._refuse(context, details.method, name)

            return checked

        if handler.unary_stream is not None:
            # grpc.health.v1.Health/Watch, open to anyone: no other interceptor wraps this kind.
            # A coroutine that writes, whatever the behaviour is (Watch itself writes with
            # context.write; a generated async generator's answers are written here).
            behaviour = handler.unary_stream

            async def watched(request: Any, context: grpc.aio.ServicerContext) -> None:
                if request is MALFORMED:
                    await self._refuse(context, details.method, name)
                result = behaviour(request, context)
                if hasattr(result, "__aiter__"):
                    async for response in result:
                        await context.write(response)
                else:
                    await result

            return grpc.unary_stream_rpc_method_handler(watched, tolerant, handler.response_serializer)
        return wrap_handler(handler, unary, stream, request_deserializer=tolerant)
