"""The policy schema trust-and-safety staff write in YAML.

Pure pydantic: no torch, no I/O. Field descriptions double as the error hints
`moderation policy validate` prints, so they say what is expected.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import json
import math
import re
import struct
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, field_validator, model_validator
from pydantic_core import PydanticCustomError

IDENTIFIER = r"^[a-z][a-z0-9_]{0,62}$"
CLAUSE_ID = r"^[A-Za-z][A-Za-z0-9._-]{0,31}$"

Identifier = Annotated[str, StringConstraints(pattern=IDENTIFIER)]
Prompt = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=300)]

# Cost bounds. Every served policy version is compiled by encoding each of its
# texts (templates x prompts) with the CLIP text tower, and every request scores
# against every prompt; categories become metric series and response fields.
# Measured on this project's 2-core CPU: ViT-B-32's text tower takes about 40 ms
# a text on idle cores (a full 77-token pass, ~6 GFLOP) and up to 130 ms with the
# cores shared, so MAX_TEXTS compiles in 40 s to 2 minutes there.
# policies/default.yaml uses 6 categories, 4 templates, 53 prompts and 212 texts:
# the limits leave about 5x headroom over it.
# docs/policies.md ("Limits") lists them; tests keep the two in step.
MAX_CATEGORIES = 64  # categories in one policy
MAX_TEMPLATES = 16  # prompt templates in one policy
MAX_CATEGORY_PROMPTS = 32  # positive + contrast prompts of one category
MAX_PROMPTS = 512  # benign + every category's positive and contrast prompts
MAX_TEXTS = 1024  # templates x prompts: the texts a compile encodes
MAX_BANK_RULES = 32  # banks one policy matches: each is an index lookup per request
LIMITS = {
    "MAX_CATEGORIES": MAX_CATEGORIES,
    "MAX_TEMPLATES": MAX_TEMPLATES,
    "MAX_CATEGORY_PROMPTS": MAX_CATEGORY_PROMPTS,
    "MAX_PROMPTS": MAX_PROMPTS,
    "MAX_TEXTS": MAX_TEXTS,
    "MAX_BANK_RULES": MAX_BANK_RULES,
}


def _upper(value: object) -> object:
    return value.strip().upper() if isinstance(value, str) else value


def _lower(value: object) -> object:
    return value.strip().lower() if isinstance(value, str) else value


class Band(str, enum.Enum):
    """Where a score falls against a category's thresholds: below review, borderline, at or above block."""

    BELOW = "BELOW"
    BORDERLINE = "BORDERLINE"
    ABOVE = "ABOVE"


class Action(str, enum.Enum):
    """Decision for an image or a category, ordered by severity."""

    ALLOW = "ALLOW"
    REVIEW = "REVIEW"
    BLOCK = "BLOCK"

    @property
    def severity(self) -> int:
        return _SEVERITY[self]


_SEVERITY = {Action.ALLOW: 0, Action.REVIEW: 1, Action.BLOCK: 2}

# Staff write `block`, `Block` or `BLOCK`; all mean the same action.
ActionField = Annotated[Action, BeforeValidator(_upper)]


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


ExplainerRoleField = Annotated[ExplainerRole, BeforeValidator(_lower)]

# The widest CLIP embedding open_clip ships (ViT-bigG-14: 1280); a probe is one weight per dimension.
MAX_PROBE_DIM = 2048


class ProbeTraining(_Strict):
    """What `moderation policy train` measured: for the reader of a policy diff, not used to decide."""

    examples: int = Field(ge=2, description="labelled images the probe was fitted on")
    positives: int = Field(ge=1, description="of which labelled with this category")
    held_out: int = Field(ge=0, description="labelled images kept apart to measure it")
    held_out_auc: float | None = Field(default=None, ge=0.0, le=1.0, description="ROC AUC of the probe on the held-out images")
    zero_shot_auc: float | None = Field(
        default=None, ge=0.0, le=1.0, description="ROC AUC of the category's prompts on the same held-out images"
    )
    labels: str = Field(default="", max_length=500, description="where the labelled images came from")
    trained_at: str = Field(default="", max_length=40, description="when it was trained (ISO 8601)")


