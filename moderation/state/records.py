"""What the store keeps, as plain values: stored decisions, freshness, and the checks on a row.

Shared by every backend (moderation/state/sqlite.py, moderation/state/postgres.py) and
by the readers (`policy diff`, `case show`), so a decision reads back the same from
either database.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

import numpy as np

from moderation.policy.schema import Action

Timestamp = datetime | float  # an aware datetime, or unix seconds
_ACTIONS = {action.value: action for action in Action}


class StoreError(RuntimeError):
    """The store cannot be read or written; the message says which store (password redacted) and why."""


@dataclass(frozen=True)
class StoredDecisions:
    """A batch of stored decisions, oldest first."""

    request_ids: tuple[str, ...]
    timestamps: np.ndarray  # unix seconds, float64
    policy_ids: tuple[str, ...]
    policy_versions: tuple[str, ...]
    actions: tuple[Action, ...]
    model_ids: tuple[str, ...]
    embeddings: np.ndarray  # [n, dim] float32
    callers: tuple[str, ...] = ()  # who asked, when the read selected it (find_decisions); '' for rows from before
    details: tuple[dict, ...] = ()  # what decided each (find_decisions; decision_details' form); {} for rows from before

    def __len__(self) -> int:
        return len(self.request_ids)


@dataclass(frozen=True)
class StoreFreshness:
    """How current a store is: what `policy diff` re-scores, and how old the newest decision is."""

    in_window: int  # decisions in the window (and policy)
    oldest_in_window: float | None  # unix seconds
    newest_in_window: float | None
    newest: float | None  # the newest decision of any policy, any time


def unix_seconds(timestamp: Timestamp) -> float:
    if isinstance(timestamp, datetime):
        if timestamp.tzinfo is None:
            raise ValueError("timestamps must be timezone-aware datetimes (or unix seconds)")
        return timestamp.timestamp()
    seconds = float(timestamp)
    if not math.isfinite(seconds):
        raise ValueError(f"timestamp must be finite, got {timestamp!r}")
    return seconds


def embedding_bytes(embedding: np.ndarray) -> bytes:
    """float32 little-endian bytes of one finite vector: the stored form, the same in every backend."""
    vector = np.asarray(embedding, dtype="<f4")
    if vector.ndim != 1 or vector.size == 0:
        raise ValueError(f"an image embedding is one non-empty vector, got shape {vector.shape}")
    if not np.all(np.isfinite(vector)):
        raise ValueError("an image embedding must be finite")
    return vector.tobytes()


def decisions_batch(rows: list[tuple[object, ...]], where: str) -> StoredDecisions:
    """Rows of (ts, key, request_id, policy_id, policy_version, action, model_id, embedding[, caller]) as one batch."""
    sizes = {len(row[7]) for row in rows}  # type: ignore[arg-type]
    if len(sizes) != 1:
        raise StoreError(f"{where}: stored embeddings of different sizes in one window; filter by model")
    return StoredDecisions(
        request_ids=tuple(str(row[2]) for row in rows),
        timestamps=np.array([row[0] for row in rows], dtype=np.float64),
        policy_ids=tuple(str(row[3]) for row in rows),
        policy_versions=tuple(str(row[4]) for row in rows),
        actions=tuple(_ACTIONS[row[5]] for row in rows),  # a dict lookup: Action(value) costs a microsecond a row
        model_ids=tuple(str(row[6]) for row in rows),
        # One frombuffer over the joined bytes: a 4096-row page is one copy, not 4096 small arrays.
        embeddings=np.frombuffer(b"".join(bytes(row[7]) for row in rows), dtype="<f4").reshape(len(rows), -1).astype(np.float32),  # type: ignore[arg-type]
        callers=tuple(str(row[8]) for row in rows) if rows and len(rows[0]) > 8 else (),
        details=tuple(_details(row[9]) for row in rows) if rows and len(rows[0]) > 9 else (),
    )


# What decided a decision, kept beside it for `case show`: a few hundred bytes for a policy of
# six categories; a rationale is bounded by the explainer's token budget, and the whole by this.
MAX_DETAILS_CHARS = 16_384
MAX_RATIONALE_CHARS = 2_000


def decision_details(
    categories: list[dict[str, object]],
    *,
    reasons: list[str] = (),  # type: ignore[assignment]
    escalation: dict[str, object] | None = None,
    shadows: list[dict[str, object]] = (),  # type: ignore[assignment]
) -> dict[str, object]:
    """The stored form of what decided a decision (plain values; never image bytes).

    categories: [{id, clause, score, review, block, band, action, forced_by}]; escalation:
    {status, reason, violates, confidence, rationale, model} when the explainer was asked;
    shadows: [{policy_id, version, action, disagree: [category ids]}].
    """
    details: dict[str, object] = {"categories": categories, "reasons": list(reasons)}
    if escalation is not None:
        details["escalation"] = escalation
    if shadows:
        details["shadows"] = list(shadows)
    return details


def details_json(details: Mapping[str, object]) -> str:
    """`details` as compact JSON of at most MAX_DETAILS_CHARS: a long rationale is cut first, then reasons."""
    text = json.dumps(details, separators=(",", ":"), ensure_ascii=False)
    if len(text) <= MAX_DETAILS_CHARS:
        return text
    trimmed = dict(details)
    escalation = trimmed.get("escalation")
    if isinstance(escalation, dict) and isinstance(escalation.get("rationale"), str):
        trimmed["escalation"] = {**escalation, "rationale": escalation["rationale"][:MAX_RATIONALE_CHARS] + " [cut]"}
    trimmed["reasons"] = []
    text = json.dumps(trimmed, separators=(",", ":"), ensure_ascii=False)
    if len(text) <= MAX_DETAILS_CHARS:
        return text
    return json.dumps({"omitted": f"over {MAX_DETAILS_CHARS} characters"})


def _details(stored: object) -> dict:
    if not stored:
        return {}
    try:
        details = json.loads(str(stored))
    except ValueError:
        return {"omitted": "unreadable"}
    return details if isinstance(details, dict) else {"omitted": "unreadable"}
