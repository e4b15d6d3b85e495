"""Decision embeddings kept for retroactive re-scoring (`moderation policy diff`) and `case show`.

After each decision the server records the image's CLIP embedding with the request
id, time, policy id and version, action and model id. Never the image: an embedding
cannot be turned back into the picture, and re-scoring a policy needs only the
embedding, because a score is the embedding against the policy's text embeddings.

Where they live is the store seam (moderation/state/store.py): a SQLite file on one
machine or a PostgreSQL database shared by every replica; `location` below is either
a file path or a URL (`sqlite:///path`, `postgresql://...`). These functions open the
store read-only for one question and close it: reading never creates or changes a
store.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from moderation.state.records import StoredDecisions, StoreError, StoreFreshness, Timestamp, unix_seconds
from moderation.state.store import open_store

Location = str | Path


def read_decisions(
    location: Location, since: Timestamp, until: Timestamp | None = None, policy_id: str | None = None, batch_size: int = 4096
) -> Iterator[StoredDecisions]:
    """Stored decisions with since <= time < until, oldest first, in batches of at most `batch_size`."""
    with open_store(location, read_only=True) as store:
        yield from store.read_decisions(since, until, policy_id, batch_size)


def stored_model_ids(location: Location, since: Timestamp, until: Timestamp | None = None, policy_id: str | None = None) -> dict[str, int]:
    """How many stored decisions in the window each model id embedded."""
    with open_store(location, read_only=True) as store:
        return store.stored_model_ids(since, until, policy_id)


def store_freshness(location: Location, since: Timestamp, until: Timestamp | None = None, policy_id: str | None = None) -> StoreFreshness:
    with open_store(location, read_only=True) as store:
        return store.freshness(since, until, policy_id)


def find_decisions(location: Location, request_id: str, caller: str | None = None) -> StoredDecisions | None:
    """Every stored decision with this request id (of `caller` when given: one case), oldest first, with who asked."""
    with open_store(location, read_only=True) as store:
        return store.find_decisions(request_id, caller)


__all__ = [
    "StoreError",
    "StoreFreshness",
    "StoredDecisions",
    "Timestamp",
    "find_decisions",
    "read_decisions",
    "store_freshness",
    "stored_model_ids",
    "unix_seconds",
]
