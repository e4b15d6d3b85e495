"""The dependency rules of docs/architecture.md, read from the source's imports."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "moderation"


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def files(*relative: str) -> list[Path]:
    paths = []
    for name in relative:
        target = PACKAGE / name
        paths.extend(sorted(target.rglob("*.py")) if target.is_dir() else [target])
    return paths


@pytest.mark.parametrize("path", files("policy"), ids=lambda p: p.name)
def test_policy_imports_nothing_of_the_project_but_itself(path: Path) -> None:
    outside = {m for m in imported_modules(path) if m.startswith("moderation") and not m.startswith("moderation.policy")}
    assert not outside, f"{path.name} imports {sorted(outside)}"


@pytest.mark.parametrize("path", files("policy", "decision.py"), ids=lambda p: p.name)
def test_policy_and_decisions_import_no_torch(path: Path) -> None:
    assert not {m for m in imported_modules(path) if m.split(".")[0] in {"torch", "open_clip", "transformers"}}


@pytest.mark.parametrize(
    "path",
    files("runtime.py", "pipeline.py", "offline.py", "clip", "escalation", "cli/policy.py", "cli/compare.py", "cli/common.py"),
    ids=lambda p: str(p.relative_to(PACKAGE)),
)
def test_nothing_below_the_server_imports_it(path: Path) -> None:
    assert not {m for m in imported_modules(path) if m.startswith("moderation.server")}
