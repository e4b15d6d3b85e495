"""ModerationService: check the request, call the serving shell, encode the reply.

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

from moderation.signals.clip.batcher import Overloaded
from moderation.core.decode import ImageRejected
from moderation.video.decode import VideoRejected
from moderation.serving.shell import ServingShell
from moderation.policy.registry import PolicyNotFound
from moderation.serving import convert
from moderation.serving.auth import caller_identity
from moderation.serving.admission import STREAM, Admission
from moderation.serving.limits import MAX_POLICY_ID_CHARS, MAX_REQUEST_ID_CHARS, echo, status_message
from moderation.serving.recorder import RequestRecorder
from moderation.v1 import moderation_pb2 as pb
from moderation.v1 import moderation_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

MAX_REQUEST_ID_LENGTH = MAX_REQUEST_ID_CHARS
# Requests one ModerateStream may have in flight or answered but not yet sent;
# beyond it the server stops reading the stream, which pushes back on the client
# through flow control (settings.stream_window).
STREAM_WINDOW = 16


class ServiceError(Exception):
    """An expected failure with its gRPC code and caller-facing sentence."""

    def __init__(self, code: grpc.StatusCode, message: str):
        message = status_message(message)
        super().__init__(message)
        self.code = code
        self.message = message


def check_policy_id(policy_id: str) -> None:
    """An id longer than any policy id can name no served policy: NOT_FOUND, echoing it cut."""
    if len(policy_id) > MAX_POLICY_ID_CHARS:
        raise ServiceError(
            grpc.StatusCode.NOT_FOUND, f"no policy {echo(policy_id)!r} is served; policy ids are at most {MAX_POLICY_ID_CHARS} characters"
        )


def status_for(err: BaseException, request_id: str, deadline_s: float) -> ServiceError:
    if isinstance(err, ServiceError):
        return err
    if isinstance(err, VideoRejected):
        return ServiceError(grpc.StatusCode.INVALID_ARGUMENT, f"invalid video: {err}")
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


def _quietly(task: asyncio.Task) -> None:
    if not task.cancelled():
        task.exception()  # retrieved: asyncio does not log it as "never retrieved"


class ModerationServicer(pb_grpc.ModerationServiceServicer):
    """Transport only: check the request, call the serving shell, convert the reply.

    Admission (loading, draining, in-flight bound) and auth are interceptors
    (interceptors.py); the per-request counter and audit line are the recorder's.
    """

    def __init__(
        self,
        recorder: RequestRecorder,
        max_image_bytes: int,
        default_deadline_s: float,
        admission: Admission,
        stream_window: int = STREAM_WINDOW,
        max_video_bytes: int = 50 * 1024 * 1024,
    ):
        self.shell: ServingShell | None = None  # set once models and policies are loaded
        self._recorder = recorder
        self._max_image_bytes = max_image_bytes
        self._default_deadline_s = default_deadline_s
        self._stream_window = stream_window
        self._max_video_bytes = max_video_bytes
        # The server's one count of request slots, shared with unary calls (the admission
        # interceptor): a stream's next item waits for one, and the stream stops being read.
        self._admission = admission

    def _loaded(self) -> ServingShell:
        if self.shell is None:  # the admission interceptor refuses calls before this is set
            raise ServiceError(grpc.StatusCode.UNAVAILABLE, "the server is still loading models and policies; retry shortly")
        return self.shell

    def _check(self, request: pb.ModerateRequest, image: bytes) -> None:
        if len(request.request_id) > MAX_REQUEST_ID_LENGTH:
            raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT, f"request_id is longer than {MAX_REQUEST_ID_LENGTH} characters")
        check_policy_id(request.policy_id)
        if not image:
            raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT, "the image field is empty; send the encoded image bytes")
        if len(image) > self._max_image_bytes:
            raise ServiceError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the image is {len(image):,} bytes; the limit is {self._max_image_bytes:,} bytes (setting max_image_bytes)",
            )

    async def _moderate_recorded(self, request: pb.ModerateRequest, deadline_s: float, caller: str) -> pb.ModerateResponse:
        """Moderate one request and record it; raise ServiceError on failure."""
        request_id = request.request_id or uuid.uuid4().hex
        code, result = grpc.StatusCode.OK, None
        try:
            shell = self._loaded()
            image = request.image  # protobuf copies a bytes field on every access: once only
            self._check(request, image)
            # asyncio.timeout rather than wait_for: the same TimeoutError, without a task per request.
            async with asyncio.timeout(deadline_s):
                result = await shell.moderate(image, request.policy_id, request_id, request.force_escalation, deadline_s, caller)
            return convert.result_to_pb(result)
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception as err:  # noqa: BLE001 - every failure becomes a status
            failure = status_for(err, request_id, deadline_s)
            code = failure.code
            raise failure from err
        finally:
            self._recorder.record(self._policy_label(request.policy_id), code, result, caller, request.metadata)

    def _policy_label(self, policy_id: str) -> str:
        # Only served ids become label values: a caller's typo must not mint a series.
        if self.shell is None or len(policy_id) > MAX_POLICY_ID_CHARS:
            return "unknown"
        try:
            return self.shell.registry.get(policy_id).policy.id
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
        # A window slot is taken before a request is read and given back only when its
        # response has been sent, so a client that writes and never reads holds at most
        # `stream_window` requests and answers here; beyond that the server stops reading.
        window = asyncio.Semaphore(self._stream_window)
        admission = self._admission
        results: asyncio.Queue[pb.ModerateStreamResponse | None] = asyncio.Queue()  # <= window entries
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
                await results.put(pb.ModerateStreamResponse(request_id=echo(request.request_id), error=error))

        async def read_all() -> None:
            requests = aiter(request_iterator)
            try:
                while True:
                    await window.acquire()
                    try:
                        item = await anext(requests)
                    except StopAsyncIteration:
                        break
                    # A slot is taken only once a request has come: an idle stream holds none.
                    slot = await admission.acquire(caller, STREAM)
                    task = asyncio.create_task(handle(item))
                    task.add_done_callback(lambda _, slot=slot: slot.release())  # runs even if the task never started
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
                window.release()  # sent: the transport took it
            await reader  # surfaces a broken request stream
        finally:
            # The call is over (done, failed or cancelled by the client): what is left of it
            # ends quietly; an error of the request stream then has no one to report to.
            reader.cancel()
            reader.add_done_callback(_quietly)
            for task in list(tasks):
                task.cancel()

    async def ModerateVideo(
        self, request_iterator: AsyncIterator[pb.ModerateVideoRequest], context: grpc.aio.ServicerContext
    ) -> pb.ModerateVideoResponse:
        # One request slot for the whole call (the admission interceptor, as for Moderate): reading the
        # chunks, decoding and judging all count against the caller's deadline.
        deadline_s = self._deadline(context)
        caller = caller_identity(context)
        options = pb.VideoOptions()
        code, result = grpc.StatusCode.OK, None
        try:
            loop = asyncio.get_running_loop()
            ends = loop.time() + deadline_s
            async with asyncio.timeout_at(ends):
                shell = self._loaded()
                options, video = await self._read_video(aiter(request_iterator))
                result = await shell.moderate_video(
                    video, options.policy_id, options.request_id or uuid.uuid4().hex, options.sample_fps, ends - loop.time(), caller,
                    force_escalation=options.force_escalation,
                )
            return convert.video_result_to_pb(result)
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception as err:  # noqa: BLE001 - every failure becomes a status
            failure = status_for(err, options.request_id or "(none)", deadline_s)
            code = failure.code
            await context.abort(failure.code, failure.message)
            raise  # unreachable: abort raises
        finally:
            self._recorder.record(self._policy_label(options.policy_id), code, result, caller, options.metadata)

    async def _read_video(self, requests: AsyncIterator[pb.ModerateVideoRequest]) -> tuple[pb.VideoOptions, bytes]:
        """The options message, then the file's chunks, joined; refused as soon as they pass max_video_bytes."""
        try:
            first = await anext(requests)
        except StopAsyncIteration:
            raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT, "no messages: send the options first, then the file in chunks") from None
        if first.WhichOneof("part") != "options":
            raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT, "the first message must carry options (policy, sample rate, request id)")
        options = first.options
        if len(options.request_id) > MAX_REQUEST_ID_LENGTH:
            raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT, f"request_id is longer than {MAX_REQUEST_ID_LENGTH} characters")
        check_policy_id(options.policy_id)
        chunks: list[bytes] = []
        total = 0
        async for message in requests:
            if message.WhichOneof("part") != "chunk":
                raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT, "only the first message may carry options; send the file in chunk messages")
            chunk = message.chunk
            total += len(chunk)
            if total > self._max_video_bytes:
                raise ServiceError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"the video is over {self._max_video_bytes:,} bytes (setting max_video_bytes); it was not read further",
                )
            chunks.append(chunk)
        if not total:
            raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT, "the video is empty; send the file's bytes in chunk messages after the options")
        return options, b"".join(chunks)

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
            check_policy_id(request.policy_id)
            served = registry.get(request.policy_id)
        except ServiceError as err:
            await context.abort(err.code, err.message)
        except PolicyNotFound as err:
            await context.abort(grpc.StatusCode.NOT_FOUND, status_message(str(err)))
        return convert.policy_to_pb(served, served.policy.id == registry.default_id)