class Probe(_Strict):
    """A category learnt from labelled examples: score = sigmoid(weights . x + bias) on the image's normalised CLIP embedding.

    Written by `moderation policy train`; it replaces the prompts' zero-shot score for
    its category. It lives in the policy text, so a policy version names exactly one
    probe and every path that carries a policy (reload, ConfigMap, `policy diff`,
    golden tests, shadows) carries it too.
    """

    model: str = Field(min_length=1, max_length=200, description="the CLIP model whose embeddings it was trained on")
    weights: str = Field(
        min_length=4, max_length=4 * ((4 * MAX_PROBE_DIM + 2) // 3), description="base64 of the float32 little-endian weights, one per embedding dimension"
    )
    bias: float = Field(allow_inf_nan=False, description="the intercept")
    training: ProbeTraining | None = None

    @field_validator("weights")
    @classmethod
    def _weights_decode(cls, value: str) -> str:
        try:
            raw = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("probe weights must be base64 text, as `moderation policy train` writes them") from None
        if len(raw) % 4 or not 1 <= len(raw) // 4 <= MAX_PROBE_DIM:
            raise ValueError(f"probe weights must be 1 to {MAX_PROBE_DIM} float32 values; these are {len(raw)} bytes")
        if any(math.isnan(w) or math.isinf(w) for w in _unpack_floats(raw)):
            raise ValueError("probe weights must be finite numbers")
        return value

    @property
    def dim(self) -> int:
        return len(base64.b64decode(self.weights)) // 4

    def vector(self) -> list[float]:
        """The weights as numbers (numpy/torch callers wrap them)."""
        return list(_unpack_floats(base64.b64decode(self.weights)))


def _unpack_floats(raw: bytes) -> tuple[float, ...]:
    return struct.unpack(f"<{len(raw) // 4}f", raw)


def encode_probe_weights(values: Any) -> str:
    """base64 of float32 little-endian: what Probe.weights holds."""
    floats = [float(v) for v in values]
    return base64.b64encode(struct.pack(f"<{len(floats)}f", *floats)).decode("ascii")


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
    on_block: ActionField = Field(default=Action.BLOCK, description="BLOCK or REVIEW when the block threshold is crossed")
    explainer: ExplainerRoleField = Field(
        default=ExplainerRole.ADVISORY,
        description="'advisory' (default: SmolVLM2's verdict only informs the reviewer) or 'decisive' "
        "(its verdict settles borderline cases)",
    )
    probe: Probe | None = Field(
        default=None,
        description="a linear probe trained on labelled examples (`moderation policy train`); when present it, not the "
        "prompts, scores the category",
    )

    @field_validator("on_block")
    @classmethod
    def _on_block_escalates(cls, value: Action) -> Action:
        if value is Action.ALLOW:
            raise ValueError("on_block must be BLOCK or REVIEW; crossing the block threshold can never ALLOW")
        return value


class BankRule(_Strict):
    """What a match against one bank of known content does under this policy (docs/banks.md)."""

    bank: str = Field(
        min_length=1, max_length=128, pattern=r"^\S(.*\S)?$", description="the bank's name, as `moderation bank list` shows it"
    )
    category: Identifier = Field(description="the policy category a match is judged under (its clause is the one cited)")
    action: ActionField = Field(
        default=Action.BLOCK, description="BLOCK or REVIEW: what a match forces on the category, whatever its score"
    )

    @field_validator("action")
    @classmethod
    def _action_escalates(cls, value: Action) -> Action:
        if value is Action.ALLOW:
            raise ValueError("a bank match forces BLOCK or REVIEW; a match can never ALLOW")
        return value


class PolicyMode(str, enum.Enum):
    ACTIVE = "active"
    SHADOW = "shadow"


PolicyModeField = Annotated[PolicyMode, BeforeValidator(_lower)]


def _one_slot(template: str) -> str:
    if template.count("{}") != 1:
        raise ValueError(f"template {template!r} must contain exactly one '{{}}' where the prompt goes")
    return template


Template = Annotated[str, StringConstraints(min_length=3, max_length=200), AfterValidator(_one_slot)]


class Policy(_Strict):
    id: Identifier = Field(description="lower_snake_case policy id")
    version: str = Field(
        min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._+-]*$", description="a version string such as '2026-11-23.1'"
    )
    description: str = ""
    default: bool = Field(default=False, description="serve this policy when a request names none")
    mode: PolicyModeField = Field(
        default=PolicyMode.ACTIVE,
        description="'active' decides requests; 'shadow' is evaluated beside the policy named in shadow_of, "
        "and its decisions go only to metrics and the audit log",
    )
    shadow_of: str | None = Field(default=None, pattern=IDENTIFIER, description="the active policy id a shadow policy runs beside")
    model: str | None = Field(
        default=None,
        description="the CLIP model the thresholds were calibrated for, e.g. 'ViT-B-32/laion2b_s34b_b79k'",
    )
    templates: list[Template] = Field(
        default_factory=lambda: ["a photo of {}."],
        min_length=1,
        description="prompt templates, each containing '{}' where a prompt goes",
    )
    benign: list[Prompt] = Field(min_length=1, description="prompts for ordinary, allowed images")
    escalation: EscalationSettings = Field(default_factory=EscalationSettings)
    categories: list[Category] = Field(min_length=1)
    banks: list[BankRule] = Field(
        default_factory=list,
        description="banks of known content this policy matches, each with the category and action a match forces",
    )

    @field_validator("version", mode="before")
    @classmethod
    def _version_as_text(cls, value: object) -> object:
        # YAML reads `version: 3` or `version: 1.2` as numbers; a version is text.
        return str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value

    @classmethod
    def rule_problems(cls, data: Mapping[str, Any]) -> list[RuleProblem]:
        """The rules spanning fields, on raw YAML data (see policy_rule_problems)."""
        return policy_rule_problems(data)

    @model_validator(mode="after")
    def _policy_rules(self) -> Policy:
        # The same checks the loader runs on raw YAML (so that they are reported
        # together with field errors); here they guard policies built in code.
        problems = policy_rule_problems(self.model_dump(mode="json"))
        if problems:
            raise PydanticCustomError(POLICY_RULES_ERROR, "{message}", {"message": "; ".join(p.message for p in problems)})
        return self

    @property
    def text_count(self) -> int:
        """Texts a compile of this policy encodes (at most MAX_TEXTS)."""
        prompts = len(self.benign) + sum(len(c.positive) + len(c.contrast) for c in self.categories)
        return policy_text_count(len(self.templates), prompts)

    def category(self, category_id: str) -> Category:
        for category in self.categories:
            if category.id == category_id:
                return category
        raise KeyError(category_id)


