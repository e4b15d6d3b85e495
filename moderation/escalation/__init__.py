"""Escalation tier: SmolVLM2 explains borderline cases with a JSON verdict citing a policy clause."""

from moderation.escalation.explainer import (
    DEFAULT_MAX_NEW_TOKENS,
    Explainer,
    ExplainerInfo,
    ExplanationFailed,
    ExplanationResult,
    GenerationTiming,
    PromptInputs,
)
from moderation.escalation.loading import (
    DEFAULT_EXPLAINER_MODEL,
    PRETRAINED_WEIGHTS,
    TINY_TEST_MODEL,
    ExplainerSpec,
    ExplainerWeightsUnavailable,
    LoadedExplainer,
    load_explainer,
)
from moderation.escalation.prompt import DEFAULT_INSTRUCTION
from moderation.escalation.verdict import (
    RATIONALE_MAX_CHARS,
    ExplainerVerdict,
    InvalidVerdict,
    verdict_json_schema,
)

__all__ = [
    "DEFAULT_EXPLAINER_MODEL",
    "DEFAULT_INSTRUCTION",
    "DEFAULT_MAX_NEW_TOKENS",
    "PRETRAINED_WEIGHTS",
    "RATIONALE_MAX_CHARS",
    "TINY_TEST_MODEL",
    "Explainer",
    "ExplainerInfo",
    "ExplainerSpec",
    "ExplainerVerdict",
    "ExplainerWeightsUnavailable",
    "ExplanationFailed",
    "ExplanationResult",
    "GenerationTiming",
    "InvalidVerdict",
    "LoadedExplainer",
    "PromptInputs",
    "load_explainer",
    "verdict_json_schema",
]
