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
from moderation.serving.auth import CURATION_SERVICES, OPEN_SERVICES, REVIEW_SERVICES, TokenAuth, authenticated_caller, caller_identity

UnaryBehaviour = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]
StreamBehaviour = Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]]


def wrap_handler(
    handler: grpc.RpcMethodHandler | None,
    unary: Callable[[UnaryBehaviour], UnaryBehaviour],
    stream: Callable[[StreamBehaviour], StreamBehaviour],
    request_deserializer: Callable[[bytes], Any] | None = None,
) -> grpc.RpcMethodHandler | None:
    """The same handler with its behaviour wrapped, for every kind of RPC.

    `unary` wraps behaviours that answer once (unary-unary, stream-unary), `stream`
    those that answer with a stream (stream-stream, unary-stream); the request, one
    message or an async iterator of them, is handed on as it came. Every kind is
    wrapped: an interceptor that skipped one would let BankService's ImportEntries
    (stream-unary) and ExportEntries (unary-stream) past auth and admission.
    `request_deserializer`, when given, replaces the handler's (MalformedRequestInterceptor).
    """
    if handler is None:
        return None
    deserializer = request_deserializer or handler.request_deserializer
    serializer = handler.response_serializer
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(unary(handler.unary_unary), deserializer, serializer)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(unary(handler.stream_unary), deserializer, serializer)
    if handler.stream_stream is not None:
        return grpc.stream_stream_rpc_method_handler(stream(handler.stream_stream), deserializer, serializer)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(_writing(stream(_responses(handler.unary_stream))), deserializer, serializer)
    return handler


