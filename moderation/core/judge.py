"""The judging core: decode -> signals -> decide -> escalate, with the same settings for every caller.

The server's shell (moderation/serving/shell.py), `policy test` and `policy calibrate`
(moderation/offline/scoring.py), `compare` and the benchmarks all judge an image through
one JudgingCore built by `runtime.build_core` from Settings, so an image gets the same
decision whichever of them asks. Transport-free and pool-free: every step is a plain call,
and the caller decides where it runs (the shell puts decode and judge in its host pool and
the embedding in its micro-batcher; offline commands call them in turn).

    sample = core.decode(image)                     # bounded decode + the encoder's model input
    embeddings = <the encoder's forward pass>       # shell: batcher; offline: core.embed(samples)
    judgement = core.judge(sample, embeddings, served)   # every signal's evidence -> decide
    decision, outcome = await core.escalate(judgement, served.policy, ...)   # borderline only

Embeddings are opaque here (a torch tensor from the CLIP encoder): no torch, no grpc.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from moderation.core.decision import Decision, apply_verdict, clip_leans_violating, decide, review_at_least
from moderation.core.decode import DecodedImage, DecodeLimits, DecodeStopped, ImageRejected, decode_frames
from moderation.core.evidence import CategoryScores, Evidence, ForcedAction, KnownContentMatch
from moderation.core.signal import SampledFrames, Signal
from moderation.escalation.tier import (
    EscalationOutcome,
    EscalationRequest,
    EscalationStatus,
    EscalationTier,
    categories_to_escalate,
)
from moderation.policy.registry import ServedPolicy
from moderation.policy.schema import Policy


class FrameEncoder(Protocol):
    """The image side of the embedding model (ClipScorer): model input from frames, embeddings from input."""

    @property
    def model_id(self) -> str: ...

    def prepare(self, decoded: DecodedImage) -> Any: ...

    def embed_prepared(self, pixels: Sequence[Any]) -> list[Any]: ...


def _ignore_signal_time(signal: str, seconds: float) -> None:
    pass


def _ignore_agreement(policy_id: str, category_id: str, agrees: bool) -> None:
    pass


@dataclass(frozen=True, slots=True)
class CoreMetrics:
    """What the core reports, as callables (the shell wires them to Prometheus; offline callers need none)."""

    signal_seconds: Callable[[str, float], None] = _ignore_signal_time  # per signal and call
    tier_agreement: Callable[[str, str, bool], None] = _ignore_agreement  # policy, category, explainer agreed with CLIP


@dataclass(frozen=True, slots=True)
class Sample:
    """A decoded image and its frames prepared as the encoder's input."""

    decoded: DecodedImage
    pixels: Any
    prepared: Mapping[str, Any] = field(default_factory=dict)  # by signal name: what its `prepare` computed


@dataclass(frozen=True, slots=True)
class Judgement:
    """One image judged under one policy: the evidence, the decision, and per category the frame behind it."""

    decision: Decision
    evidence: tuple[Evidence, ...]
    deciding: dict[str, int]  # category id -> frame index (0 for still images)
    frames: SampledFrames

    def representative_row(self) -> int:
        """Which sampled frame stands for the image (stored embedding, thumbnail): the one behind the highest-scoring category."""
        indices = self.frames.decoded.frame_indices
        top = max(self.decision.categories, key=lambda c: c.score)
        return indices.index(self.deciding.get(top.category_id, indices[0]))

    def forced_matches(self) -> list[tuple[ForcedAction, KnownContentMatch]]:
        """Every bank match behind this judgement's forced actions, with the rule that forced it."""
        return [(item, match) for item in self.evidence if isinstance(item, ForcedAction) for match in item.matches]


