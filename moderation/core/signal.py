"""The signal seam: one stage turning a decoded image into evidence for the decision.

A signal is one module under moderation/signals/ plus one line in
moderation/signals/registry.py (SIGNALS: name -> 'module:factory'). Its factory gets
`SignalResources` and returns an object with this protocol. It runs in the host thread
pool, once per request and policy (shadows included), so it must be thread-safe and
bounded in time and memory by its own settings; what it measures it reports through the
narrow callables its factory was given, never through the server's whole metrics object.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
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
    # What each signal's `prepare` computed at decode time, by signal name (see PreparingSignal).
    prepared: Mapping[str, Any] = field(default_factory=dict)


class Signal(Protocol):
    name: str  # the registry's name: evidence and metrics carry it

    def evidence(self, frames: SampledFrames, served: ServedPolicy[Any]) -> Sequence[Evidence]: ...


class PreparingSignal(Signal, Protocol):
    """A signal that also needs the request's bytes or frames once, whatever the policies (the bank signal hashes them).

    `prepare` runs in the decode step, in the host pool, once per request; what it returns
    reaches `evidence` as `frames.prepared[name]` for the active policy and every shadow.
    It must not keep the bytes: the result lives as long as the request's judgements.
    """

    def prepare(self, data: bytes, decoded: DecodedImage) -> Any: ...


@dataclass(frozen=True, slots=True)
class SignalResources:
    """What a signal factory may build from: the loaded image encoder, and the process's settings."""

    encoder: Any  # the ClipScorer runtime.py loaded (its text index is each ServedPolicy's `compiled`)
    settings: Any  # moderation.ops.config.Settings: each signal reads its own bounds from it
    banks: Any = None  # the process's LiveBanks (moderation/signals/banks/matcher.py); None: no banks here (offline)
