"""Listeners behind bounded queues: a slow one drops and counts, never blocks; shadows count every category of either side."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from PIL import Image
from prometheus_client import CollectorRegistry

from moderation.core.decision import decide
from moderation.core.decode import DecodedImage
from moderation.core.judge import Judgement
from moderation.core.signal import SampledFrames
from moderation.escalation.tier import EscalationOutcome
from moderation.ops.metrics import ModerationMetrics
from moderation.policy.schema import Policy
from moderation.serving.listeners import ListenerQueue, ShadowListener
from moderation.serving.result import ModerationResult, StageTimings
from tests.policies import TWO_CATEGORIES as ACTIVE

# The active policy plus a category it does not have, as its shadow.
SHADOW = Policy.model_validate(
    {
        **ACTIVE.model_dump(),
        "id": "p_next",
        "version": "8",
        "mode": "shadow",
        "shadow_of": "p",
        "categories": [
            *(c.model_dump() for c in ACTIVE.categories),
            {"id": "gambling", "clause": {"id": "G-1", "text": "No gambling advertising."}, "positive": ["a casino"], "thresholds": {"review": 0.3, "block": 0.9}},
        ],
    }
)
FRAMES = SampledFrames(DecodedImage((Image.new("RGB", (4, 4)),), (0,), 1), embeddings=None)


def judged(policy: Policy, scores: dict[str, float]) -> Judgement:
    decision = decide(scores, policy)
    return Judgement(decision, (), {c.category_id: 0 for c in decision.categories}, FRAMES)


def result(request_id: str, shadows: tuple[Judgement, ...] = ()) -> ModerationResult:
    active = judged(ACTIVE, {"violence": 0.1, "weapons": 0.1})
    return ModerationResult(request_id, active.decision, "m", StageTimings(), EscalationOutcome(), active, shadows)


def test_listeners_get_results_without_pixels() -> None:
    kept = result("r", (judged(SHADOW, {"violence": 0.1, "weapons": 0.1, "gambling": 0.5}),)).without_pixels()
    assert kept.judgement.frames.decoded.frames == () and kept.shadows[0].frames.decoded.frames == ()
    assert kept.judgement.frames.decoded.frame_indices == (0,) and kept.judgement.representative_row() == 0


def dropped(metrics: ModerationMetrics, listener: str) -> float:
    return metrics.registry.get_sample_value("moderation_listener_dropped_total", {"listener": listener}) or 0.0


class SlowListener:
    name = "slow"

    def __init__(self) -> None:
        self.release = threading.Event()
        self.handled: list[str] = []
        self.closed = False

    def handle(self, result: ModerationResult) -> None:
        self.release.wait(10)
        if result.request_id == "boom":
            raise RuntimeError("listener bug")
        self.handled.append(result.request_id)

    def close(self) -> None:
        self.closed = True


def test_a_stuck_listener_drops_and_counts_without_slowing_the_offer() -> None:
    metrics = ModerationMetrics(CollectorRegistry())
    slow = SlowListener()
    listener_queue = ListenerQueue(slow, metrics.listener_dropped.labels("slow").inc, capacity=2)
    started = time.perf_counter()
    for i in range(10):
        listener_queue.offer(result(f"r{i}"))
    assert time.perf_counter() - started < 0.5, "offering never waits for the listener"
    # At most one result in the listener's hands and two queued: the rest were dropped and counted.
    assert dropped(metrics, "slow") >= 7
    slow.release.set()
    kept = 10 - int(dropped(metrics, "slow"))
    deadline = time.monotonic() + 5
    while len(slow.handled) < kept and time.monotonic() < deadline:
        time.sleep(0.01)
    listener_queue.offer(result("boom"))  # a failing result does not stop the listener
    listener_queue.offer(result("after"))
    listener_queue.close(timeout_s=5)
    assert slow.closed and slow.handled[-1] == "after"
    assert len(slow.handled) + dropped(metrics, "slow") == 11


def test_a_category_only_the_shadow_has_is_a_disagreement_when_it_flags(caplog) -> None:  # noqa: ANN001
    metrics = ModerationMetrics(CollectorRegistry())
    shadow = judged(SHADOW, {"violence": 0.1, "weapons": 0.1, "gambling": 0.5})
    quiet = judged(SHADOW, {"violence": 0.1, "weapons": 0.1, "gambling": 0.1})
    with caplog.at_level(logging.INFO, logger="moderation.audit.shadow"):
        ShadowListener(metrics).handle(result("r1", (shadow,)))
        ShadowListener(metrics).handle(result("r2", (quiet,)))
    flagged, unflagged = (record.fields for record in caplog.records)
    assert flagged["disagreements"] == ["gambling"]
    assert flagged["actions"]["gambling"] == ["ALLOW", "REVIEW"] and flagged["scores"]["gambling"] == [None, 0.5]
    assert unflagged["disagreements"] == [], "absent on one side and ALLOW on the other is agreement"
    labels = {"policy": "p", "shadow": "p_next", "shadow_version": "8", "category": "gambling"}
    assert metrics.registry.get_sample_value("moderation_shadow_disagreements_total", labels) == 1.0
