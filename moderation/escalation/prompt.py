"""The explainer's prompt, built from a policy in SmolVLM's chat format.

Layout, in this order on purpose:

    <|im_start|>User: {instruction}                          | fixed prefix: the same for
                                                             | every image of a (policy
    Policy {id} version {version}. Clauses under review:     | version, category set,
    - {clause id} ({category id}): {clause text}             | instruction)
    Image:                                                   |
    {image tokens}{question}<end_of_utterance>               | per request
    Assistant:                                               |

Everything that does not depend on the image comes before it, so its key/value cache
can be computed once and reused for every image (see prefix_cache.py).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from moderation.policy.schema import Category, Policy

DEFAULT_INSTRUCTION = (
    "You are a content moderator reviewing an image that an automatic classifier found borderline "
    "for the policy clauses below. Decide whether the image violates one of them. Answer in JSON only: "
    "the category and the clause id you apply, whether the image violates it, your confidence from 0 to 1, "
    "and a one-sentence rationale that reviewers can read."
)
QUESTION = "Which clause applies to this image, and does the image violate it?"

BEGIN_TURN = "<|im_start|>"
END_OF_UTTERANCE = "<end_of_utterance>"


@dataclass(frozen=True, slots=True)
class EscalationPrompt:
    """The prompt in two pieces: `prefix` is shared by all images; `suffix` holds the image."""

    prefix: str
    suffix: str


def escalated_categories(policy: Policy, category_ids: Sequence[str]) -> list[Category]:
    """The policy's categories named in `category_ids`, in that order; unknown or repeated ids are refused."""
    if not category_ids:
        raise ValueError("escalation needs at least one borderline category")
    if len(set(category_ids)) != len(category_ids):
        raise ValueError(f"category ids repeat: {list(category_ids)}")
    categories = []
    for category_id in category_ids:
        try:
            categories.append(policy.category(category_id))
        except KeyError:
            raise ValueError(f"policy {policy.id!r} version {policy.version} has no category {category_id!r}") from None
    return categories


def build_prompt(
    policy: Policy,
    category_ids: Sequence[str],
    image_placeholder: str,
    instruction: str | None = None,
) -> EscalationPrompt:
    """`image_placeholder` is the processor's expansion of one image (its <image> tokens and markers)."""
    categories = escalated_categories(policy, category_ids)
    clauses = "\n".join(f"- {c.clause.id} ({c.id}): {_one_line(c.clause.text)}" for c in categories)
    prefix = (
        f"{BEGIN_TURN}User: {_one_line(instruction or DEFAULT_INSTRUCTION)}\n\n"
        f"Policy {policy.id} version {policy.version}. Clauses under review:\n{clauses}\n\n"
        "Image:"
    )
    suffix = f"{image_placeholder}{QUESTION}{END_OF_UTTERANCE}\nAssistant:"
    return EscalationPrompt(prefix=prefix, suffix=suffix)


ASK_INSTRUCTION = (
    "A trust-and-safety reviewer has a question about this image, which an automatic classifier flagged. "
    "Answer the question in one to three short sentences, in JSON only. Say what you see; the reviewer decides."
)


def build_question_prompt(policy: Policy, category_id: str | None, image_placeholder: str, question: str) -> str:
    """The whole prompt of a reviewer's question: the case's clause (when known), the image, the question."""
    context = f"Policy {policy.id} version {policy.version}."
    if category_id:
        (category,) = escalated_categories(policy, [category_id])
        context += f" The case was flagged under clause {category.clause.id} ({category.id}): {_one_line(category.clause.text)}"
    return (
        f"{BEGIN_TURN}User: {ASK_INSTRUCTION}\n\n{context}\n\nImage:"
        f"{image_placeholder}Question: {_one_line(question)}{END_OF_UTTERANCE}\nAssistant:"
    )


def _one_line(text: str) -> str:
    # Policy YAML folds clauses over several lines; the model should read them as written prose.
    return re.sub(r"\s+", " ", text).strip()
