"""The explainer's answer: a JSON schema tied to the policy, and its parsed, re-checked form.

The schema is an `anyOf` with one object per escalated category, each fixing its
`category` and `clause` with `const`, so an answer can only cite the clause OF the
category it names (two independent enums would allow any category with any clause).
Constrained decoding (grammar.py) makes the model's output follow this schema; the
parser below checks everything again in Python, because the schema is the contract
and the grammar engine is a third-party library.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from moderation.escalation.prompt import escalated_categories
from moderation.policy.schema import Policy

# xgrammar 0.2.8 ignores `maxLength` when a string also has a `pattern`, and fails to
# compile bounded repetitions much above 128, so the bound lives in the pattern and
# stays below that.
RATIONALE_MAX_CHARS = 120
RATIONALE_CHARACTERS = "A-Za-z0-9 ,.;:'()-"
RATIONALE_PATTERN = f"^[{RATIONALE_CHARACTERS}]{{0,{RATIONALE_MAX_CHARS}}}$"

# Property order is generation order: the clause is chosen first, the rationale comes
# last so that a generation cut short by its token budget can still be closed (the
# rationale string ends, then the object) without inventing any other field.
FIELDS = ("category", "clause", "violates", "confidence", "rationale")


class InvalidVerdict(ValueError):
    """The explainer's output is not a verdict for the escalated categories."""


@dataclass(frozen=True, slots=True)
class ExplainerVerdict:
    violates: bool
    category_id: str
    clause_id: str
    rationale: str
    confidence: float


def verdict_json_schema(policy: Policy, category_ids: Sequence[str]) -> dict[str, Any]:
    variants = [
        {
            "type": "object",
            "properties": {
                "category": {"const": category.id},
                "clause": {"const": category.clause.id},
                "violates": {"type": "boolean"},
                # xgrammar bounds a number's digits, so a number in [0, 1] always ends.
                "confidence": {"type": "number", "minimum": 0, "maximum": 1},
                "rationale": {"type": "string", "pattern": RATIONALE_PATTERN},
            },
            "required": list(FIELDS),
            "additionalProperties": False,
        }
        for category in escalated_categories(policy, category_ids)
    ]
    return variants[0] if len(variants) == 1 else {"anyOf": variants}


def parse_verdict(text: str, policy: Policy, category_ids: Sequence[str]) -> ExplainerVerdict:
    try:
        answer = json.loads(text)
    except json.JSONDecodeError as err:
        raise InvalidVerdict(f"not JSON ({err.msg} at character {err.pos}): {text[:200]!r}") from None
    if not isinstance(answer, dict) or set(answer) != set(FIELDS):
        raise InvalidVerdict(f"expected an object with exactly the keys {list(FIELDS)}: {text[:200]!r}")

    clause_of = {c.id: c.clause.id for c in escalated_categories(policy, category_ids)}
    category_id, clause_id = answer["category"], answer["clause"]
    if category_id not in clause_of:
        raise InvalidVerdict(f"category {category_id!r} is not one of the escalated categories {list(clause_of)}")
    if clause_id != clause_of[category_id]:
        raise InvalidVerdict(
            f"clause {clause_id!r} is not the clause of category {category_id!r} ({clause_of[category_id]!r})"
        )
    if not isinstance(answer["violates"], bool):
        raise InvalidVerdict(f"violates must be true or false, not {answer['violates']!r}")
    confidence = answer["confidence"]
    if isinstance(confidence, bool) or not isinstance(confidence, int | float) or not 0.0 <= confidence <= 1.0:
        raise InvalidVerdict(f"confidence must be a number in [0, 1], not {confidence!r}")
    rationale = answer["rationale"]
    if not isinstance(rationale, str) or not re.fullmatch(RATIONALE_PATTERN.strip("^$"), rationale):
        raise InvalidVerdict(
            f"rationale must be at most {RATIONALE_MAX_CHARS} characters of [{RATIONALE_CHARACTERS}]: {rationale!r}"
        )
    return ExplainerVerdict(
        violates=answer["violates"],
        category_id=category_id,
        clause_id=clause_id,
        rationale=rationale,
        confidence=float(confidence),
    )
