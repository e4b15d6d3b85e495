"""Escalation tier: SmolVLM2 explains borderline cases with a JSON verdict citing a policy clause.

Names are loaded lazily (PEP 562): the scorer imports `moderation.escalation.tier`
on every start, and must not pay for transformers and xgrammar unless an
explainer is configured.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DEFAULT_MAX_NEW_TOKENS": "explainer",
    "ExplainerInfo": "explainer",
    "Explainer": "explainer",
    "ExplanationFailed": "explainer",
    "ExplanationResult": "explainer",
    "GenerationTiming": "explainer",
    "PromptInputs": "explainer",
    "DEFAULT_EXPLAINER_MODEL": "loading",
    "PRETRAINED_WEIGHTS": "loading",
    "TINY_TEST_MODEL": "loading",
    "ExplainerSpec": "loading",
    "ExplainerWeightsUnavailable": "loading",
    "LoadedExplainer": "loading",
    "load_explainer": "loading",
    "DEFAULT_INSTRUCTION": "prompt",
    "RATIONALE_MAX_CHARS": "verdict",
    "ExplainerVerdict": "verdict",
    "InvalidVerdict": "verdict",
    "verdict_json_schema": "verdict",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
