"""docs/policies.md documents every field of the schema and every limit, with the values in the code."""

from __future__ import annotations

import re

from pydantic import BaseModel

from moderation.policy import loader
from moderation.policy.compile import COMPILE_BUDGET_S
from moderation.policy.directory import MAX_POLICY_FILES
from moderation.policy.golden import GoldenCase, GoldenCases
from moderation.policy.schema import LIMITS, Category, Policy
from tests.conftest import ROOT

DOC = (ROOT / "docs" / "policies.md").read_text()


def documented_tables() -> list[dict[str, str]]:
    """Each markdown table of the doc: first-column name (in backticks) -> second column."""
    tables: list[dict[str, str]] = []
    current: dict[str, str] | None = None
    for line in DOC.splitlines():
        row = re.match(r"^\| `([^`]+)` \| ([^|]*) \|", line)
        if row:
            if current is None:
                current = {}
                tables.append(current)
            current[row.group(1)] = row.group(2).strip()
        elif not line.startswith("|"):
            current = None
    return tables


def schema_fields(model: type[BaseModel], prefix: str = "") -> set[str]:
    """Field names as the doc writes them: nested mappings dotted (`clause.id`), lists of mappings by name."""
    names = set()
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            names |= schema_fields(annotation, f"{prefix}{name}.")
        else:
            names.add(f"{prefix}{name}")
    return names


def test_every_schema_field_is_documented_and_nothing_else() -> None:
    tables = [set(table) for table in documented_tables()]
    for model in (Policy, Category, GoldenCases, GoldenCase):
        fields = schema_fields(model)
        assert fields in tables, f"docs/policies.md needs a table of exactly the {model.__name__} fields {sorted(fields)}"


def test_every_limit_is_documented_with_its_value() -> None:
    limits = {**LIMITS, "MAX_POLICY_FILES": MAX_POLICY_FILES, "MAX_POLICY_BYTES": loader.MAX_POLICY_BYTES, "COMPILE_BUDGET_S": COMPILE_BUDGET_S}
    documented = next(table for table in documented_tables() if "MAX_TEXTS" in table)
    assert set(documented) == set(limits)
    for name, value in limits.items():
        assert float(documented[name]) == value, f"docs/policies.md says {name} is {documented[name]}, the code {value}"
