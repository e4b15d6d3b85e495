"""docs/policies.md documents every field of the schema and every limit, with the values in the code."""

from __future__ import annotations

import re

from pydantic import BaseModel

from moderation.policy import loader
from moderation.policy.compile import COMPILE_BUDGET_S
from moderation.policy.directory import MAX_POLICY_FILES, check_policy_dir
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


def test_shadow_example_in_changing_a_policy_works_as_written(tmp_path) -> None:
    """Issue 22: the shadow step copied the active file and kept its `default: true`, which is refused; the doc says to delete it."""
    import pytest

    from moderation.policy.loader import PolicyFileError

    guide = (ROOT / "docs" / "changing-a-policy.md").read_text()
    shadow_step = guide.split("## 6. Ship in shadow", 1)[1].split("## 7.", 1)[0]
    assert "without `default: true`" in shadow_step
    active = (ROOT / "policies" / "default.yaml").read_text()
    assert "\ndefault: true\n" in active
    copy = active.replace("id: default\n", "id: default_next\nmode: shadow\nshadow_of: default\n").replace(
        'version: "2026-11-23.1"', 'version: "2026-11-24.1"'
    )
    (tmp_path / "default.yaml").write_text(active)
    (tmp_path / "default_next.yaml").write_text(copy)
    with pytest.raises(PolicyFileError) as refused:  # the copy as it was: what the doc warns about
        check_policy_dir(tmp_path)
    assert any("a shadow policy cannot be the default" in str(p) for p in refused.value.problems)
    assert "a shadow policy cannot be the default" in " ".join(shadow_step.split())
    (tmp_path / "default_next.yaml").write_text(copy.replace("\ndefault: true\n", "\n"))  # as the doc says
    assert {p.policy.id for p in check_policy_dir(tmp_path).policies} == {"default", "default_next"}
