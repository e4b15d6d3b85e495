"""ModerationService: decode the request, call the pipeline, encode the reply.

Every failure leaves as a gRPC status with a sentence the caller can act on.
Unexpected errors are logged with a traceback and reach the caller as INTERNAL
with the request id only, never the exception text.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator

import grpc

from moderation.clip.batcher import Overloaded
from moderation.imaging import ImageRejected
from moderation.pipeline import ModerationPipeline
from moderation.policy.registry import PolicyNotFound
from moderation.server import convert
from moderation.server.auth import caller_identity
from moderation.server.recorder import RequestRecorder
from moderation.v1 import moderation_pb2 as pb
from moderation.v1 import moderation_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

MAX_REQUEST_ID_LENGTH = 128
# Requests one ModerateStream may have in flight; beyond it the server stops
# reading the stream, which pushes back on the client through flow control.
STREAM_WINDOW = 16


class ServiceError(Exception):
    """An expected failure with its gRPC code and caller-facing sentence."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def status_for(err: BaseException, request_id: str, deadline_s: float) -> ServiceError:
    if isinstance(err, ServiceError):
        return err
    if isinstance(err, ImageRejected):
        return ServiceError(grpc.StatusCode.INVALID_ARGUMENT, f"invalid image: {err}")
    if isinstance(err, PolicyNotFound):
        return ServiceError(grpc.StatusCode.NOT_FOUND, str(err))
    if isinstance(err, Overloaded):
        return ServiceError(grpc.StatusCode.RESOURCE_EXHAUSTED, str(err))
    if isinstance(err, TimeoutError):
        return ServiceError(grpc.StatusCode.DEADLINE_EXCEEDED, f"the request did not finish within its deadline of {deadline_s:.2f} s")
    log.exception("unexpected error in request %s", request_id, exc_info=err)
    return ServiceError(grpc.StatusCode.INTERNAL, f"internal error while moderating request {request_id}; the server logged the details")


class ModerationServicer(pb_grpc.ModerationServiceServicer):
    """Transport only: check the request, call the pipeline, convert the reply.

    Admission (loading, draining, in-flight bound) and auth are interceptors
    (interceptors.py); the per-request counter and audit line are the recorder's.
    """

    def __init__(self, recorder: RequestRecorder, max_image_bytes: int, default_deadline_s: float):
        self.pipeline: ModerationPipeline | None = None  # set once models and policies are loaded
        self._recorder = recorder
        self._max_image_bytes = max_image_bytes
        self._default_deadline_s = default_deadline_s

    def _loaded(self) -> ModerationPipeline:
        if self.pipeline is None:  # the admission interceptor refuses calls before this is set
            raise ServiceError(grpc.StatusCode.UNAVAILABLE, "the server is still loading models and policies; retry shortly")
        return self.pipeline

    def _check(self, request: pb.ModerateRequest) -> None:
        if len(request.request_id) > MAX_REQUEST_ID_LENGTH:
            raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT, f"request_id is longer than {MAX_REQUEST_ID_LENGTH} characters")
        if not request.image:
            raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT, "the image field is empty; send the encoded image bytes")
        if len(request.image) > self._max_image_bytes:
            raise ServiceError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the image is {len(request.image):,} bytes; the limit is {self._max_image_bytes:,} bytes (setting max_image_bytes)",
            )

    async def _moderate_recorded(self, request: pb.ModerateRequest, deadline_s: float, caller: str) -> pb.ModerateResponse:
        """Moderate one request and record it; raise ServiceError on failure."""
        request_id = request.request_id or uuid.uuid4().hex
        code, result = grpc.StatusCode.OK, None
        try:
            pipeline = self._loaded()
            self._check(request)
            result = await asyncio.wait_for(
                pipeline.moderate(request.image, request.policy_id, request_id, request.force_escalation, deadline_s),
                timeout=deadline_s,
            )
            return convert.result_to_pb(result)
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception as err:  # noqa: BLE001 - every failure becomes a status
            failure = status_for(err, request_id, deadline_s)
            code = failure.code
            raise failure from err
        finally:
            self._recorder.record(self._policy_label(request.policy_id), code, result, caller, dict(request.metadata))

    def _policy_label(self, policy_id: str) -> str:
        # Only served ids become label values: a caller's typo must not mint a series.
        if self.pipeline is None:
            return "unknown"
        try:
            return self.pipeline.registry.get(policy_id).policy.id
        except PolicyNotFound:
            return "unknown"

    def _deadline(self, context: grpc.aio.ServicerContext) -> float:
        remaining = context.time_remaining()
        return remaining if remaining is not None else self._default_deadline_s

    async def Moderate(self, request: pb.ModerateRequest, context: grpc.aio.ServicerContext) -> pb.ModerateResponse:
        try:
            return await self._moderate_recorded(request, self._deadline(context), caller_identity(context))
        except ServiceError as err:
            await context.abort(err.code, err.message)
            raise  # unreachable: abort raises

    async def ModerateStream(
        self, request_iterator: AsyncIterator[pb.ModerateStreamRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ModerateStreamResponse]:
        window = asyncio.Semaphore(STREAM_WINDOW)
        results: asyncio.Queue[pb.ModerateStreamResponse | None] = asyncio.Queue()
        tasks: set[asyncio.Task] = set()
        caller = caller_identity(context)

        async def handle(item: pb.ModerateStreamRequest) -> None:
            request = item.request
            if not request.request_id:
                request.request_id = uuid.uuid4().hex
            try:
                response = await self._moderate_recorded(request, self._deadline(context), caller)
                await results.put(pb.ModerateStreamResponse(request_id=request.request_id, response=response))
            except ServiceError as err:
                error = pb.ModerateStreamError(code=err.code.value[0], message=err.message)
                await results.put(pb.ModerateStreamResponse(request_id=request.request_id, error=error))
            finally:
                window.release()

        async def read_all() -> None:
            try:
                async for item in request_iterator:
                    await window.acquire()
                    task = asyncio.create_task(handle(item))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                if tasks:
                    await asyncio.gather(*tasks)
            finally:
                await results.put(None)

        reader = asyncio.create_task(read_all())
        try:
            while (response := await results.get()) is not None:
                yield response
            await reader  # surfaces a broken request stream
        finally:
            reader.cancel()
            for task in list(tasks):
                task.cancel()

    async def ListPolicies(self, request: pb.ListPoliciesRequest, context: grpc.aio.ServicerContext) -> pb.ListPoliciesResponse:
        try:
            registry = self._loaded().registry
        except ServiceError as err:
            await context.abort(err.code, err.message)
        default_id = registry.default_id
        return pb.ListPoliciesResponse(
            policies=[convert.policy_summary_to_pb(s, s.policy.id == default_id) for s in registry.all()],
            model=registry.model_id or "",
            random_weights=registry.random_weights,
        )

    async def GetPolicy(self, request: pb.GetPolicyRequest, context: grpc.aio.ServicerContext) -> pb.GetPolicyResponse:
        try:
            registry = self._loaded().registry
            served = registry.get(request.policy_id)
        except ServiceError as err:
            await context.abort(err.code, err.message)
        except PolicyNotFound as err:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(err))
        return convert.policy_to_pb(served, served.policy.id == registry.default_id)

