"""The serving shell: the server's pools and micro-batcher around the judging core, and the listeners after it.

    registry snapshot (active policy + its shadows; the request finishes on it)
    -> core.decode            host pool (decode_workers threads), never on the event loop
    -> batcher.embed          the model thread, in a batch shared with concurrent requests
    -> core.judge             host pool: under the active policy and each shadow (+ the thumbnail of a flagged case)
    -> core.escalate          the escalation tier's own bounds
    -> listeners              the result without its pixels, offered to every listener's bounded queue;
                              none can slow a request

Knows nothing of gRPC: the servicer maps its exceptions to status codes (ImageRejected,
PolicyNotFound, Overloaded, DeadlinePassed).
"""

from __future__ import annotations

import asyncio
import io
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from PIL import Image

from moderation.core.decision import Decision
from moderation.core.judge import Judgement, JudgingCore, Sample
from moderation.escalation.tier import MAX_WATCHED_FRAMES, EscalationOutcome
from moderation.policy.registry import PolicyRegistry, ServedPolicy
from moderation.policy.schema import Action
from moderation.serving.listeners import Listeners
from moderation.serving.result import ModerationResult, StageTimings
from moderation.signals.clip.batcher import BatcherMetrics, MicroBatcher
from moderation.signals.clip.scorer import ClipScorer, PolicyTextIndex
from moderation.state.thumbnails import make_thumbnail

if TYPE_CHECKING:  # pdqhash and faiss load only where banks are on; PyAV only where videos are decoded
    from moderation.video.decode import VideoLimits
    from moderation.video.segments import VideoAnswer
    from moderation.serving.bank_refresh import Banks
    import numpy as np

    from moderation.signals.banks.matcher import ContentHashes, LiveBanks
    from moderation.state.banks import BankStore

log = logging.getLogger(__name__)

VIDEO_ESCALATION_FRAMES = MAX_WATCHED_FRAMES  # frames of a video segment the explainer watches at most


