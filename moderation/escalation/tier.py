"""The escalation tier: bounded, budgeted, timed access to the explainer.

Whatever happens here, a request gets an answer: COMPLETED with a verdict, or
TIMED_OUT / SHED / FAILED with a reason, and the caller's decision then stays
where CLIP put it (REVIEW for borderline cases), never ALLOW by default.

Bounds, in the order a request meets them:
  circuit breaker  after `failure_threshold` consecutive failures or timeouts the
                   explainer is not called for `cooldown_s`; then one trial call
  budget           a token bucket of `budget_per_minute` escalations
  queue            at most `max_waiting` requests wait for a free slot
  concurrency      at most `max_concurrent` explanations run at once
  timeout          each explanation gets min(timeout_s, the request's time left)
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

from PIL import Image

from moderation.metrics import ModerationMetrics
from moderation.policy.schema import Policy

log = logging.getLogger(__name__)


class EscalationStatus(str, enum.Enum):
    NOT_NEEDED = "NOT_NEEDED"
    COMPLETED = "COMPLETED"
    TIMED_OUT = "TIMED_OUT"
    SHED = "SHED"
    FAILED = "FAILED"
    DISABLED = "DISABLED"


@dataclass(frozen=True, slots=True)
class Verdict:
    violates: bool
    category_id: str
    clause_id: str
    rationale: str
    confidence: float
    model_id: str
    generated_tokens: int


@dataclass(frozen=True, slots=True)
class EscalationRequest:
    request_id: str
    image: bytes  # as the caller sent it (the remote explainer decodes it itself)
    frame: Image.Image  # the decoded frame, for the in-process explainer
    policy: Policy
    category_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class EscalationOutcome:
    status: EscalationStatus = EscalationStatus.NOT_NEEDED
    reason: str = ""
    verdict: Verdict | None = None
    latency_ms: float = 0.0
    agrees_with_clip: bool = False
    changed_action: bool = False


class ExplainerUnavailable(RuntimeError):
    """The explainer could not answer (remote down, invalid verdict, ...): FAILED."""


class ExplainerBackend(Protocol):
    model_id: str

    async def explain(self, request: EscalationRequest, timeout_s: float) -> Verdict: ...


class InProcessExplainer:
    """Runs `moderation.escalation.explainer.Explainer` in its own thread, beside the CLIP model."""

    def __init__(self, explainer, max_new_tokens: int = 96):  # noqa: ANN001 - Explainer, imported lazily (transformers)
        self._explainer = explainer
        self._max_new_tokens = max_new_tokens
        self.model_id = explainer.info.model_id
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="explainer")
        self._running: asyncio.Future[Verdict] | None = None

    def _explain(self, request: EscalationRequest) -> Verdict:
        from moderation.escalation.explainer import ExplanationFailed

        instruction = request.policy.escalation.instruction
        try:
            result = self._explainer.explain(request.frame, request.policy, request.category_ids, instruction, self._max_new_tokens)
        except ExplanationFailed as err:
            raise ExplainerUnavailable(str(err)) from err
        v = result.verdict
        return Verdict(v.violates, v.category_id, v.clause_id, v.rationale, v.confidence, self.model_id, result.generated_tokens)

    async def explain(self, request: EscalationRequest, timeout_s: float) -> Verdict:
        # A timed-out explanation cannot be interrupted inside torch; until it ends
        # the thread is taken, and queueing behind it would only time out too.
        if self._running is not None and not self._running.done():
            raise ExplainerUnavailable("the explainer is still finishing an explanation that timed out")
        self._running = asyncio.get_running_loop().run_in_executor(self._pool, self._explain, request)
        # shield: a timeout answers the caller now; the thread finishes its work.
        return await asyncio.wait_for(asyncio.shield(self._running), timeout_s)

    async def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class RemoteExplainer:
    """Calls `moderation explain-serve` (ExplainerService) with the request's deadline."""

    def __init__(self, target: str, credentials=None):  # noqa: ANN001 - grpc.ChannelCredentials
        import grpc

        self._grpc = grpc
        self._target = target
        self._credentials = credentials
        self._channel = None
        self._stub = None
        self.model_id = f"remote:{target}"

    def _connect(self):  # noqa: ANN202
        # Created on first use: a grpc.aio channel belongs to the event loop that
        # creates it, and the tier is built in a worker thread at start-up.
        if self._stub is None:
            from moderation.v1 import moderation_pb2_grpc as pb_grpc

            options = [("grpc.max_send_message_length", 256 * 1024 * 1024)]
            aio = self._grpc.aio
            self._channel = (
                aio.secure_channel(self._target, self._credentials, options=options)
                if self._credentials
                else aio.insecure_channel(self._target, options=options)
            )
            self._stub = pb_grpc.ExplainerServiceStub(self._channel)
        return self._stub

    async def explain(self, request: EscalationRequest, timeout_s: float) -> Verdict:
        from moderation.v1 import moderation_pb2 as pb

        message = pb.ExplainRequest(
            request_id=request.request_id,
            image=request.image,
            policy_id=request.policy.id,
            policy_version=request.policy.version,
            category_ids=list(request.category_ids),
        )
        try:
            reply = await self._connect().Explain(message, timeout=timeout_s)
        except self._grpc.aio.AioRpcError as err:
            if err.code() == self._grpc.StatusCode.DEADLINE_EXCEEDED:
                raise TimeoutError("the remote explainer did not answer in time") from err
            raise ExplainerUnavailable(f"remote explainer: {err.code().name}: {err.details()}") from err
        if reply.category_id not in request.category_ids or reply.clause_id != request.policy.category(reply.category_id).clause.id:
            raise ExplainerUnavailable(f"remote explainer cited {reply.category_id!r}/{reply.clause_id!r}, which is not an escalated clause")
        return Verdict(reply.violates, reply.category_id, reply.clause_id, reply.rationale, reply.confidence, reply.model, reply.generated_tokens)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()


