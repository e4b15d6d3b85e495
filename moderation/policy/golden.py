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

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BeforeValidator, Field, model_validator
from pydantic_core import PydanticCustomError

from moderation.policy.loader import PolicyProblem, dotted, line_of, read_yaml_file, validate_yaml_text
from moderation.policy.schema import POLICY_RULES_ERROR, Action, ActionField, Band, Identifier, Policy, RuleProblem, _Strict, _upper

BandField = Annotated[Band, BeforeValidator(_upper)]

CASES_FOLDER = "tests"
CASES_SUFFIX = ".tests.yaml"


class GoldenCase(_Strict):
    image: str = Field(min_length=1, description="image file, relative to the cases file, e.g. 'samples/coffee.jpg'")
    expect: ActionField = Field(description="the image's action: ALLOW, REVIEW or BLOCK (any case)")
    flagged: list[Identifier] | None = Field(
        default=None,
        description="exactly the category ids whose score must reach their review threshold ([] for none); "
        "leave out to not check",
    )
    bands: dict[Identifier, BandField] = Field(
        default_factory=dict, description="category id -> BELOW, BORDERLINE or ABOVE (any case), for the categories to check"
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

    @classmethod
    def rule_problems(cls, data: Mapping[str, Any]) -> list[RuleProblem]:
        """Rules spanning cases, on raw YAML data: reported together with every field error."""
        problems = []
        first: dict[str, int] = {}
        cases = data.get("cases")
        for number, case in enumerate(cases if isinstance(cases, list) else []):
            image = case.get("image") if isinstance(case, Mapping) else None
            if not isinstance(image, str):
                continue
            if image in first:
                problems.append(
                    RuleProblem(("cases", number, "image"), f"image {image!r} appears in more than one case", ("cases", first[image], "image"))
                )
            else:
                first[image] = number
        return problems

    @model_validator(mode="after")
    def _rules(self) -> GoldenCases:
        problems = self.rule_problems(self.model_dump(mode="json"))
        if problems:
            raise PydanticCustomError(POLICY_RULES_ERROR, "{message}", {"message": "; ".join(p.message for p in problems)})
        return self


@dataclass(frozen=True)
class CasesFile:
    path: Path
    cases: GoldenCases
    text: str = field(default="", repr=False)  # the YAML, for the line numbers of later problems

    def image_path(self, case: GoldenCase) -> Path:
        return (self.path.parent / case.image).resolve()

    def case_loc(self, case: GoldenCase) -> tuple[str, int]:
        """Where `case` is in the file, for `problem`."""
        return ("cases", self.cases.cases.index(case))

    def problem(self, loc: tuple[Any, ...], message: str) -> PolicyProblem:
        """A problem found after loading (scoring, another policy), with the line and field it concerns."""
        try:
            data = yaml.safe_load(self.text)
        except yaml.YAMLError:
            data = None
        return PolicyProblem(str(self.path), line_of(self.text, loc), dotted(loc, data), message)


def cases_path_for(policy_path: Path) -> Path:
    """Where the golden cases of `policy_path` live, by convention."""
    return policy_path.parent / CASES_FOLDER / f"{policy_path.stem}{CASES_SUFFIX}"


def load_cases_file(path: Path) -> CasesFile:
    text = read_yaml_file(path)
    cases = validate_yaml_text(text, str(path), GoldenCases, "a cases file must be a YAML mapping with policy and cases")
    return CasesFile(path, cases, text)


def problems_against_policy(cases_file: CasesFile, policy: Policy) -> list[PolicyProblem]:
    """Cases that can never be checked against `policy`: wrong policy id, unknown category ids."""
    problems = []
    if cases_file.cases.policy != policy.id:
        problems.append(cases_file.problem(("policy",), f"cases are for policy {cases_file.cases.policy!r}, not {policy.id!r}"))
    known = {c.id for c in policy.categories}
    for number, case in enumerate(cases_file.cases.cases):
        for key, named in (("flagged", case.flagged or []), ("bands", list(case.bands))):
            for category_id in dict.fromkeys(named):
                if category_id not in known:
                    problems.append(
                        cases_file.problem(
                            ("cases", number, key),
                            f"category {category_id!r} is not in policy {policy.id!r} (it has {', '.join(sorted(known))})",
                        )
                    )
    return problems
