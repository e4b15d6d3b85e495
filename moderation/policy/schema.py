"""The policy schema trust-and-safety staff write in YAML.

Pure pydantic: no torch, no I/O. Field descriptions double as the error hints
`moderation policy validate` prints, so they say what is expected.
"""

from __future__ import annotations

import enum
import re
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

IDENTIFIER = r"^[a-z][a-z0-9_]{0,62}$"
CLAUSE_ID = r"^[A-Za-z][A-Za-z0-9._-]{0,31}$"

Identifier = Annotated[str, StringConstraints(pattern=IDENTIFIER)]
Prompt = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=300)]


class Action(str, enum.Enum):
    """Decision for an image or a category, ordered by severity."""

    ALLOW = "ALLOW"
    REVIEW = "REVIEW"
    BLOCK = "BLOCK"

    @property
    def severity(self) -> int:
        return _SEVERITY[self]


_SEVERITY = {Action.ALLOW: 0, Action.REVIEW: 1, Action.BLOCK: 2}


class _Strict(BaseModel):
    # Unknown keys are typos ("treshold") far more often than intent: refuse them.
    model_config = ConfigDict(extra="forbid", frozen=True)


class Clause(_Strict):
    id: str = Field(pattern=CLAUSE_ID, description="a short clause id such as 'V-2'")
    text: str = Field(min_length=10, max_length=2000, description="the clause as a human reviewer reads it")


class Thresholds(_Strict):
    review: float = Field(ge=0.0, le=1.0, description="scores at or above this go to REVIEW (a number in [0, 1])")
    block: float = Field(ge=0.0, le=1.0, description="scores at or above this get the category's on_block action")

    @model_validator(mode="after")
    def _review_not_above_block(self) -> Thresholds:
        if self.review > self.block:
            raise ValueError(f"review threshold {self.review} must not exceed block threshold {self.block}")
        return self


class ExplainerRole(str, enum.Enum):
    """What the SmolVLM2 verdict may do for a borderline case of this category."""

    ADVISORY = "advisory"  # the action stays REVIEW; the rationale helps the human reviewer
    DECISIVE = "decisive"  # the verdict may move the borderline case to ALLOW or the category's on_block


class EscalationSettings(_Strict):
    instruction: str | None = Field(
        default=None, min_length=20, max_length=2000, description="replaces the explainer's default instruction text"
    )


class Category(_Strict):
    id: Identifier = Field(description="lower_snake_case id, unique in the policy")
    description: str = ""
    clause: Clause
    positive: list[Prompt] = Field(min_length=1, description="prompts describing violating content")
    contrast: list[Prompt] = Field(
        default_factory=list,
        description="prompts for look-alike content that does not violate (e.g. 'a toy water pistol')",
    )
    thresholds: Thresholds
    on_block: Action = Field(default=Action.BLOCK, description="BLOCK or REVIEW when the block threshold is crossed")
    explainer: ExplainerRole = Field(
        default=ExplainerRole.ADVISORY, description="'advisory' (default) or 'decisive' for borderline cases"
    )

    @field_validator("on_block")
    @classmethod
    def _on_block_escalates(cls, value: Action) -> Action:
        if value is Action.ALLOW:
            raise ValueError("on_block must be BLOCK or REVIEW; crossing the block threshold can never ALLOW")
        return value


class PolicyMode(str, enum.Enum):
    ACTIVE = "active"
    SHADOW = "shadow"


class Policy(_Strict):
    id: Identifier = Field(description="lower_snake_case policy id")
    version: str = Field(
        min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._+-]*$", description="a version string such as '2026-11-23.1'"
    )
    description: str = ""
    default: bool = Field(default=False, description="serve this policy when a request names none")
    mode: PolicyMode = Field(
        default=PolicyMode.ACTIVE,
        description="'active' decides requests; 'shadow' is evaluated beside the policy named in shadow_of, "
        "and its decisions go only to metrics and the audit log",
    )
    shadow_of: str | None = Field(default=None, pattern=IDENTIFIER, description="the active policy id a shadow policy runs beside")
    model: str | None = Field(
        default=None,
        description="the CLIP model the thresholds were calibrated for, e.g. 'ViT-B-32/laion2b_s34b_b79k'",
    )
    templates: list[Annotated[str, StringConstraints(min_length=3, max_length=200)]] = Field(
        default_factory=lambda: ["a photo of {}."],
        min_length=1,
        description="prompt templates, each containing '{}' where a prompt goes",
    )
    benign: list[Prompt] = Field(min_length=1, description="prompts for ordinary, allowed images")
    escalation: EscalationSettings = Field(default_factory=EscalationSettings)
    categories: list[Category] = Field(min_length=1)

    @field_validator("version", mode="before")
    @classmethod
    def _version_as_text(cls, value: object) -> object:
        # YAML reads `version: 3` or `version: 1.2` as numbers; a version is text.
        return str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value

    @field_validator("templates")
    @classmethod
    def _templates_have_slot(cls, templates: list[str]) -> list[str]:
        for template in templates:
            if template.count("{}") != 1:
                raise ValueError(f"template {template!r} must contain exactly one '{{}}' where the prompt goes")
        return templates

    @model_validator(mode="after")
    def _shadow_fields_agree(self) -> Policy:
        if self.mode is PolicyMode.SHADOW:
            if not self.shadow_of:
                raise ValueError("a shadow policy needs shadow_of: the id of the active policy it runs beside")
            if self.default:
                raise ValueError("a shadow policy cannot be the default: it never decides requests")
            if self.shadow_of == self.id:
                raise ValueError("shadow_of must name another policy")
        elif self.shadow_of:
            raise ValueError("shadow_of is only for policies with mode: shadow")
        return self

    @model_validator(mode="after")
    def _unique_ids(self) -> Policy:
        _require_unique("category id", [c.id for c in self.categories])
        _require_unique("clause id", [c.clause.id for c in self.categories])
        return self

    def category(self, category_id: str) -> Category:
        for category in self.categories:
            if category.id == category_id:
                return category
        raise KeyError(category_id)


def _require_unique(what: str, values: list[str]) -> None:
    seen: set[str] = set()
    for value in values:
        if value in seen:
            raise ValueError(f"{what} {value!r} appears more than once")
        seen.add(value)


def normalise_model_id(model_id: str) -> str:
    """Model ids compare case-insensitively and ignore surrounding spaces."""
    return re.sub(r"\s+", "", model_id).lower()
