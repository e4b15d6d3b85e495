"""Known-content banks as a signal: a match forces the action the policy's bank rule names.

At decode time (`prepare`, once per request, in the host pool) the request takes one
reference to the process's current BankMatcher and computes only the hashes some enabled
bank can match: the SHA-256 of the bytes always (rollout is keyed by it), the MD5 and each
sampled frame's PDQ hash when a bank holds them. Frames are hashed as the server decoded
them (upright, alpha onto white, JPEG draft scale): docs/banks.md gives the measured drift
from reference hashes. Per policy (`evidence`), the banks its `banks:` rules name are
looked up, with the frames' CLIP embeddings where a bank holds embeddings, and each bank
with a match becomes one ForcedAction on its rule's category, citing that category's
clause. A request sees one snapshot of the banks from decode to answer.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from moderation.core.decode import DecodedImage
from moderation.core.evidence import Evidence, ForcedAction, KnownContentMatch
from moderation.core.signal import SampledFrames, SignalResources
from moderation.policy.registry import ServedPolicy
from moderation.policy.schema import BankRule, Policy
from moderation.signals.banks.matcher import BankMatch, BankMatcher, ContentHashes, LiveBanks, hash_content

log = logging.getLogger(__name__)

SIGNAL_LABELS = {"pdq": "PDQ", "md5": "MD5", "sha256": "SHA-256", "embedding": "embedding"}


@dataclass(frozen=True, slots=True)
class PreparedBanks:
    """One request's bank snapshot and hashes (never the bytes)."""

    matcher: BankMatcher
    hashes: ContentHashes


class BankSignal:
    name = "banks"

    def __init__(self, live: LiveBanks | None):
        self._live = live
        self._warned: set[tuple[str, str, str]] = set()
        self._warned_lock = threading.Lock()

    def prepare(self, data: bytes, decoded: DecodedImage) -> PreparedBanks | None:
        if self._live is None:
            return None
        matcher = self._live.matcher
        kinds = matcher.signal_types
        if not kinds:
            return PreparedBanks(matcher, ContentHashes("", "", ()))  # no entries anywhere: nothing to hash
        return PreparedBanks(matcher, hash_content(data, decoded.frames, kinds))

    def evidence(self, frames: SampledFrames, served: ServedPolicy[Any]) -> Sequence[Evidence]:
        policy = served.policy
        if not policy.banks:
            return ()
        prepared: PreparedBanks | None = frames.prepared.get(self.name)
        known = prepared.matcher.bank_names() if prepared is not None else frozenset()
        rules = {rule.bank: rule for rule in policy.banks}
        for bank in rules.keys() - known:
            self._warn_missing(policy, bank)
        if prepared is None or not prepared.hashes.sha256:
            return ()
        embeddings = None
        if "embedding" in prepared.matcher.signal_types and frames.embeddings is not None:
            embeddings = embeddings_array(frames.embeddings)
        # A video's frames each count (when the content was shown makes its segments); an animation's
        # frames name an entry once, by the closest.
        timed = bool(frames.decoded.times_ms)
        found = prepared.matcher.match_hashes(prepared.hashes, embeddings, banks=rules.keys() & known, every_frame=timed)
        by_bank: dict[str, list[BankMatch]] = {}
        for match in found:
            by_bank.setdefault(match.bank, []).append(match)
        indices = frames.decoded.frame_indices
        return tuple(_forced(policy, rules[bank], matches, indices) for bank, matches in sorted(by_bank.items()))

    def _warn_missing(self, policy: Policy, bank: str) -> None:
        key = (policy.id, policy.version, bank)
        with self._warned_lock:
            if key in self._warned:
                return
            self._warned.add(key)
        where = "no bank store is configured (banks need database_url or embedding_store)" if self._live is None else "it does not exist"
        log.warning("policy %s@%s matches bank %r, but %s: nothing can match it until it does", policy.id, policy.version, bank, where)


def _forced(policy: Policy, rule: BankRule, matches: list[BankMatch], indices: tuple[int, ...]) -> ForcedAction:
    clause_id = policy.category(rule.category).clause.id
    # Closest first: exact hashes, then the fewest PDQ bits, then the highest cosine.
    ordered = sorted(matches, key=lambda m: (m.signal_type != "sha256" and m.signal_type != "md5", _closeness(m)))
    reported = tuple(
        KnownContentMatch(m.bank, m.content_id, m.signal_type, m.distance, m.threshold, indices[m.frame_index] if m.frame_index is not None else 0)
        for m in ordered
    )
    first = reported[0]
    how = (
        f"{SIGNAL_LABELS[first.signal_type]} (exact)"
        if first.signal_type in ("md5", "sha256")
        else f"{SIGNAL_LABELS[first.signal_type]} {'distance' if first.signal_type == 'pdq' else 'cosine'} "
        f"{first.distance:g} {'<=' if first.signal_type == 'pdq' else '>='} {first.threshold:g}"
    )
    more = f" and {len(reported) - 1} more entr{'y' if len(reported) == 2 else 'ies'}" if len(reported) > 1 else ""
    reason = (
        f"Matched bank {rule.bank!r} entry {first.content_id!r} by {how}{more}: {rule.action.value} on {rule.category} "
        f"under clause {clause_id}."
    )
    return ForcedAction("banks", rule.category, rule.action, clause_id, reason, first.frame_index, reported)


def _closeness(match: BankMatch) -> float:
    return match.distance if match.signal_type == "pdq" else -match.distance


def embeddings_array(embeddings: Any) -> np.ndarray:
    """Frame embeddings as float32 rows. ClipScorer.embed_images hands over a CPU float32 tensor (L2-normalised)
    on every device, so this is a view, not a copy; torch is not imported here."""
    values = embeddings.numpy() if hasattr(embeddings, "numpy") else embeddings
    return np.asarray(values, dtype=np.float32)


def build(resources: SignalResources) -> BankSignal:
    return BankSignal(resources.banks)
