"""The moderation pipeline: decode -> embed and score -> decide, off the event loop.

Transport-free: the gRPC servicer and the CLI's offline commands both call it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

import torch

from moderation.signals.clip.batcher import MicroBatcher
from moderation.signals.clip.scorer import ClipScorer, FrameScores, PolicyTextIndex
from moderation.core.decision import Band, Decision, apply_verdict, clip_leans_violating, decide, review_at_least
from moderation.escalation.tier import (
    EscalationOutcome,
    EscalationRequest,
    EscalationStatus,
    EscalationTier,
    categories_to_escalate,
)
from moderation.core.decode import DecodedImage, DecodeLimits, decode_frames
from moderation.ops.metrics import ModerationMetrics
from moderation.policy.registry import PolicyRegistry, ServedPolicy
from moderation.policy.schema import Action, Policy
from moderation.state.embeddings import EmbeddingStore
from moderation.state.thumbnails import ThumbnailStore, make_thumbnail

log = logging.getLogger(__name__)
shadow_log = logging.getLogger("moderation.audit.shadow")


@dataclass(frozen=True, slots=True)
class StageTimings:
    decode_ms: float = 0.0
    embed_ms: float = 0.0
    decide_ms: float = 0.0
    escalation_ms: float = 0.0
    total_ms: float = 0.0


@dataclass(frozen=True, slots=True)
class FrameSample:
    """Which frames were scored, and per category the frame that set its score."""

    indices: tuple[int, ...] = (0,)
    total: int = 1
    deciding: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ModerationResult:
    request_id: str
    decision: Decision
    model_id: str
    timings: StageTimings
    escalation: EscalationOutcome = field(default_factory=EscalationOutcome)
    frames: FrameSample = field(default_factory=FrameSample)


class ModerationPipeline:
    def __init__(
        self,
        scorer: ClipScorer,
        registry: PolicyRegistry[PolicyTextIndex],
        limits: DecodeLimits,
        metrics: ModerationMetrics,
        decode_workers: int = 2,
        max_batch: int = 16,
        max_wait_ms: float = 0.0,
        max_queue: int = 128,
        store: EmbeddingStore | None = None,
        escalation: EscalationTier | None = None,
        thumbnails: ThumbnailStore | None = None,
    ):
        self.scorer = scorer
        self.escalation = escalation
        self.store = store
        self.thumbnails = thumbnails
        self._store_pool = ThreadPoolExecutor(1, thread_name_prefix="embedding-store")
        self.registry = registry
        self.limits = limits
        self.metrics = metrics
        # Host work (decode, preprocess, scoring, deciding) runs here, never on the event loop.
        self._host_pool = ThreadPoolExecutor(decode_workers, thread_name_prefix="host")
        # One model thread: torch parallelises inside an op; two callers would
        # only fight over the same cores. The batcher feeds it.
        self._model_pool = ThreadPoolExecutor(1, thread_name_prefix="model")
        self.batcher = MicroBatcher(
            scorer.embed_images,
            self._model_pool,
            metrics,
            max_batch=max_batch,
            max_wait_ms=max_wait_ms,
            max_queue=max_queue,
            allocate=scorer.batch_buffer,  # pinned on CUDA: the copy to the device does not block
        )

    def start(self) -> None:
        """Start the batch worker; call on the serving event loop."""
        self.batcher.start()

    def _decode_and_prepare(self, image: bytes) -> tuple[torch.Tensor, DecodedImage]:
        decoded = decode_frames(image, self.limits)
        return self.scorer.prepare(decoded), decoded

    async def moderate(
        self,
        image: bytes,
        policy_id: str = "",
        request_id: str = "",
        force_escalation: bool = False,
        deadline_s: float = 30.0,
    ) -> ModerationResult:
        """Raises PolicyNotFound, ImageRejected, Overloaded and DeadlinePassed."""
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        deadline = time.monotonic() + deadline_s
        # Look the policy up once: the request finishes on the version it started with.
        served, shadows = self.registry.with_shadows(policy_id)

        pixels, decoded_image = await loop.run_in_executor(self._host_pool, self._decode_and_prepare, image)
        decoded = time.perf_counter()
        # All sampled frames of an animation go through the model in one batch.
        embeddings = await self.batcher.embed(pixels, deadline)
        embedded = time.perf_counter()
        # Scoring, deciding and shadows are host work too: off the event loop.
        frame_scores, decision = await loop.run_in_executor(
            self._host_pool, self._score_and_decide, embeddings, decoded_image, served, shadows, request_id
        )
        decided = time.perf_counter()

        escalation_started = time.perf_counter()
        decision, escalation = await self._escalate(
            decision, served.policy, force_escalation, request_id, image, decoded_image, frame_scores.deciding, deadline
        )
        timings = StageTimings(
            decode_ms=(decoded - started) * 1e3,
            embed_ms=(embedded - decoded) * 1e3,
            decide_ms=(decided - embedded) * 1e3,
            escalation_ms=(time.perf_counter() - escalation_started) * 1e3,
            total_ms=(time.perf_counter() - started) * 1e3,
        )
        self._observe(decision, timings)
        frames = FrameSample(decoded_image.frame_indices, decoded_image.total_frames, frame_scores.deciding)
        return ModerationResult(request_id, decision, self.scorer.model_id, timings, escalation, frames)

    def _score_and_decide(
        self,
        embeddings: torch.Tensor,
        decoded: DecodedImage,
        served: ServedPolicy[PolicyTextIndex],
        shadows: tuple[ServedPolicy[PolicyTextIndex], ...],
        request_id: str,
    ) -> tuple[FrameScores, Decision]:
        frame_scores = self.scorer.score_frames(embeddings, decoded.frame_indices, served.compiled)
        decision = decide(frame_scores.scores, served.policy)
        self._observe_categories(decision)
        shadow_decisions = [self._evaluate_shadow(shadow, embeddings, decoded.frame_indices, decision, request_id) for shadow in shadows]
        if self.store is not None:
            self._record(request_id, decision, embeddings, decoded.frame_indices, frame_scores.deciding)
        if self.thumbnails is not None and any(d.action is not Action.ALLOW for d in (decision, *shadow_decisions)):
            self._keep_thumbnail(request_id, decision, decoded, frame_scores.deciding)
        return frame_scores, decision

    def _evaluate_shadow(
        self, shadow: ServedPolicy[PolicyTextIndex], embeddings: torch.Tensor, frame_indices: tuple[int, ...], active: Decision, request_id: str
    ) -> Decision:
        """Score the same embeddings under a shadow policy; its decision goes to metrics and the audit log only."""
        scores = self.scorer.score_frames(embeddings, frame_indices, shadow.compiled).scores
        decision = decide(scores, shadow.policy)
        self.metrics.count_shadow_decision(active.policy_id, shadow.policy.id, decision.policy_version, decision.action.value)
        active_actions = {c.category_id: c.action for c in active.categories}
        disagreements = [c.category_id for c in decision.categories if active_actions.get(c.category_id, c.action) is not c.action]
        for category_id in disagreements:
            self.metrics.count_shadow_disagreement(active.policy_id, shadow.policy.id, decision.policy_version, category_id)
        shadow_log.info(
            "shadow decision",
            extra={
                "fields": {
                    "request_id": request_id,
                    "policy_id": active.policy_id,
                    "policy_version": active.policy_version,
                    "action": active.action.value,
                    "shadow_policy_id": decision.policy_id,
                    "shadow_policy_version": decision.policy_version,
                    "shadow_action": decision.action.value,
                    "disagreements": disagreements,
                    # Per category: [active score, shadow score] and [active action, shadow action].
                    "scores": _pairs({c.category_id: round(c.score, 4) for c in active.categories}, {c.category_id: round(c.score, 4) for c in decision.categories}),
                    "actions": _pairs({c.category_id: c.action.value for c in active.categories}, {c.category_id: c.action.value for c in decision.categories}),
                }
            },
        )
        return decision

    def _keep_thumbnail(self, request_id: str, decision: Decision, decoded: DecodedImage, deciding: dict[str, int]) -> None:
        """A small JPEG of the deciding frame for reviewers (opt-in); made here, written off the event loop."""
        top = max(decision.categories, key=lambda c: c.score)
        frame = decoded.frames[decoded.frame_indices.index(deciding.get(top.category_id, decoded.frame_indices[0]))]
        try:
            jpeg = make_thumbnail(frame, self.thumbnails.max_px)
        except (OSError, ValueError) as error:  # a thumbnail never fails the request
            log.warning("could not make a thumbnail for request %s: %s", request_id, error)
            return
        future = self._store_pool.submit(self.thumbnails.save, request_id, jpeg)
        future.add_done_callback(_log_thumbnail_failure)

    def _record(
        self, request_id: str, decision: Decision, embeddings: torch.Tensor, frame_indices: tuple[int, ...], deciding: dict[str, int]
    ) -> None:
        """Keep the embedding (never the image) for retroactive re-scoring, off the event loop."""
        # For animations, the frame behind the highest-scoring category stands for the image.
        top = max(decision.categories, key=lambda c: c.score)
        row = frame_indices.index(deciding.get(top.category_id, frame_indices[0]))
        vector = embeddings[row].numpy().copy()  # the encoder contract: float32 on the CPU
        self._store_pool.submit(
            self.store.record, request_id, time.time(), decision.policy_id, decision.policy_version, decision.action.value, vector, self.scorer.model_id
        )

    async def _escalate(
        self,
        decision: Decision,
        policy: Policy,
        forced: bool,
        request_id: str,
        image: bytes,
        decoded: DecodedImage,
        deciding: dict[str, int],
        deadline: float,
    ) -> tuple[Decision, EscalationOutcome]:
        borderline = [c.category_id for c in decision.borderline]
        category_ids = categories_to_escalate(borderline, [c.id for c in policy.categories], forced)
        if not category_ids:
            return decision, EscalationOutcome(EscalationStatus.NOT_NEEDED)
        if self.escalation is None:
            return decision, EscalationOutcome(EscalationStatus.DISABLED, "no explainer is configured; the CLIP decision stands")
        # The explainer sees the frame that made the first escalated category borderline.
        frame = decoded.frames[decoded.frame_indices.index(deciding.get(category_ids[0], decoded.frame_indices[0]))]
        request = EscalationRequest(request_id, image, frame, policy, category_ids, frame_index=deciding.get(category_ids[0], decoded.frame_indices[0]))
        outcome = await self.escalation.escalate(request, deadline - time.monotonic())
        if outcome.verdict is None:
            # No second opinion: a human looks at it. Never ALLOW by default.
            return review_at_least(decision, f"Escalation {outcome.status.value}: {outcome.reason}"), outcome
        verdict = outcome.verdict
        clip_view = next(c for c in decision.categories if c.category_id == verdict.category_id)
        agrees = clip_leans_violating(clip_view) == verdict.violates
        self.metrics.tier_agreement.labels(policy.id, verdict.category_id, "agree" if agrees else "disagree").inc()
        decision, changed = apply_verdict(decision, policy, verdict.category_id, verdict.violates, verdict.clause_id)
        return decision, replace(outcome, agrees_with_clip=agrees, changed_action=changed)

    def _observe(self, decision: Decision, timings: StageTimings) -> None:
        for stage in ("decode", "embed", "decide", "total"):
            self.metrics.stage_seconds.labels(stage).observe(getattr(timings, f"{stage}_ms") / 1e3)

    def _observe_categories(self, decision: Decision) -> None:
        """CLIP's scores and bands, per category: in the host pool, off the event loop (two series per category)."""
        m = self.metrics
        for c in decision.categories:
            m.category_score.labels(decision.policy_id, c.category_id).observe(c.score)
            m.decisions.labels(decision.policy_id, c.category_id, c.band.value).inc()

    async def close(self) -> None:
        await self.batcher.stop()
        if self.escalation is not None:
            await self.escalation.close()
        self._host_pool.shutdown(wait=False, cancel_futures=True)
        self._model_pool.shutdown(wait=False, cancel_futures=True)
        self._store_pool.shutdown(wait=True)
        if self.store is not None:
            self.store.close()


def _pairs(active: dict[str, object], shadow: dict[str, object]) -> dict[str, list[object]]:
    """category id -> [active, shadow]; None on the side of a policy without that category."""
    return {cid: [active.get(cid), shadow.get(cid)] for cid in dict.fromkeys([*active, *shadow])}


def _log_thumbnail_failure(future) -> None:  # noqa: ANN001 - concurrent.futures.Future
    if not future.cancelled() and future.exception() is not None:
        log.warning("could not write a thumbnail: %s", future.exception())


__all__ = ["Band", "EscalationOutcome", "EscalationStatus", "ModerationPipeline", "ModerationResult", "StageTimings"]
