"""Explainer backends behind the escalation tier: SmolVLM2 in this process, or ExplainerService over gRPC.

The tier (tier.py) owns every bound (breaker, budget, queue, slots, timeout);
a backend only answers one request within the time it is given.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from moderation.escalation.tier import Answer, EscalationRequest, Explanation, ExplainerUnavailable, ReviewerQuestion
from moderation.escalation.verdict import ExplainerVerdict


class InProcessExplainer:
    """Runs `moderation.escalation.explainer.Explainer` in its own thread, beside the CLIP model."""

    def __init__(self, explainer, max_new_tokens: int = 96):  # noqa: ANN001 - Explainer, imported lazily (transformers)
        self._explainer = explainer
        self._max_new_tokens = max_new_tokens
        self.model_id = explainer.info.model_id
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="explainer")
        self._running: asyncio.Future[Explanation] | None = None

    def _explain(self, request: EscalationRequest) -> Explanation:
        from moderation.escalation.explainer import ExplanationFailed

        instruction = request.policy.escalation.instruction
        try:
            result = self._explainer.explain(request.frame, request.policy, request.category_ids, instruction, self._max_new_tokens)
        except ExplanationFailed as err:
            raise ExplainerUnavailable(str(err)) from err
        # The pipeline decoded the frame already: the one it hands over is the one judged.
        return Explanation(result.verdict, self.model_id, result.generated_tokens, request.frame_index)

    def _ask(self, question: ReviewerQuestion) -> Answer:
        from moderation.escalation.explainer import ExplanationFailed

        try:
            result = self._explainer.answer(question.frame, question.question, question.policy, question.category_id)
        except ExplanationFailed as err:
            raise ExplainerUnavailable(str(err)) from err
        return Answer(result.text, self.model_id, result.generated_tokens)

    async def explain(self, request: EscalationRequest, timeout_s: float) -> Explanation:
        return await self._run(self._explain, request, timeout_s)

    async def ask(self, question: ReviewerQuestion, timeout_s: float) -> Answer:
        return await self._run(self._ask, question, timeout_s)

    async def _run(self, work, argument, timeout_s: float):  # noqa: ANN001, ANN202 - Explanation or Answer
        # A timed-out generation cannot be interrupted inside torch; until it ends
        # the thread is taken, and queueing behind it would only time out too.
        if self._running is not None and not self._running.done():
            raise ExplainerUnavailable("the explainer is still finishing an explanation that timed out")
        self._running = asyncio.get_running_loop().run_in_executor(self._pool, work, argument)
        # shield: a timeout answers the caller now; the thread finishes its work.
        return await asyncio.wait_for(asyncio.shield(self._running), timeout_s)

    async def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class RemoteExplainer:
    """Calls `moderation explain-serve` (ExplainerService) with the request's deadline.

    `root_certificates` turns TLS on (and with `private_key`/`certificate_chain`,
    mutual TLS); `server_name` is the name expected in the explainer's certificate
    when it differs from the target's host; `token` is sent as
    `authorization: Bearer <token>` on every call.
    """

    def __init__(
        self,
        target: str,
        root_certificates: bytes | None = None,
        private_key: bytes | None = None,
        certificate_chain: bytes | None = None,
        server_name: str | None = None,
        token: str | None = None,
    ):
        import grpc

        self._grpc = grpc
        self._target = target
        self._credentials = (
            grpc.ssl_channel_credentials(root_certificates, private_key, certificate_chain) if root_certificates is not None else None
        )
        self._server_name = server_name
        self._metadata = (("authorization", f"Bearer {token}"),) if token else None
        self._channel = None
        self._stub = None
        self.model_id = f"remote:{target}"

    @property
    def secure(self) -> bool:
        return self._credentials is not None

    def _connect(self):  # noqa: ANN202
        # Created on first use: a grpc.aio channel belongs to the event loop that
        # creates it, and the tier is built in a worker thread at start-up.
        if self._stub is None:
            from moderation.v1 import moderation_pb2_grpc as pb_grpc

            options: list[tuple[str, object]] = [("grpc.max_send_message_length", 256 * 1024 * 1024)]
            if self._server_name:
                options.append(("grpc.ssl_target_name_override", self._server_name))
            aio = self._grpc.aio
            self._channel = (
                aio.secure_channel(self._target, self._credentials, options=options)
                if self._credentials
                else aio.insecure_channel(self._target, options=options)
            )
            self._stub = pb_grpc.ExplainerServiceStub(self._channel)
        return self._stub

    async def explain(self, request: EscalationRequest, timeout_s: float) -> Explanation:
        from moderation.v1 import moderation_pb2 as pb

        message = pb.ExplainRequest(
            request_id=request.request_id,
            image=request.image,
            policy_id=request.policy.id,
            policy_version=request.policy.version,
            category_ids=list(request.category_ids),
            frame_index=request.frame_index,
        )
        reply = await self._call("Explain", message, timeout_s)
        if reply.category_id not in request.category_ids or reply.clause_id != request.policy.category(reply.category_id).clause.id:
            raise ExplainerUnavailable(f"remote explainer cited {reply.category_id!r}/{reply.clause_id!r}, which is not an escalated clause")
        if reply.frame_index != request.frame_index:
            # An explainer from before frame_index existed judges frame 0 whatever it is sent.
            raise ExplainerUnavailable(
                f"remote explainer judged frame {reply.frame_index}, not the deciding frame {request.frame_index}; upgrade explain-serve"
            )
        verdict = ExplainerVerdict(reply.violates, reply.category_id, reply.clause_id, reply.rationale, reply.confidence)
        return Explanation(verdict, reply.model, reply.generated_tokens, reply.frame_index)

    async def ask(self, question: ReviewerQuestion, timeout_s: float) -> Answer:
        from moderation.v1 import moderation_pb2 as pb

        message = pb.AskRequest(
            case_id=question.case_id,
            image=question.image,
            policy_id=question.policy.id,
            policy_version=question.policy.version,
            category_id=question.category_id or "",
            question=question.question,
        )
        reply = await self._call("Ask", message, timeout_s)
        return Answer(reply.answer, reply.model, reply.generated_tokens)

    async def _call(self, method: str, message, timeout_s: float):  # noqa: ANN001, ANN202 - protobuf messages
        try:
            return await getattr(self._connect(), method)(message, timeout=timeout_s, metadata=self._metadata)
        except self._grpc.aio.AioRpcError as err:
            if err.code() == self._grpc.StatusCode.DEADLINE_EXCEEDED:
                raise TimeoutError("the remote explainer did not answer in time") from err
            raise ExplainerUnavailable(f"remote explainer: {err.code().name}: {err.details()}") from err

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
