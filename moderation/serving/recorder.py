"""Per-request record: the request counter and one JSON audit line (ids, versions, outcome; never image bytes).

Called once per Moderate request, unary or inside a ModerateStream, and once per ModerateVideo call, by the servicer.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import grpc

from moderation.ops.metrics import ModerationMetrics
from moderation.serving.result import ModerationResult
from moderation.serving.limits import cut_utf8

audit = logging.getLogger("moderation.audit")


class RequestRecorder:
    def __init__(self, metrics: ModerationMetrics, audit_metadata_keys: tuple[str, ...] = (), max_value_bytes: int = 256):
        self._metrics = metrics
        self._audit_metadata_keys = frozenset(audit_metadata_keys)
        self._max_value_bytes = max_value_bytes

    def record(
        self, policy_label: str, code: grpc.StatusCode, result: ModerationResult | None, caller: str, metadata: Mapping[str, str]
    ) -> None:
        """`policy_label` must be a served policy id or 'unknown': a caller's typo must not mint a series."""
        action = result.decision.action.value if result is not None else "none"
        self._metrics.requests.labels(policy_label, action, code.name).inc()
        if result is not None and result.video is not None:
            info = result.video.info
            self._metrics.video_seconds.labels(policy_label).inc(info.duration_ms / 1000)
            self._metrics.video_frames.labels("decoded").inc(info.frames_decoded)
            self._metrics.video_frames.labels("sampled").inc(len(result.video.times_ms))
        if result is not None and audit.isEnabledFor(logging.INFO):
            # Allow-listed keys only, each value cut to max_value_bytes of UTF-8 with a mark: an audit line stays small.
            # The request's metadata map is read as it is, never copied whole.
            allowed = {k: cut_utf8(v, self._max_value_bytes) for k, v in metadata.items() if k in self._audit_metadata_keys}
            self._audit(result, caller, allowed)

    @staticmethod
    def _audit(result: ModerationResult, caller: str, metadata: dict[str, str]) -> None:
        decision = result.decision
        audit.info(
            "decision",
            extra={
                "fields": {
                    "request_id": result.request_id,
                    "caller": caller,
                    "metadata": metadata,
                    "policy_id": decision.policy_id,
                    "policy_version": decision.policy_version,
                    "model": result.model_id,
                    "action": decision.action.value,
                    "bands": {c.category_id: c.band.value for c in decision.categories},
                    "clauses": list(decision.cited_clauses),
                    "escalation": result.escalation.status.value,
                    "total_ms": round(result.timings.total_ms, 1),
                    **(
                        {"video_ms": result.video.info.duration_ms, "segments": len(result.video.segments)}
                        if result.video is not None
                        else {}
                    ),
                }
            },
        )
