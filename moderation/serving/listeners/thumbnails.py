"""Thumbnails of flagged cases (opt-in): a small JPEG of the deciding frame, for reviewers and `case show`.

A case is flagged when the active policy or any shadow does not ALLOW it.
"""

from __future__ import annotations

import logging

from moderation.policy.schema import Action
from moderation.serving.result import ModerationResult
from moderation.state.thumbnails import ThumbnailStore, make_thumbnail

log = logging.getLogger(__name__)


class ThumbnailListener:
    name = "thumbnails"

    def __init__(self, store: ThumbnailStore):
        self._store = store

    def handle(self, result: ModerationResult) -> None:
        decisions = (result.decision, result.judgement.decision, *(s.decision for s in result.shadows))
        if all(d.action is Action.ALLOW for d in decisions):
            return
        judgement = result.judgement
        decoded = judgement.frames.decoded
        top = max(judgement.decision.categories, key=lambda c: c.score)
        frame = decoded.frames[decoded.frame_indices.index(judgement.deciding.get(top.category_id, decoded.frame_indices[0]))]
        try:
            jpeg = make_thumbnail(frame, self._store.max_px)
        except (OSError, ValueError) as error:  # a thumbnail is never worth more than a log line
            log.warning("could not make a thumbnail for request %s: %s", result.request_id, error)
            return
        self._store.save(result.request_id, jpeg)

    def close(self) -> None:
        pass
