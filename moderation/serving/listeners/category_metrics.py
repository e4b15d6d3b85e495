"""Per-category metrics of every result: CLIP's score and band per category, and each stage's latency."""

from __future__ import annotations

from moderation.ops.metrics import ModerationMetrics
from moderation.serving.result import ModerationResult

STAGES = ("decode", "embed", "decide", "total")


class CategoryMetricsListener:
    name = "metrics"

    def __init__(self, metrics: ModerationMetrics):
        self._metrics = metrics

    def handle(self, result: ModerationResult) -> None:
        m = self._metrics
        for stage in STAGES:
            m.stage_seconds.labels(stage).observe(getattr(result.timings, f"{stage}_ms") / 1e3)
        # The signals' view, before escalation: two series per category.
        decision = result.judgement.decision
        for c in decision.categories:
            m.category_score.labels(decision.policy_id, c.category_id).observe(c.score)
            m.decisions.labels(decision.policy_id, c.category_id, c.band.value).inc()
        for _, match in result.judgement.forced_matches():
            m.bank_matches.labels(match.bank, match.signal_type).inc()

    def close(self) -> None:
        pass
