"""The escalation tier's errors, importable without torch or transformers (serve catches them at start)."""

from __future__ import annotations


class ExplainerWeightsUnavailable(RuntimeError):
    """The explainer's weights cannot be found locally or fetched. One line, says what to change."""