class JudgingCore:
    def __init__(
        self,
        limits: DecodeLimits,
        encoder: FrameEncoder,
        signals: Sequence[Signal],
        escalation: EscalationTier | None = None,
        metrics: CoreMetrics = CoreMetrics(),
    ):
        self.limits = limits
        self.encoder = encoder
        self.signals = tuple(signals)
        self.escalation = escalation
        self._metrics = metrics

    @property
    def model_id(self) -> str:
        return self.encoder.model_id

    def decode(self, image: bytes, should_stop: Callable[[], bool] | None = None, prepare_signals: bool = True) -> Sample:
        """Raises ImageRejected (and DecodeStopped once `should_stop` says the caller is gone).

        Host work: bounded decode, then the encoder's preprocessing of every sampled frame and,
        with `prepare_signals`, each PreparingSignal's per-request work (the banks' hashes).
        """
        try:
            decoded = decode_frames(image, self.limits, should_stop=should_stop)
        except (ImageRejected, DecodeStopped) as error:
            # The traceback holds decode_frames' frames, and they hold the frames decoded so
            # far (up to max_image_pixels each). Through asyncio the exception sits in a
            # reference cycle that only the cyclic GC frees, and that counts objects, not
            # bytes: hostile GIFs grew the server by ~380 MB a call (bench/abuse.py). The
            # message is all a caller gets, so the traceback goes here.
            raise error.with_traceback(None) from None
        return self.prepare(image, decoded, prepare_signals)

    def prepare(self, data: bytes, decoded: DecodedImage, prepare_signals: bool = True) -> Sample:
        """Frames decoded elsewhere (a video's sampled frames) as a Sample: the encoder's input and each signal's `prepare`."""
        prepared = {}
        for signal in self.signals if prepare_signals else ():
            prepare = getattr(signal, "prepare", None)  # PreparingSignal: once per request, whatever the policies
            if prepare is not None:
                started = time.perf_counter()
                prepared[signal.name] = prepare(data, decoded)
                self._metrics.signal_seconds(f"{signal.name}_prepare", time.perf_counter() - started)
        return Sample(decoded, self.encoder.prepare(decoded), prepared)

    def embed(self, samples: Sequence[Sample]) -> list[Any]:
        """Embeddings of the samples' frames, in-process with shared forward passes (the shell uses its batcher instead)."""
        return self.encoder.embed_prepared([sample.pixels for sample in samples])

    def judge(self, sample: Sample, embeddings: Any, served: ServedPolicy[Any]) -> Judgement:
        """Every signal's evidence under `served`, combined by `decide`. Host work (a shadow policy is judged the same way)."""
        frames = SampledFrames(sample.decoded, embeddings, sample.prepared)
        evidence: list[Evidence] = []
        for signal in self.signals:
            started = time.perf_counter()
            evidence.extend(signal.evidence(frames, served))
            self._metrics.signal_seconds(signal.name, time.perf_counter() - started)
        decision = decide(evidence, served.policy)
        return Judgement(decision, tuple(evidence), deciding_frames(evidence, decision), frames)

    def judge_images(self, images: Sequence[bytes], served: ServedPolicy[Any]) -> list[Judgement | ImageRejected]:
        """Offline: judge many images, sharing forward passes; an image that cannot be decoded gets its ImageRejected."""
        decoded: list[Sample | ImageRejected] = []
        for image in images:
            try:
                decoded.append(self.decode(image))
            except ImageRejected as error:
                decoded.append(error)
        embeddings = iter(self.embed([item for item in decoded if isinstance(item, Sample)]))
        return [item if isinstance(item, ImageRejected) else self.judge(item, next(embeddings), served) for item in decoded]

    async def escalate(
        self,
        judgement: Judgement,
        policy: Policy,
        request_id: str,
        image: bytes,
        forced: bool,
        time_left_s: float,
        video_frames: tuple[tuple[int, Any], ...] = (),
    ) -> tuple[Decision, EscalationOutcome]:
        """The explainer's reading of a borderline (or forced) case; without an answer, at least REVIEW, never ALLOW.

        `video_frames` (time in ms, frame): a video segment around the deciding frame, for a backend that watches video.
        """
        decision = judgement.decision
        borderline = [c.category_id for c in decision.borderline]
        category_ids = categories_to_escalate(borderline, [c.id for c in policy.categories], forced)
        if not category_ids:
            return decision, EscalationOutcome(EscalationStatus.NOT_NEEDED)
        if self.escalation is None:
            return decision, EscalationOutcome(EscalationStatus.DISABLED, "no explainer is configured; the CLIP decision stands")
        # The explainer sees the frame that made the first escalated category borderline.
        decoded = judgement.frames.decoded
        frame_index = judgement.deciding.get(category_ids[0], decoded.frame_indices[0])
        frame = decoded.frames[decoded.frame_indices.index(frame_index)]
        # The frame's index travels too: a remote explainer re-decodes the bytes and must judge this frame.
        request = EscalationRequest(request_id, image, frame, policy, category_ids, frame_index=frame_index, frames=video_frames)
        outcome = await self.escalation.escalate(request, time_left_s)
        if outcome.verdict is None:
            # No second opinion: a human looks at it. Never ALLOW by default.
            return review_at_least(decision, f"Escalation {outcome.status.value}: {outcome.reason}"), outcome
        verdict = outcome.verdict
        clip_view = next(c for c in decision.categories if c.category_id == verdict.category_id)
        agrees = clip_leans_violating(clip_view) == verdict.violates
        self._metrics.tier_agreement(policy.id, verdict.category_id, agrees)
        decision, changed = apply_verdict(decision, policy, verdict.category_id, verdict.violates, verdict.clause_id)
        return decision, replace(outcome, agrees_with_clip=agrees, changed_action=changed)


def deciding_frames(evidence: Sequence[Evidence], decision: Decision) -> dict[str, int]:
    """Per category, the frame of the evidence that set it: the forcing match, else the highest score."""
    frames: dict[str, int] = {}
    best: dict[str, float] = {}
    for item in evidence:
        if isinstance(item, CategoryScores):
            for category_id, score in item.scores.items():
                if category_id not in best or score > best[category_id]:
                    best[category_id] = score
                    frames[category_id] = item.deciding_frames.get(category_id, 0)
    forced_by = {c.category_id: c.forced_by for c in decision.categories if c.forced_by}
    for item in evidence:
        if isinstance(item, ForcedAction) and forced_by.get(item.category_id) == item.signal:
            frames[item.category_id] = item.frame_index
    return frames
