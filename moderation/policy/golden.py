"""Golden test cases for a policy: image -> expected action, optionally categories and bands.

A policy file `policies/NAME.yaml` keeps its cases in `policies/tests/NAME.tests.yaml`,
with image paths relative to that file. They live in a subfolder, not beside the
policy, because the server loads every *.yaml at the top of the policies directory
(and a Kubernetes ConfigMap built from it ships only top-level files): cases and
sample images must never reach it.

No torch here: checking a case against a decision is a pure function, so the same
code serves `moderation policy test` with a real model and the unit tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydantic import Field, field_validator, model_validator

from moderation.decision import Band, Decision
from moderation.policy.loader import PolicyProblem, read_yaml_file, validate_yaml_text
from moderation.policy.schema import Action, Identifier, Policy, _Strict

CASES_FOLDER = "tests"
CASES_SUFFIX = ".tests.yaml"


class GoldenCase(_Strict):
    image: str = Field(min_length=1, description="image file, relative to the cases file, e.g. 'samples/coffee.jpg'")
    expect: Action = Field(description="the image's action: ALLOW, REVIEW or BLOCK")
    flagged: list[Identifier] | None = Field(
        default=None,
        description="exactly the category ids whose score must reach their review threshold ([] for none); "
        "leave out to not check",
    )
    bands: dict[Identifier, Band] = Field(
        default_factory=dict, description="category id -> BELOW, BORDERLINE or ABOVE, for the categories to check"
    )
    note: str = Field(default="", description="why this case is here, for the next reader")

    @model_validator(mode="after")
    def _consistent(self) -> GoldenCase:
        # Contradictory expectations could never pass; say so when the file is read,
        # not as a confusing failure after scoring.
        if self.flagged is not None:
            for category_id, band in self.bands.items():
                if (band is Band.BELOW) == (category_id in self.flagged):
                    state = "lists" if category_id in self.flagged else "leaves out"
                    raise ValueError(f"flagged {state} {category_id!r} but bands says {band.value}")
            if not self.flagged and self.expect is not Action.ALLOW:
                raise ValueError(f"flagged is empty, so the action can only be ALLOW, not {self.expect.value}")
            if self.flagged and self.expect is Action.ALLOW:
                raise ValueError("flagged names categories, so the action cannot be ALLOW")
        if self.expect is Action.ALLOW and any(band is not Band.BELOW for band in self.bands.values()):
            raise ValueError("an ALLOW case can only expect BELOW bands")
        return self


class GoldenCases(_Strict):
    policy: Identifier = Field(description="id of the policy these cases test")
    cases: list[GoldenCase] = Field(min_length=1, description="a list of cases, each with image and expect")

    @field_validator("cases")
    @classmethod
    def _images_unique(cls, cases: list[GoldenCase]) -> list[GoldenCase]:
        seen: set[str] = set()
        for case in cases:
            if case.image in seen:
                raise ValueError(f"image {case.image!r} appears in more than one case")
            seen.add(case.image)
        return cases


@dataclass(frozen=True)
class CasesFile:
    path: Path
    cases: GoldenCases

    def image_path(self, case: GoldenCase) -> Path:
        return (self.path.parent / case.image).resolve()


def cases_path_for(policy_path: Path) -> Path:
    """Where the golden cases of `policy_path` live, by convention."""
    return policy_path.parent / CASES_FOLDER / f"{policy_path.stem}{CASES_SUFFIX}"


def load_cases_file(path: Path) -> CasesFile:
    text = read_yaml_file(path)
    cases = validate_yaml_text(text, str(path), GoldenCases, "a cases file must be a YAML mapping with policy and cases")
    return CasesFile(path, cases)


def problems_against_policy(cases_file: CasesFile, policy: Policy) -> list[PolicyProblem]:
    """Cases that can never be checked against `policy`: wrong policy id, unknown category ids."""
    source = str(cases_file.path)
    problems = []
    if cases_file.cases.policy != policy.id:
        problems.append(PolicyProblem(source, None, "policy", f"cases are for policy {cases_file.cases.policy!r}, not {policy.id!r}"))
    known = {c.id for c in policy.categories}
    for number, case in enumerate(cases_file.cases.cases):
        named = [*(case.flagged or []), *case.bands]
        for category_id in dict.fromkeys(named):
            if category_id not in known:
                problems.append(
                    PolicyProblem(
                        source,
                        None,
                        f"cases[{number}]",
                        f"category {category_id!r} is not in policy {policy.id!r} (it has {', '.join(sorted(known))})",
                    )
                )
    return problems


def mismatches(case: GoldenCase, decision: Decision) -> list[str]:
    """What differs between the expectations of `case` and `decision`; empty when it passes."""
    found = []
    if decision.action is not case.expect:
        found.append(f"action {decision.action.value}, expected {case.expect.value}")
    actual_flagged = sorted(c.category_id for c in decision.categories if c.band is not Band.BELOW)
    if case.flagged is not None and sorted(case.flagged) != actual_flagged:
        found.append(f"flagged {actual_flagged or 'none'}, expected {sorted(case.flagged) or 'none'}")
    by_id = {c.category_id: c for c in decision.categories}
    for category_id, band in case.bands.items():
        actual = by_id[category_id]
        if actual.band is not band:
            found.append(f"{category_id} {actual.band.value} ({actual.score:.3f}), expected {band.value}")
    return found
