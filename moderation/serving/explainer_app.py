"""`moderation explain-serve`: the SmolVLM2 explainer as its own gRPC service (ExplainerService).

The scorer calls it with a deadline when `explainer_mode` is remote; in
Kubernetes it runs as a separate Deployment that only the scorer may reach.
It serves the same policy directory as the scorer, and refuses a request for a
policy version it does not hold, so a rationale never cites another version.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import grpc
from PIL import Image

from moderation.ops.config import Settings
from moderation.core.decode import DecodeLimits, ImageRejected, decode_frames
from moderation.policy.registry import PolicyNotFound, PolicyRegistry
from moderation.runtime import StartupCancellation, decode_limits, load_explainer, resolve_device
from moderation.serving.builder import ServerBuilder
from moderation.serving.policy_reload import PolicyReloader
from moderation.serving.limits import MAX_POLICY_ID_CHARS, echo, status_message
from moderation.v1 import moderation_pb2 as pb
from moderation.v1 import moderation_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["ExplainerService"].full_name


def decode_frame(data: bytes, limits: DecodeLimits, index: int) -> Image.Image:
    """Frame `index` of an animation (the still image for 0), decoded within the scorer's limits.

    The scorer judged one frame of the animation; the explainer must see that frame,
    not the first. core/decode.py reaches it frame by frame, each charged its real
    canvas size against the animation's pixel budget, as the scorer's own decode is.
    """
    return decode_frames(data, limits, frames=(index,)).frames[0]


class ExplainerServicer(pb_grpc.ExplainerServiceServicer):
    """Loading, draining and the bound on waiting calls are the admission interceptor's (interceptors.py)."""

    def __init__(self, limits: DecodeLimits, max_new_tokens: int):
        # Both set once the model and the policies have loaded; the admission interceptor refuses calls before.
        self.explainer = None
        self.registry: PolicyRegistry | None = None
        self._limits = limits
        self._max_new_tokens = max_new_tokens
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="explainer")

    def _explain(self, request: pb.ExplainRequest, policy):  # noqa: ANN001, ANN202
        frame = decode_frame(request.image, self._limits, request.frame_index)
        log.info("explaining request %s: frame %d", echo(request.request_id), request.frame_index)
        return self.explainer.explain(frame, policy, list(request.category_ids), policy.escalation.instruction, self._max_new_tokens)

    async def _served_policy(self, policy_id: str, version: str, context: grpc.aio.ServicerContext):  # noqa: ANN202
        """The policy the request names, at the version it names, or the call aborted with why not."""
        if len(policy_id) > MAX_POLICY_ID_CHARS:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no policy {echo(policy_id)!r} is served")
        try:
            policy = self.registry.get(policy_id).policy
        except PolicyNotFound as err:
            await context.abort(grpc.StatusCode.NOT_FOUND, status_message(str(err)))
        if policy.version != version:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"the explainer serves {policy.id}@{policy.version}, not version {echo(version)!r}; "
                "retry after the policy rollout",
            )
        return policy

    def _ask(self, request: pb.AskRequest, policy):  # noqa: ANN001, ANN202
        frame = decode_frame(request.image, self._limits, 0)
        log.info("answering a reviewer's question on case %s", echo(request.case_id))
        return self.explainer.answer(frame, request.question, policy, request.category_id or None)

    async def Ask(self, request: pb.AskRequest, context: grpc.aio.ServicerContext) -> pb.AskResponse:
        from moderation.escalation.answer import InvalidQuestion, check_question
        from moderation.escalation.explainer import ExplanationFailed

        policy = await self._served_policy(request.policy_id, request.policy_version, context)
        if request.category_id and request.category_id not in {c.id for c in policy.categories}:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, status_message(f"category_id {echo(request.category_id)!r} is not a category of {policy.id}")
            )
        try:
            check_question(request.question)
        except InvalidQuestion as err:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"invalid question: {err}")
        started = time.perf_counter()
        try:
            result = await asyncio.get_running_loop().run_in_executor(self._pool, self._ask, request, policy)
        except ImageRejected as err:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"invalid image: {err}")
        except ExplanationFailed as err:
            await context.abort(grpc.StatusCode.INTERNAL, f"no valid answer: {err}")
        return pb.AskResponse(
            answer=result.text,
            model=self.explainer.info.model_id,
            generated_tokens=result.generated_tokens,
            latency_ms=(time.perf_counter() - started) * 1e3,
        )

    async def Explain(self, request: pb.ExplainRequest, context: grpc.aio.ServicerContext) -> pb.ExplainResponse:
        from moderation.escalation.explainer import ExplanationFailed

        policy = await self._served_policy(request.policy_id, request.policy_version, context)
        unknown = [c for c in request.category_ids if c not in {k.id for k in policy.categories}]
        if not request.category_ids or unknown:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                status_message(f"category_ids must name categories of {policy.id}; unknown: {[echo(c) for c in unknown[:8]]}"),
            )
        started = time.perf_counter()
        try:
            result = await asyncio.get_running_loop().run_in_executor(self._pool, self._explain, request, policy)
        except ImageRejected as err:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"invalid image: {err}")
        except ExplanationFailed as err:
            await context.abort(grpc.StatusCode.INTERNAL, f"no valid verdict: {err}")
        v = result.verdict
        return pb.ExplainResponse(
            violates=v.violates,
            category_id=v.category_id,
            clause_id=v.clause_id,
            rationale=v.rationale,
            confidence=v.confidence,
            model=self.explainer.info.model_id,
            generated_tokens=result.generated_tokens,
            latency_ms=(time.perf_counter() - started) * 1e3,
            frame_index=request.frame_index,
        )

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


@dataclass
class _Loaded:
    explainer: Any  # moderation.escalation.explainer.Explainer, imported lazily (transformers)
    registry: PolicyRegistry
    reloader: PolicyReloader


async def serve_explainer(settings: Settings) -> None:
    """Run the ExplainerService until SIGTERM or SIGINT."""
    # Calls beyond the running and waiting bounds get RESOURCE_EXHAUSTED at once; the scorer records FAILED.
    builder: ServerBuilder[_Loaded] = ServerBuilder(
        settings,
        SERVICE_NAME,
        limit=settings.explainer_max_concurrent + settings.explainer_max_waiting,
        loading_message="the explainer is still loading its model; retry shortly",
        options=[("grpc.max_receive_message_length", settings.grpc_max_message_bytes)],
    )
    # The scorer's limits (bytes, pixels, frames, the animation's pixel budget), so any frame
    # the scorer judged can be reached here; decoded in full (no JPEG draft), as the explainer reads it.
    servicer = ExplainerServicer(decode_limits(settings, image_size=None), settings.explainer_max_new_tokens)
    pb_grpc.add_ExplainerServiceServicer_to_server(servicer, builder.server)

    def load(cancellation: StartupCancellation) -> _Loaded:
        # The same policy files as the scorer, without text embeddings: only their clauses are read.
        registry: PolicyRegistry = PolicyRegistry(lambda policy, should_stop: None, model_id=None)
        reloader = builder.policy_reloader(registry, settings.explainer_model)
        reloader.load_now()
        cancellation.check()
        return _Loaded(load_explainer(settings, resolve_device(settings.device)), registry, reloader)

    async def attach(loaded: _Loaded) -> None:
        servicer.registry = loaded.registry
        servicer.explainer = loaded.explainer

    async def close(loaded: _Loaded) -> None:
        servicer.close()

    await builder.run("explainer", load, attach, close)
