"""Every signal the judging core runs, by name: name -> 'module:factory(SignalResources) -> Signal'.

Adding a signal is one module under moderation/signals/ and one line here. A module is
imported only when its signal is built, so the table itself pulls in no torch. Signals
run in this order; `decide` combines their evidence, so the order never changes a decision.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from types import MappingProxyType

from moderation.core.signal import Signal, SignalResources

SIGNALS: Mapping[str, str] = MappingProxyType(
    {
        # Zero-shot scores of the image's CLIP embeddings against each policy's prompts.
        "clip": "moderation.signals.clip.signal:build",
        # Known content: a bank match forces its policy rule's action (needs the `banks` extra and a state store).
        "banks": "moderation.signals.banks.signal:build",
    }
)


def build_signals(resources: SignalResources, names: Sequence[str] | None = None) -> tuple[Signal, ...]:
    """The signals named (default: every registered one), built from `resources`."""
    built = []
    for name in SIGNALS if names is None else names:
        if name not in SIGNALS:
            raise ValueError(f"no signal {name!r}; registered signals: {', '.join(SIGNALS)}")
        module_name, _, factory_name = SIGNALS[name].partition(":")
        built.append(getattr(importlib.import_module(module_name), factory_name)(resources))
    return tuple(built)
