"""Moderation policies: schema, YAML loading with line-accurate errors, registry."""

from moderation.policy.loader import PolicyFileError, load_policy_file, load_policy_text
from moderation.policy.schema import Action, Category, Clause, Policy, Thresholds

__all__ = [
    "Action",
    "Category",
    "Clause",
    "Policy",
    "PolicyFileError",
    "Thresholds",
    "load_policy_file",
    "load_policy_text",
]
