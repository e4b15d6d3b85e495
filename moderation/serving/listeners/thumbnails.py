"""Thumbnails of flagged cases (opt-in), for reviewers and `case show`.

The serving shell makes the small JPEG in its host pool while it still holds the frame
(ServingShell, `thumbnail_px`); this listener writes it, off the request path.
"""

from __future__ import annotations

from moderation.serving.result import ModerationResult
from moderation.state.thumbnails import Thumbnails


class ThumbnailListener:
    name = "thumbnails"

    def __init__(self, store: Thumbnails):
        self._store = store

    def handle(self, result: ModerationResult) -> None:
        if result.thumbnail is not None:
            self._store.save(result.request_id, result.thumbnail, caller=result.caller)

    def close(self) -> None:
        pass
