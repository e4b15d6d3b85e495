"""The signal seam: one stage turning a decoded image into evidence for the decision.

A signal is one module under moderation/signals/ plus one line in
moderation/signals/registry.py (SIGNALS: name -> 'module:factory'). Its factory gets
`SignalResources` and returns an object with this protocol. It runs in the host thread
pool, once per request and policy (shadows included), so it must be thread-safe and
bounded in time and memory by its own settings; what it measures it reports through the
narrow callables its factory was given, never through the server's whole metrics object.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from moderation.core.decode import DecodedImage
from moderation.core.evidence import Evidence
from moderation.policy.registry import ServedPolicy


@dataclass(frozen=True, slots=True)
class SampledFrames:
    """A decoded image's sampled frames and their embeddings (one row per frame, frame order).

    The embeddings come from the image encoder (CLIP's, today) and are opaque here: a signal
    that needs them knows their type; the core only passes them along.
    """

    decoded: DecodedImage
    embeddings: Any


class Signal(Protocol):
    name: str  # the registry's name: evidence and metrics carry it

    def evidence(self, frames: SampledFrames, served: ServedPolicy[Any]) -> Sequence[Evidence]: ...


@dataclass(frozen=True, slots=True)
class SignalResources:
    """What a signal factory may build from: the loaded image encoder, and the process's settings."""

    encoder: Any  # the ClipScorer runtime.py loaded (its text index is each ServedPolicy's `compiled`)
    settings: Any  # moderation.ops.config.Settings: each signal reads its own bounds from it