class ServingShell:
    def __init__(
        self,
        core: JudgingCore,
        scorer: ClipScorer,
        registry: PolicyRegistry[PolicyTextIndex],
        listeners: Listeners,
        batcher_metrics: BatcherMetrics = BatcherMetrics(),
        decode_workers: int = 2,
        max_batch: int = 16,
        max_wait_ms: float = 0.0,
        max_queue: int = 128,
        thumbnail_px: int | None = None,
        banks: Banks | None = None,
        video_limits: VideoLimits | None = None,
    ):
        self.core = core
        self.video_limits = video_limits  # None: the defaults of moderation/video/decode.py
        self._max_batch = max_batch
        # Banks of known content (a state store is configured): this replica's live indexes, the shared store
        # (read here; BankService writes through a connection of its own, so no reader sees an
        # uncommitted import) and the refresher that follows it. None: no banks here.
        self._banks = banks
        self.banks: LiveBanks | None = banks.live if banks is not None else None
        self.bank_store: BankStore | None = banks.store if banks is not None else None
        self._thumbnail_px = thumbnail_px  # None: thumbnails are off
        self.registry = registry
        self.listeners = listeners
        # Host work (decode, preprocess, signals, deciding) runs here, never on the event loop.
        self._host_pool = ThreadPoolExecutor(decode_workers, thread_name_prefix="host")
        # One model thread: torch parallelises inside an op; two callers would
        # only fight over the same cores. The batcher feeds it.
        self._model_pool = ThreadPoolExecutor(1, thread_name_prefix="model")
        self.batcher = MicroBatcher(
            scorer.embed_images,
            self._model_pool,
            batcher_metrics,
            max_batch=max_batch,
            max_wait_ms=max_wait_ms,
            max_queue=max_queue,
            allocate=scorer.batch_buffer,  # pinned on CUDA: the copy to the device does not block
        )

    def start(self) -> None:
        """Start the batch worker (and the bank refresher); call on the serving event loop."""
        self.batcher.start()
        if self._banks is not None:
            self._banks.refresher.start()

    async def moderate(
        self,
        image: bytes,
        policy_id: str = "",
        request_id: str = "",
        force_escalation: bool = False,
        deadline_s: float = 30.0,
        caller: str = "anonymous",
    ) -> ModerationResult:
        """Raises PolicyNotFound, ImageRejected, Overloaded and DeadlinePassed."""
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        deadline = time.monotonic() + deadline_s
        # Look the policy up once: the request finishes on the version it started with.
        served, shadows = self.registry.with_shadows(policy_id)

        # Decoding an animation stops between frames once nobody waits for it: the deadline
        # passed, or the caller went away (a cancelled await leaves the thread running).
        abandoned = threading.Event()
        try:
            sample = await loop.run_in_executor(
                self._host_pool, self.core.decode, image, lambda: abandoned.is_set() or time.monotonic() > deadline
            )
        except asyncio.CancelledError:
            abandoned.set()
            raise
        decoded = time.perf_counter()
        # All sampled frames of an animation go through the model in one batch.
        embeddings = await self.batcher.embed(sample.pixels, deadline)
        embedded = time.perf_counter()
        judgement, shadow_judgements, thumbnail = await loop.run_in_executor(
            self._host_pool, self._judge, sample, embeddings, served, shadows, request_id
        )
        judged = time.perf_counter()
        decision, escalation = await self.core.escalate(
            judgement, served.policy, request_id, image, force_escalation, deadline - time.monotonic()
        )
        finished = time.perf_counter()
        timings = StageTimings(
            decode_ms=(decoded - started) * 1e3,
            embed_ms=(embedded - decoded) * 1e3,
            decide_ms=(judged - embedded) * 1e3,
            escalation_ms=(finished - judged) * 1e3,
            total_ms=(finished - started) * 1e3,
        )
        result = ModerationResult(
            request_id, decision, self.core.model_id, timings, escalation, judgement, shadow_judgements, thumbnail, caller=caller
        )
        self.listeners.offer(result.without_pixels())
        return result

    async def moderate_video(
        self,
        video: bytes,
        policy_id: str = "",
        request_id: str = "",
        sample_fps: float = 0.0,
        deadline_s: float = 30.0,
        caller: str = "anonymous",
        force_escalation: bool = False,
    ) -> ModerationResult:
        """A short video: sampled frames judged together by the core, as an animation's are, plus when each
        category was over its threshold (moderation/video/segments.py). Raises PolicyNotFound, ImageRejected
        (VideoRejected), Overloaded and DeadlinePassed."""
        import torch

        from moderation.video.decode import VideoLimits, decode_video
        from moderation.video.segments import video_answer

        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        deadline = time.monotonic() + deadline_s
        served, shadows = self.registry.with_shadows(policy_id)
        limits = self.video_limits or VideoLimits()
        abandoned = threading.Event()
        try:
            decoded_video = await loop.run_in_executor(
                self._host_pool, decode_video, video, limits, sample_fps, lambda: abandoned.is_set() or time.monotonic() > deadline
            )
            # The signals' per-request work on the sampled frames (the banks hash each one, and the file's bytes).
            sample = await loop.run_in_executor(self._host_pool, self.core.prepare, video, decoded_video.image)
        except asyncio.CancelledError:
            abandoned.set()
            raise
        decoded = time.perf_counter()
        # In batches of at most max_batch frames, one after another: a video never holds the model
        # for all its frames at once while other requests wait.
        chunks = [await self.batcher.embed(chunk, deadline) for chunk in sample.pixels.split(self._max_batch)]
        embeddings = torch.cat(chunks) if len(chunks) > 1 else chunks[0]
        embedded = time.perf_counter()
        judgement, shadow_judgements, thumbnail = await loop.run_in_executor(
            self._host_pool, self._judge, sample, embeddings, served, shadows, request_id
        )
        answer = video_answer(
            judgement.evidence, served.policy, decoded_video.image.frame_indices, decoded_video.times_ms, decoded_video.info
        )
        judged = time.perf_counter()
        decision, escalation = await self._escalate_video(judgement, answer, served, request_id, force_escalation, deadline)
        finished = time.perf_counter()
        timings = StageTimings(
            decode_ms=(decoded - started) * 1e3,
            embed_ms=(embedded - decoded) * 1e3,
            decide_ms=(judged - embedded) * 1e3,
            escalation_ms=(finished - judged) * 1e3,
            total_ms=(finished - started) * 1e3,
        )
        result = ModerationResult(
            request_id,
            decision,
            self.core.model_id,
            timings,
            escalation,
            judgement,
            shadow_judgements,
            thumbnail,
            caller=caller,
            video=answer,
        )
        self.listeners.offer(result.without_pixels())
        return result

    async def _escalate_video(
        self,
        judgement: Judgement,
        answer: VideoAnswer,
        served: ServedPolicy[PolicyTextIndex],
        request_id: str,
        force: bool,
        deadline: float,
    ) -> tuple[Decision, EscalationOutcome]:
        """The explainer's reading of a video's borderline (or forced) case, with the tier's bounds as for images.

        The deciding frame is the one that set the first escalated category's score (the peak of that
        category's worst segment). An in-process SmolVLM2 (`watches_video`) watches that segment: up
        to VIDEO_ESCALATION_FRAMES of its sampled frames, each stamped with its time (a remote
        explain-serve gets them as JPEGs in ExplainRequest.video_frames, beside the peak as a PNG).
        The reasons say what was watched, with times. Without an answer the case is at least
        REVIEW, never ALLOW.
        """
        from moderation.core.decode import DecodedImage
        from moderation.core.signal import SampledFrames
        from moderation.escalation.tier import categories_to_escalate

        policy = served.policy
        borderline = [c.category_id for c in judgement.decision.borderline]
        category_ids = categories_to_escalate(borderline, [c.id for c in policy.categories], force)
        if not category_ids or self.core.escalation is None:
            # Nothing to ask, or nobody to ask: the core says which, and never uses the bytes then.
            return await self.core.escalate(judgement, policy, request_id, b"", force, deadline - time.monotonic())
        category_id = category_ids[0]
        position = judgement.deciding.get(category_id, 0)
        frames = judgement.frames.decoded.frames
        frame = frames[position]
        still = replace(
            judgement,
            frames=SampledFrames(DecodedImage((frame,), (0,), 1), None, {}),
            deciding={c: 0 for c in judgement.deciding},
        )
        shown = answer.times_ms[position]
        segment = next(
            (s for s in answer.segments if s.category_id == category_id and s.start_ms <= shown < s.end_ms), None
        )
        # A backend that watches video gets the segment's sampled frames (at most VIDEO_ESCALATION_FRAMES,
        # spread over it, the peak among them), each with its time; any other the peak frame as a still
        # (both backends shipped here watch video: in-process, and remote via ExplainRequest.video_frames).
        watched: tuple[tuple[int, Image.Image], ...] = ()
        if getattr(self.core.escalation.backend, "watches_video", False):
            if segment is not None:
                inside = [i for i, t in enumerate(answer.times_ms) if segment.start_ms <= t < segment.end_ms]
            else:  # forced, nothing over a threshold: the frames around the peak
                inside = list(range(max(0, position - 3), min(len(frames), position + 4)))
            chosen = _spread(inside, VIDEO_ESCALATION_FRAMES)
            if position not in chosen:  # the peak is always watched: it takes the place of the nearest frame
                chosen[min(range(len(chosen)), key=lambda k: abs(chosen[k] - position))] = position
                chosen.sort()
            watched = tuple((answer.times_ms[i], frames[i]) for i in chosen)
        png = await asyncio.get_running_loop().run_in_executor(self._host_pool, _png, frame)
        decision, outcome = await self.core.escalate(
            still, policy, request_id, png, force, deadline - time.monotonic(), video_frames=watched
        )
        outcome = replace(outcome, frame_index=position)
        where = f" of its {segment.band.value} segment {_video_time(segment.start_ms)}-{_video_time(segment.end_ms)}" if segment else ""
        if watched:
            note = (
                f"The explainer watched {len(watched)} frame{'s' if len(watched) != 1 else ''}{where} for {category_id}, "
                f"from {_video_time(watched[0][0])} to {_video_time(watched[-1][0])}, the peak at {_video_time(shown)}."
            )
        else:
            note = f"The explainer judged the frame at {_video_time(shown)}, the peak of {category_id}{where}."
        return replace(decision, reasons=(*decision.reasons, note)), outcome

    def _judge(
        self,
        sample: Sample,
        embeddings: Any,
        served: ServedPolicy[PolicyTextIndex],
        shadows: tuple[ServedPolicy[PolicyTextIndex], ...],
        request_id: str,
    ) -> tuple[Judgement, tuple[Judgement, ...], bytes | None]:
        """The same frames under the active policy and each shadow (a scoring each, never a forward pass),
        and the thumbnail of a case any of them flags, made while the frame is at hand."""
        judgement = self.core.judge(sample, embeddings, served)
        shadow_judgements = tuple(self.core.judge(sample, embeddings, s) for s in shadows)
        flagged = any(j.decision.action is not Action.ALLOW for j in (judgement, *shadow_judgements))
        thumbnail = self._thumbnail(judgement, request_id) if flagged and self._thumbnail_px else None
        return judgement, shadow_judgements, thumbnail

    def _thumbnail(self, judgement: Judgement, request_id: str) -> bytes | None:
        frame = judgement.frames.decoded.frames[judgement.representative_row()]
        try:
            return make_thumbnail(frame, self._thumbnail_px)
        except (OSError, ValueError) as error:  # a thumbnail never fails the request
            log.warning("could not make a thumbnail for request %s: %s", request_id, error)
            return None

    async def hash_for_banks(self, image: bytes, time_left_s: float, embed: bool) -> tuple[ContentHashes, np.ndarray | None]:
        """What a bank would match this image by (BankService: add and look up by image), decoded as requests are.

        Every signal type: SHA-256 and MD5 of the bytes, the PDQ hash of each sampled frame and,
        with `embed`, each sampled frame's L2-normalised CLIP embedding (float32, one row per
        frame). Raises ImageRejected, Overloaded and DeadlinePassed, as `moderate` does.
        """
        from moderation.signals.banks.matcher import SIGNAL_TYPES, hash_content
        from moderation.signals.banks.signal import embeddings_array

        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + time_left_s
        # Without the signals' prepare: the banks signal would hash the same frames for matching,
        # and every signal type is hashed just below.
        sample = await loop.run_in_executor(
            self._host_pool, self.core.decode, image, lambda: time.monotonic() > deadline, False
        )
        hashes = await loop.run_in_executor(self._host_pool, hash_content, image, sample.decoded.frames, SIGNAL_TYPES)
        if not embed:
            return hashes, None
        return hashes, embeddings_array(await self.batcher.embed(sample.pixels, deadline))

    async def close(self) -> None:
        if self._banks is not None:
            await asyncio.to_thread(self._banks.refresher.stop)
        await self.batcher.stop()
        if self.core.escalation is not None:
            await self.core.escalation.close()
        self._host_pool.shutdown(wait=False, cancel_futures=True)
        self._model_pool.shutdown(wait=False, cancel_futures=True)
        # Listeners drain in a thread: an embedding store's last flush must not hold the event loop.
        await asyncio.to_thread(self.listeners.close)


def _video_time(ms: int) -> str:
    """Milliseconds as M:SS.mmm, as `moderation moderate` prints segments."""
    minutes, rest = divmod(int(ms), 60_000)
    return f"{minutes}:{rest / 1000:06.3f}"


def _spread(items: list[int], count: int) -> list[int]:
    """Up to `count` of `items`, evenly spread from the first to the last."""
    if count <= 0 or not items:
        return []
    if len(items) <= count:
        return list(items)
    return [items[round(k * (len(items) - 1) / max(1, count - 1))] for k in range(count)]


def _png(frame: Image.Image) -> bytes:
    buffer = io.BytesIO()
    frame.save(buffer, format="PNG")
    return buffer.getvalue()
