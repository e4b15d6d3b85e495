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

Reviewers' questions (`ask`, answer.py) go through the same bounds: they share the
explainer, its budget and its breaker with escalations.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from PIL import Image

from moderation.escalation.verdict import ExplainerVerdict
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
class Explanation:
    """A backend's answer: the verdict and which model produced it, at what cost."""

    verdict: ExplainerVerdict
    model_id: str
    generated_tokens: int
    frame_index: int = 0  # the frame the backend judged, as it reports it


@dataclass(frozen=True, slots=True)
class EscalationRequest:
    request_id: str
    image: bytes  # as the caller sent it (the remote explainer decodes it itself)
    frame: Image.Image  # the decoded frame, for the in-process explainer
    policy: Policy
    category_ids: tuple[str, ...]
    # The animation frame `frame` is (the one that set the first category's score): the
    # remote explainer decodes this frame itself, so a harmless first frame cannot stand in.
    frame_index: int = 0


@dataclass(frozen=True, slots=True)
class EscalationOutcome:
    status: EscalationStatus = EscalationStatus.NOT_NEEDED
    reason: str = ""
    verdict: ExplainerVerdict | None = None
    model_id: str = ""  # the explainer that answered (COMPLETED only)
    generated_tokens: int = 0
    frame_index: int = 0  # the frame the explainer judged (COMPLETED only)
    latency_ms: float = 0.0
    agrees_with_clip: bool = False
    changed_action: bool = False


@dataclass(frozen=True, slots=True)
class ReviewerQuestion:
    """A reviewer's question about a case's image (answer.py), asked through the tier like an escalation."""

    case_id: str  # for logs only
    image: bytes  # encoded, for the remote explainer (it decodes it itself)
    frame: Image.Image  # decoded, for the in-process explainer
    policy: Policy
    category_id: str | None  # the case's category: its clause is given as context
    question: str


@dataclass(frozen=True, slots=True)
class Answer:
    text: str
    model_id: str
    generated_tokens: int


@dataclass(frozen=True, slots=True)
class AnswerOutcome:
    """COMPLETED with an advisory answer, or SHED / TIMED_OUT / FAILED with the reason."""

    status: EscalationStatus
    reason: str = ""
    answer: Answer | None = None
    latency_ms: float = 0.0


T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class _Attempt(Generic[T]):
    status: EscalationStatus
    reason: str = ""
    result: T | None = None
    latency_ms: float = 0.0


class ExplainerUnavailable(RuntimeError):
    """The explainer could not answer (remote down, invalid verdict, ...): FAILED."""


class ExplainerBackend(Protocol):
    """In-process SmolVLM2 or a remote ExplainerService (moderation/escalation/backends.py)."""

    model_id: str

    async def explain(self, request: EscalationRequest, timeout_s: float) -> Explanation: ...

    async def ask(self, question: ReviewerQuestion, timeout_s: float) -> Answer: ...

    async def close(self) -> None: ...


def _ignore_outcome(policy_id: str, outcome: EscalationOutcome) -> None:
    pass


def _ignore_depth(waiting: int) -> None:
    pass


@dataclass(frozen=True, slots=True)
class EscalationMetrics:
    """What the tier reports, as callables: whoever builds it (runtime.py) wires them to Prometheus."""

    outcome: Callable[[str, EscalationOutcome], None] = _ignore_outcome  # policy id, every escalation's outcome
    queue_depth: Callable[[int], None] = _ignore_depth  # escalations waiting for a slot, after every change


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

    def release_trial(self) -> None:
        """The call allow() admitted never reached the explainer (shed or queued out): let another try."""
        self.trial_running = False

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
        metrics: EscalationMetrics = EscalationMetrics(),
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
        self.metrics.outcome(request.policy.id, outcome)
        return outcome

    async def _escalate(self, request: EscalationRequest, time_left_s: float) -> EscalationOutcome:
        attempt = await self._call(lambda timeout: self.backend.explain(request, timeout), time_left_s, request.request_id)
        explanation = attempt.result
        if explanation is None:
            return EscalationOutcome(attempt.status, attempt.reason, latency_ms=attempt.latency_ms)
        return EscalationOutcome(
            EscalationStatus.COMPLETED,
            verdict=explanation.verdict,
            model_id=explanation.model_id,
            generated_tokens=explanation.generated_tokens,
            frame_index=explanation.frame_index,
            latency_ms=attempt.latency_ms,
        )

    async def ask(self, question: ReviewerQuestion, time_left_s: float) -> AnswerOutcome:
        """A reviewer's question, under the same bounds as escalations (breaker, budget, queue, slots, timeout)."""
        attempt = await self._call(lambda timeout: self.backend.ask(question, timeout), time_left_s, f"question on {question.case_id}")
        return AnswerOutcome(attempt.status, attempt.reason, attempt.result, attempt.latency_ms)

    async def _call(self, call: Callable[[float], Awaitable[T]], time_left_s: float, what: str) -> _Attempt[T]:
        """`call(timeout_s)` on the backend once every bound admits it; COMPLETED with its result, or why not."""
        if not self._breaker.allow():
            return _Attempt(EscalationStatus.SHED, f"the explainer failed {self._breaker.failures} times in a row; not calling it for now")
        if not self._budget.take():
            self._breaker.release_trial()
            return _Attempt(EscalationStatus.SHED, "the escalation budget is used up for now (setting explainer_budget_per_minute)")
        started = time.monotonic()
        timeout = min(self.timeout_s, time_left_s)
        if not self._slots.locked():
            await self._slots.acquire()  # a free slot: taken without yielding
        else:
            if self._waiting >= self.max_waiting:
                self._breaker.release_trial()
                return _Attempt(
                    EscalationStatus.SHED, f"{self._waiting} escalations already wait for the explainer (setting explainer_max_waiting)"
                )
            self._waiting += 1
            self.metrics.queue_depth(self._waiting)
            try:
                await asyncio.wait_for(self._slots.acquire(), timeout)
            except TimeoutError:
                self._breaker.release_trial()
                return _Attempt(EscalationStatus.TIMED_OUT, "no explainer slot became free within the time left", latency_ms=_ms(started))
            finally:
                self._waiting -= 1
                self.metrics.queue_depth(self._waiting)
        try:
            remaining = timeout - (time.monotonic() - started)
            result = await call(max(remaining, 0.001))
        except TimeoutError:
            self._breaker.record(False)
            return _Attempt(EscalationStatus.TIMED_OUT, f"the explainer did not answer within {timeout:.1f} s", latency_ms=_ms(started))
        except Exception as err:  # noqa: BLE001 - any explainer failure falls back to REVIEW
            self._breaker.record(False)
            log.warning("escalation of %s failed: %s", what, err)
            return _Attempt(EscalationStatus.FAILED, f"the explainer failed: {err}"[:300], latency_ms=_ms(started))
        finally:
            self._slots.release()
        self._breaker.record(True)
        return _Attempt(EscalationStatus.COMPLETED, result=result, latency_ms=_ms(started))

    async def close(self) -> None:
        await self.backend.close()


def _ms(started: float) -> float:
    return (time.monotonic() - started) * 1e3


def categories_to_escalate(borderline: Sequence[str], all_categories: Sequence[str], forced: bool) -> tuple[str, ...]:
    """The borderline categories; all of them when escalation is forced on a clear-cut image."""
    return tuple(borderline) if borderline else (tuple(all_categories) if forced else ())