POLICY_RULES_ERROR = "policy_rules"

Loc = tuple[str | int, ...]


class RuleProblem:
    """A problem spanning fields: where (a pydantic-style location), what, and where it first appeared."""

    __slots__ = ("loc", "message", "first")

    def __init__(self, loc: Loc, message: str, first: Loc | None = None):
        self.loc, self.message, self.first = loc, message, first

    def __repr__(self) -> str:
        return f"RuleProblem({self.loc!r}, {self.message!r}, {self.first!r})"


def _items(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _text(value: object) -> str | None:
    value = getattr(value, "value", value)  # enums, as in a model_dump
    return value if isinstance(value, str) else None


def policy_text_count(templates: int, prompts: int) -> int:
    """Texts a compile encodes: every prompt in every template."""
    return templates * prompts


def policy_rule_problems(data: Mapping[str, Any]) -> list[RuleProblem]:
    """Rules spanning fields (shadow settings, unique ids, cost limits), on raw YAML data.

    Tolerant of malformed input: a field of the wrong type is a field error the
    schema reports; the rules that need it are skipped. Run on raw data, these
    come out in the same run as every field error.
    """
    problems: list[RuleProblem] = []
    mode = (_text(data.get("mode")) or "active").strip().lower()
    shadow_of = data.get("shadow_of")
    if mode == "shadow":
        if not shadow_of:
            problems.append(RuleProblem(("mode",), "a shadow policy needs shadow_of: the id of the active policy it runs beside"))
        if data.get("default") is True:
            problems.append(RuleProblem(("default",), "a shadow policy cannot be the default: it never decides requests"))
        if shadow_of and shadow_of == data.get("id"):
            problems.append(RuleProblem(("shadow_of",), "shadow_of must name another policy, not this one"))
    elif shadow_of and mode == "active":
        problems.append(RuleProblem(("shadow_of",), "shadow_of is only for policies with mode: shadow"))

    categories = [c if isinstance(c, Mapping) else {} for c in _items(data.get("categories"))]
    for what, key_of in (
        ("category id", lambda c: (("id",), c.get("id"))),
        ("clause id", lambda c: (("clause", "id"), c.get("clause", {}).get("id") if isinstance(c.get("clause"), Mapping) else None)),
    ):
        first_seen: dict[str, int] = {}
        for number, category in enumerate(categories):
            path, value = key_of(category)
            if not isinstance(value, str):
                continue
            if value in first_seen:
                problems.append(
                    RuleProblem(
                        ("categories", number, *path),
                        f"{what} {value!r} is used twice; each {what} must be unique in the policy",
                        ("categories", first_seen[value], *path),
                    )
                )
            else:
                first_seen[value] = number

    problems.extend(_bank_rule_problems(data, categories))
    problems.extend(_probe_model_problems(data, categories))

    templates = _items(data.get("templates")) if "templates" in data else [None]
    prompts = len(_items(data.get("benign")))
    if len(categories) > MAX_CATEGORIES:
        problems.append(RuleProblem(("categories",), _over("categories", len(categories), MAX_CATEGORIES, "MAX_CATEGORIES")))
    if len(templates) > MAX_TEMPLATES:
        problems.append(RuleProblem(("templates",), _over("templates", len(templates), MAX_TEMPLATES, "MAX_TEMPLATES")))
    for number, category in enumerate(categories):
        own = len(_items(category.get("positive"))) + len(_items(category.get("contrast")))
        prompts += own
        if own > MAX_CATEGORY_PROMPTS:
            problems.append(
                RuleProblem(
                    ("categories", number),
                    _over("positive and contrast prompts", own, MAX_CATEGORY_PROMPTS, "MAX_CATEGORY_PROMPTS", "a category"),
                )
            )
    if prompts > MAX_PROMPTS:
        problems.append(RuleProblem((), _over("prompts (benign, positive and contrast together)", prompts, MAX_PROMPTS, "MAX_PROMPTS")))
    texts = policy_text_count(len(templates), prompts)
    if texts > MAX_TEXTS:
        problems.append(
            RuleProblem(
                ("templates",),
                f"{len(templates)} templates x {prompts} prompts = {texts} texts to encode; a policy may have at most "
                f"{MAX_TEXTS} (limit MAX_TEXTS, docs/policies.md#limits): use fewer templates or prompts",
            )
        )
    return problems


def _bank_rule_problems(data: Mapping[str, Any], categories: list[Mapping[str, Any]]) -> list[RuleProblem]:
    """Each bank rule names a category of this policy; a bank is named once (one rule decides what its match does)."""
    problems: list[RuleProblem] = []
    rules = [r if isinstance(r, Mapping) else {} for r in _items(data.get("banks"))]
    if len(rules) > MAX_BANK_RULES:
        problems.append(RuleProblem(("banks",), _over("bank rules", len(rules), MAX_BANK_RULES, "MAX_BANK_RULES")))
    category_ids = {c.get("id") for c in categories if isinstance(c.get("id"), str)}
    first_seen: dict[str, int] = {}
    for number, rule in enumerate(rules):
        category, bank = rule.get("category"), rule.get("bank")
        if isinstance(category, str) and category not in category_ids:
            problems.append(
                RuleProblem(
                    ("banks", number, "category"),
                    f"bank rule names category {category!r}, which this policy does not have; "
                    f"its categories: {', '.join(sorted(category_ids)) or 'none'}",
                )
            )
        if isinstance(bank, str):
            if bank in first_seen:
                problems.append(
                    RuleProblem(
                        ("banks", number, "bank"),
                        f"bank {bank!r} has two rules; one rule says what its match does",
                        ("banks", first_seen[bank], "bank"),
                    )
                )
            else:
                first_seen[bank] = number
    return problems


def _probe_model_problems(data: Mapping[str, Any], categories: list[Mapping[str, Any]]) -> list[RuleProblem]:
    """A probe is only meaningful on the embeddings it was trained on: the policy names that model (the server checks it)."""
    problems: list[RuleProblem] = []
    model = _text(data.get("model"))
    for number, category in enumerate(categories):
        probe = category.get("probe")
        probe_model = _text(probe.get("model")) if isinstance(probe, Mapping) else None
        if probe_model is None:
            continue
        if model is None:
            problems.append(
                RuleProblem(
                    ("categories", number, "probe", "model"),
                    f"a policy with a probe must name its model: add `model: {probe_model}` (the model the probe was trained on)",
                )
            )
        elif normalise_model_id(model) != normalise_model_id(probe_model):
            problems.append(
                RuleProblem(
                    ("categories", number, "probe", "model"),
                    f"the probe was trained on model {probe_model!r} but the policy is for {model!r}; "
                    "retrain it with `moderation policy train` on the policy's model",
                )
            )
    return problems


def _over(what: str, count: int, limit: int, name: str, owner: str = "a policy") -> str:
    return f"{count} {what}; {owner} may have at most {limit} (limit {name}, docs/policies.md#limits)"


def content_sha256(policy: Policy) -> str:
    """A hash of what a policy decides with, blind to comments, layout and fields left at their default.

    Equal hashes mean equal rules: the server and `moderation policy validate`
    compare it to refuse a changed policy that kept its version.
    """
    canonical = json.dumps(policy.model_dump(mode="json", exclude_defaults=True), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def normalise_model_id(model_id: str) -> str:
    """Model ids compare case-insensitively and ignore surrounding spaces."""
    return re.sub(r"\s+", "", model_id).lower()