def _responses(behaviour: Callable[[Any, grpc.aio.ServicerContext], Any]) -> StreamBehaviour:
    """A unary-stream behaviour as an async iterator of its responses.

    grpc.aio takes two forms: an async generator (ExportEntries), or a coroutine that
    writes with `context.write` itself (grpc's health Watch), which yields nothing here.
    """

    async def responses(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        result = behaviour(request, context)
        if hasattr(result, "__aiter__"):
            async for response in result:
                yield response
        else:
            await result

    return responses


def _writing(behaviour: StreamBehaviour) -> Callable[[Any, grpc.aio.ServicerContext], Awaitable[None]]:
    """A coroutine that writes what `behaviour` yields: the form that lets an inner behaviour write for itself too
    (grpc.aio refuses `context.write` inside an async-generator handler)."""

    async def write(request: Any, context: grpc.aio.ServicerContext) -> None:
        async for response in behaviour(request, context):
            await context.write(response)

    return write


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
    """Bearer tokens, checked once per RPC, each method against its scope's tokens; the caller's token name goes
    into `authenticated_caller`.

    Three scopes, three token files: BankService (`CURATION_SERVICES`) takes only curation
    tokens (`curation`, from curation_tokens_file), ReviewService (`REVIEW_SERVICES`) only
    reviewer tokens (`review`, from reviewer_tokens_file), every other service only
    moderation tokens (`auth`, from auth_tokens_file), so a token that may moderate cannot
    change what every request is matched against nor decide cases, and a curator's or a
    reviewer's token cannot moderate. `auth` None leaves the moderation scope open (no
    auth_tokens_file, as before); `curation` None turns curation off and `review` None the
    review queue: every call of that service is refused with PERMISSION_DENIED.
    Health and reflection stay open.

    Every refusal is counted in `moderation_auth_failures_total{reason}` and logged
    with the peer's address, at most `logs_per_minute` lines a minute (a
    credential-stuffing caller must not flood the log).
    """

    MESSAGE = "missing or invalid bearer token; send metadata 'authorization: Bearer <token>'"
    MESSAGES = {"duplicate": "more than one authorization header; send exactly one 'authorization: Bearer <token>'"}
    CURATION_MESSAGE = (
        "bank curation needs a curation token (from the server's curation_tokens_file); "
        "send metadata 'authorization: Bearer <curation token>'"
    )
    CURATION_OFF = "bank curation is off: set MODERATION_CURATION_TOKENS_FILE"
    MODERATION_TOKEN_CANNOT_CURATE = (
        "this token may moderate but not curate banks: BankService takes only tokens from the server's curation_tokens_file"
    )
    CURATION_TOKEN_CANNOT_MODERATE = (
        "this token may curate banks but not moderate: this service takes only tokens from the server's auth_tokens_file"
    )
    REVIEW_MESSAGE = (
        "the review queue needs a reviewer token (from the server's reviewer_tokens_file); "
        "send metadata 'authorization: Bearer <reviewer token>'"
    )
    REVIEW_OFF = "the review queue is off: set MODERATION_REVIEWER_TOKENS_FILE (and a state store)"
    TOKEN_CANNOT_REVIEW = "this token may not review: ReviewService takes only tokens from the server's reviewer_tokens_file"
    REVIEWER_TOKEN_ELSEWHERE = "this token is a reviewer's: it may only call ReviewService (the review queue)"

    def __init__(
        self,
        auth: TokenAuth | None,
        metrics: ModerationMetrics | None = None,
        logs_per_minute: int = 10,
        *,
        curation: TokenAuth | None = None,
        review: TokenAuth | None = None,
    ):
        self._auth = auth
        self._curation = curation
        self._review = review
        self._metrics = metrics
        self._log = RateLimitedLog(logging.getLogger(__name__), logs_per_minute)

    async def _refuse(self, context: grpc.aio.ServicerContext, method: str, reason: str, code: grpc.StatusCode, message: str) -> None:
        if self._metrics is not None:
            self._metrics.auth_failures.labels(reason).inc()
        self._log.log(
            logging.WARNING,
            "refused a call without valid credentials",
            fields={"peer": context.peer(), "method": _short_method(method), "reason": reason},
        )
        await context.abort(code, message)

    def _check(self, details: grpc.HandlerCallDetails) -> tuple[str | None, str, grpc.StatusCode, str]:
        """(the token's name, '', OK, '') when the call may go on; else (None, reason, status code, sentence).

        Reasons (bounded, they label a counter): missing, malformed, duplicate, invalid,
        wrong_scope (a valid token of another scope), curation_off, review_off.
        """
        metadata = details.invocation_metadata
        # Per scope: its tokens, the refusal for a bad token, and what to say to each other scope's token.
        if details.method.startswith(CURATION_SERVICES):
            own, refusal = self._curation, self.CURATION_MESSAGE
            if own is None:
                return None, "curation_off", grpc.StatusCode.PERMISSION_DENIED, self.CURATION_OFF
            others = ((self._auth, self.MODERATION_TOKEN_CANNOT_CURATE), (self._review, self.REVIEWER_TOKEN_ELSEWHERE))
        elif details.method.startswith(REVIEW_SERVICES):
            own, refusal = self._review, self.REVIEW_MESSAGE
            if own is None:
                return None, "review_off", grpc.StatusCode.PERMISSION_DENIED, self.REVIEW_OFF
            others = ((self._auth, self.TOKEN_CANNOT_REVIEW), (self._curation, self.TOKEN_CANNOT_REVIEW))
        else:
            own, refusal = self._auth, self.MESSAGE
            others = ((self._curation, self.CURATION_TOKEN_CANNOT_MODERATE), (self._review, self.REVIEWER_TOKEN_ELSEWHERE))
        assert own is not None  # an open scope is passed through before this check
        caller, reason = own.check(metadata)
        if caller is not None:
            return caller, "", grpc.StatusCode.OK, ""
        if reason == "invalid":
            for other, wrong_scope in others:
                if other is not None and other.caller(metadata) is not None:
                    # Valid, but for another scope: say so, the caller holds the token already.
                    return None, "wrong_scope", grpc.StatusCode.PERMISSION_DENIED, wrong_scope
        return None, reason, grpc.StatusCode.UNAUTHENTICATED, self.MESSAGES.get(reason, refusal)

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]], details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        scoped = details.method.startswith(CURATION_SERVICES) or details.method.startswith(REVIEW_SERVICES)
        if details.method.startswith(OPEN_SERVICES) or (self._auth is None and not scoped):
            return handler  # health and reflection, and moderation without auth_tokens_file, are open
        caller, reason, code, message = self._check(details)

        def unary(behaviour: UnaryBehaviour) -> UnaryBehaviour:
            async def checked(request: Any, context: grpc.aio.ServicerContext) -> Any:
                if caller is None:
                    await self._refuse(context, details.method, reason, code, message)
                authenticated_caller.set(f"token:{caller}")
                return await behaviour(request, context)

            return checked

        def stream(behaviour: StreamBehaviour) -> StreamBehaviour:
            async def checked(requests: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                if caller is None:
                    await self._refuse(context, details.method, reason, code, message)
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

    `unmetered` services (BankService) are refused while loading or draining like the
    others but take no request slot: curating a bank must not take the slots sized for
    moderation traffic, and a long import must not hold one. What bounds them is their
    own work: store calls take turns in the store, image work queues in the batcher.
    """

    def __init__(
        self,
        admission: Admission,
        services: tuple[str, ...],
        loading_message: str,
        unary_wait_s: float = 0.0,
        unmetered: tuple[str, ...] = (),
    ):
        self._admission = admission
        self._prefixes = tuple(f"/{name}/" for name in services)
        self._unmetered = tuple(f"/{name}/" for name in unmetered)
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
        if details.method.startswith(self._unmetered):
            return wrap_handler(handler, self._refused_while_not_serving, self._refused_while_not_serving_stream)
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

        # A stream takes its slots per item, in the servicer.
        return wrap_handler(handler, unary, self._refused_while_not_serving_stream)

    def _refused_while_not_serving(self, behaviour: UnaryBehaviour) -> UnaryBehaviour:
        async def checked(request: Any, context: grpc.aio.ServicerContext) -> Any:
            refusal = self._refusal()
            if refusal is not None:
                await context.abort(*refusal)
            return await behaviour(request, context)

        return checked

    def _refused_while_not_serving_stream(self, behaviour: StreamBehaviour) -> StreamBehaviour:
        async def checked(requests: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            refusal = self._refusal()
            if refusal is not None:
                await context.abort(*refusal)
            async for response in behaviour(requests, context):
                yield response

        return checked


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

        streamed_requests = handler.request_streaming

        async def items(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
            async for request in requests:
                if request is MALFORMED:
                    raise _MalformedItem
                yield request

        # A single request is checked before the behaviour runs; a stream of them item by item,
        # as the servicer reads it: the servicer's reader surfaces the error of its request
        # stream (once the items before it are answered) and the call ends with this status.
        def unary(behaviour: UnaryBehaviour) -> UnaryBehaviour:
            async def checked(request: Any, context: grpc.aio.ServicerContext) -> Any:
                if not streamed_requests:
                    if request is MALFORMED:
                        await self._refuse(context, details.method, name)
                    return await behaviour(request, context)
                try:
                    return await behaviour(items(request), context)
                except _MalformedItem:
                    await self._refuse(context, details.method, name)

            return checked

        def stream(behaviour: StreamBehaviour) -> StreamBehaviour:
            async def checked(requests: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                if not streamed_requests:
                    # grpc.health.v1.Health/Watch (open to anyone) and BankService.ExportEntries.
                    if requests is MALFORMED:
                        await self._refuse(context, details.method, name)
                    async for response in behaviour(requests, context):
                        yield response
                    return
                try:
                    async for response in behaviour(items(requests), context):
                        yield response
                except _MalformedItem:
                    await self._refuse(context, details.method, name)

            return checked

        return wrap_handler(handler, unary, stream, request_deserializer=tolerant)
