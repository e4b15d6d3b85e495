"""Small policies that tests share: enough categories to tell decisions apart, nothing more."""

from __future__ import annotations

from moderation.policy import load_policy_text

# violence blocks above 0.6; weapons only ever goes to REVIEW (on_block: REVIEW).
TWO_CATEGORIES = load_policy_text(
    """\
id: p
version: "7"
benign: ["a cat"]
categories:
  - id: violence
    clause: {id: V-2, text: "No gore or mutilated bodies."}
    positive: ["gore"]
    thresholds: {review: 0.3, block: 0.6}
  - id: weapons
    clause: {id: W-1, text: "No threatening display of firearms."}
    positive: ["a gun"]
    thresholds: {review: 0.4, block: 0.8}
    on_block: REVIEW
"""
)


def one_category_yaml(version: str, policy_id: str = "p") -> str:
    """The text of a one-category policy file, for tests that write policy directories."""
    return f"""\
id: {policy_id}
version: "{version}"
benign: ["a cat"]
categories:
  - id: weapons
    clause: {{id: W-1, text: "No threatening display of firearms."}}
    positive: ["a gun"]
    thresholds: {{review: 0.3, block: 0.6}}
"""