class TokenBucket:
    def __init__(self, per_minute: float):
        self.capacity = max(per_minute, 1.0)
        self.rate = per_minute / 60.0
        self.tokens = self.capacity
        self.updated = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class CircuitBreaker:
    def __init__(self, failure_threshold: int, cooldown_s: float):
        self.failure_threshold = failure_threshold
        self.cooldown_s = cooldown_s
        self.failures = 0
        self.open_until = 0.0
        self.trial_running = False

    def allow(self) -> bool:
        if self.failures < self.failure_threshold:
            return True
        if time.monotonic() < self.open_until or self.trial_running:
            return False
        self.trial_running = True  # half-open: one call tries the explainer again
        return True

    def record(self, success: bool) -> None:
        self.trial_running = False
        if success:
            self.failures = 0
            return
        self.failures += 1
        if self.failures >= self.failure_threshold:
            self.open_until = time.monotonic() + self.cooldown_s


class EscalationTier:
    def __init__(
        self,
        backend: ExplainerBackend,
        metrics: ModerationMetrics,
        max_concurrent: int = 1,
        max_waiting: int = 4,
        timeout_s: float = 20.0,
        budget_per_minute: float = 60.0,
        failure_threshold: int = 3,
        cooldown_s: float = 30.0,
    ):
        self.backend = backend
        self.metrics = metrics
        self.timeout_s = timeout_s
        self.max_waiting = max_waiting
        self._slots = asyncio.Semaphore(max_concurrent)
        self._waiting = 0
        self._budget = TokenBucket(budget_per_minute)
        self._breaker = CircuitBreaker(failure_threshold, cooldown_s)

    @property
    def model_id(self) -> str:
        return self.backend.model_id

    async def escalate(self, request: EscalationRequest, time_left_s: float) -> EscalationOutcome:
        outcome = await self._escalate(request, time_left_s)
        self.metrics.escalations.labels(request.policy.id, outcome.status.value).inc()
        self.metrics.escalation_seconds.labels(outcome.status.value).observe(outcome.latency_ms / 1e3)
        if outcome.verdict is not None:
            self.metrics.escalation_tokens.observe(outcome.verdict.generated_tokens)
        return outcome

    async def _escalate(self, request: EscalationRequest, time_left_s: float) -> EscalationOutcome:
        if not self._breaker.allow():
            return EscalationOutcome(EscalationStatus.SHED, f"the explainer failed {self._breaker.failures} times in a row; not calling it for now")
        if not self._budget.take():
            self._breaker.trial_running = False
            return EscalationOutcome(EscalationStatus.SHED, "the escalation budget is used up for now (setting explainer_budget_per_minute)")
        started = time.monotonic()
        timeout = min(self.timeout_s, time_left_s)
        if not self._slots.locked():
            await self._slots.acquire()  # a free slot: taken without yielding
        else:
            if self._waiting >= self.max_waiting:
                self._breaker.trial_running = False
                return EscalationOutcome(
                    EscalationStatus.SHED, f"{self._waiting} escalations already wait for the explainer (setting explainer_max_waiting)"
                )
            self._waiting += 1
            self.metrics.escalation_queue_depth.set(self._waiting)
            try:
                await asyncio.wait_for(self._slots.acquire(), timeout)
            except TimeoutError:
                self._breaker.trial_running = False
                return EscalationOutcome(EscalationStatus.TIMED_OUT, "no explainer slot became free within the time left", latency_ms=_ms(started))
            finally:
                self._waiting -= 1
                self.metrics.escalation_queue_depth.set(self._waiting)
        try:
            remaining = timeout - (time.monotonic() - started)
            verdict = await self.backend.explain(request, max(remaining, 0.001))
        except TimeoutError:
            self._breaker.record(False)
            return EscalationOutcome(EscalationStatus.TIMED_OUT, f"the explainer did not answer within {timeout:.1f} s", latency_ms=_ms(started))
        except Exception as err:  # noqa: BLE001 - any explainer failure falls back to REVIEW
            self._breaker.record(False)
            log.warning("escalation of %s failed: %s", request.request_id, err)
            return EscalationOutcome(EscalationStatus.FAILED, f"the explainer failed: {err}"[:300], latency_ms=_ms(started))
        finally:
            self._slots.release()
        self._breaker.record(True)
        return EscalationOutcome(EscalationStatus.COMPLETED, verdict=verdict, latency_ms=_ms(started))

    async def close(self) -> None:
        await self.backend.close()


def _ms(started: float) -> float:
    return (time.monotonic() - started) * 1e3


def categories_to_escalate(borderline: Sequence[str], all_categories: Sequence[str], forced: bool) -> tuple[str, ...]:
    """The borderline categories; all of them when escalation is forced on a clear-cut image."""
    return tuple(borderline) if borderline else (tuple(all_categories) if forced else ())
