"""The embedding store listener: keep each decision's image embedding (never the image) for `policy diff`."""

from __future__ import annotations

import numpy as np

from moderation.serving.result import ModerationResult
from moderation.state.store import StateStore


class EmbeddingStoreListener:
    name = "embedding_store"

    def __init__(self, store: StateStore):
        self._store = store

    def handle(self, result: ModerationResult) -> None:
        decision = result.judgement.decision  # what the policy decided on the embedding, as `policy diff` re-decides it
        # For animations, the frame behind the highest-scoring category stands for the image.
        vector = np.array(result.judgement.frames.embeddings[result.judgement.representative_row()], dtype=np.float32)  # a copy; torch or numpy rows
        self._store.record(
            result.request_id, result.decided_at, decision.policy_id, decision.policy_version, decision.action.value, vector, result.model_id,
            caller=result.caller,
        )  # fmt: skip

    def close(self) -> None:
        self._store.close()
