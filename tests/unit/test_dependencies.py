"""The dependency rules of docs/architecture.md, read from the source's imports.

Dependencies point one way: cli/serving -> runtime -> core -> (escalation, policy)
-> nothing above; signals plug into the core through their registry, which the core
never names; state, offline and ops are used from above and import nothing of serving
or cli. The judging core, policy and decision logic import no torch and no grpc.
Low-level modules take narrow metric callables; listeners see results only.
"""

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


def project_imports(path: Path, *prefixes: str) -> set[str]:
    return {m for m in imported_modules(path) if any(m == p or m.startswith(p + ".") for p in prefixes)}


def ids(path: Path) -> str:
    return str(path.relative_to(PACKAGE))


@pytest.mark.parametrize("path", files("policy"), ids=ids)
def test_policy_imports_nothing_of_the_project_but_itself(path: Path) -> None:
    outside = {m for m in imported_modules(path) if m.startswith("moderation") and not m.startswith("moderation.policy")}
    assert not outside, f"{path.name} imports {sorted(outside)}"


@pytest.mark.parametrize("path", files("policy", "core", "video"), ids=ids)
def test_core_and_policy_import_no_torch_and_no_grpc(path: Path) -> None:
    heavy = {m for m in imported_modules(path) if m.split(".")[0] in {"torch", "open_clip", "transformers", "grpc"}}
    assert not heavy, f"{ids(path)} imports {sorted(heavy)}"


@pytest.mark.parametrize("path", files("core", "signals", "escalation", "policy", "video"), ids=ids)
def test_the_core_and_below_import_nothing_above_them(path: Path) -> None:
    above = project_imports(path, "moderation.serving", "moderation.cli", "moderation.runtime", "moderation.offline", "moderation.state")
    assert not above, f"{ids(path)} imports {sorted(above)}"


@pytest.mark.parametrize("path", files("runtime.py", "offline", "state", "ops", "core", "signals", "escalation", "policy", "video"), ids=ids)
def test_nothing_below_the_shell_imports_it(path: Path) -> None:
    shell = project_imports(path, "moderation.serving", "moderation.cli")
    assert not shell, f"{ids(path)} imports {sorted(shell)}"


def test_no_module_is_left_flat_at_the_package_root() -> None:
    """A folder shows one part of the architecture; only the entry points sit at the root."""
    flat = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert flat == ["__init__.py", "__main__.py", "runtime.py"], flat


@pytest.mark.parametrize("path", files("core"), ids=ids)
def test_the_core_names_no_signal(path: Path) -> None:
    """Signals reach the core through moderation/signals/registry.py: adding one never edits the core."""
    signals = project_imports(path, "moderation.signals")
    assert not signals, f"{ids(path)} imports {sorted(signals)}"


@pytest.mark.parametrize("path", files("core", "signals", "escalation", "policy", "state"), ids=ids)
def test_low_level_modules_take_narrow_metrics_not_the_metrics_object(path: Path) -> None:
    """They get the callables they report through; only the shell and runtime.py know ModerationMetrics."""
    metrics = project_imports(path, "moderation.ops.metrics") | {m for m in imported_modules(path) if m.split(".")[0] == "prometheus_client"}
    assert not metrics, f"{ids(path)} imports {sorted(metrics)}"


@pytest.mark.parametrize("path", files("serving/listeners"), ids=ids)
def test_listeners_know_nothing_of_grpc_or_the_servicer(path: Path) -> None:
    """A listener sees results only: no transport, no request handling, no other listener's module."""
    found = {m for m in imported_modules(path) if m.split(".")[0] == "grpc"} | project_imports(
        path, "moderation.serving.servicer", "moderation.serving.shell", "moderation.serving.app", "moderation.cli"
    )
    assert not found, f"{ids(path)} imports {sorted(found)}"


def test_every_registered_signal_is_a_module_of_the_signals_package() -> None:
    from moderation.signals.registry import SIGNALS

    for name, target in SIGNALS.items():
        module, _, factory = target.partition(":")
        assert module.startswith("moderation.signals.") and factory, f"signal {name!r}: {target!r}"
        source = PACKAGE.parent / (module.replace(".", "/") + ".py")
        assert f"def {factory}(" in source.read_text(encoding="utf-8"), f"signal {name!r}: no {factory}() in {source}"
