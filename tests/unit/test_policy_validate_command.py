"""`moderation policy validate`: the server's directory check, offline, against a previous copy or a running server's versions."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from typer.testing import CliRunner

from moderation.cli import app
from tests.conftest import POLICIES
from tests.unit.test_policy_directory import policy


def validate(*args: str):  # noqa: ANN201
    return CliRunner().invoke(app, ["policy", "validate", *args])


def test_validate_a_file_checks_its_whole_directory(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(policy("a", extra="default: true\n"))
    (tmp_path / "b.yaml").write_text(policy("b", extra="default: true\n"))
    result = validate(str(tmp_path / "a.yaml"))
    assert result.exit_code == 1
    assert f"{tmp_path / 'b.yaml'}:9: default: more than one policy is marked default" in result.output
    (tmp_path / "b.yaml").write_text(policy("b"))
    result = validate(str(tmp_path / "a.yaml"), str(tmp_path / "b.yaml"))
    assert result.exit_code == 0, result.output
    assert result.output.count("✓") == 2  # the directory once, not once per file


def test_validate_refuses_files_the_server_would_not_load(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(policy())
    (tmp_path / "p.yaml.bak").write_text(policy())
    result = validate(str(tmp_path / "p.yaml.bak"), str(tmp_path / "missing.yaml"))
    assert result.exit_code == 1
    assert "p.yaml.bak: the server does not load this file" in result.output
    assert "missing.yaml: no such file or directory" in result.output


def test_validate_against_a_previous_copy(tmp_path: Path) -> None:
    previous = tmp_path / "previous.yaml"
    previous.write_text(policy())
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "p.yaml").write_text(policy().replace("a gun", "a rifle"))
    result = validate(str(policies), "--previous", str(previous))
    assert result.exit_code == 1
    assert re.search(rf"p\.yaml:2: version: policy 'p' changed but its version is still '1' \(as in {re.escape(str(previous))}\)", result.output)
    (policies / "p.yaml").write_text(policy(version="2").replace("a gun", "a rifle"))
    assert validate(str(policies), "--previous", str(previous)).exit_code == 0
    # A previous directory (a checkout) works the same way; comment-only edits keep the version.
    (policies / "p.yaml").write_text("# reworded comment\n" + policy())
    result = validate(str(policies), "--previous", str(POLICIES))
    assert result.exit_code == 0, result.output


def test_validate_applies_the_model_rule(tmp_path: Path) -> None:
    shutil.copy(POLICIES / "default.yaml", tmp_path / "default.yaml")
    assert validate(str(tmp_path), "--model-id", "ViT-B-32/laion2b_s34b_b79k").exit_code == 0
    result = validate(str(tmp_path), "--model-id", "ViT-L-14/openai")
    assert result.exit_code == 1 and "calibrated for model 'ViT-B-32/laion2b_s34b_b79k'" in result.output
    result = validate(str(tmp_path), "--model-id", "ViT-L-14/random")
    assert result.exit_code == 0 and "ignored: random weights" in result.output


def test_shipped_policies_validate() -> None:
    result = validate(*map(str, sorted(POLICIES.glob("*.yaml"))))
    assert result.exit_code == 0, result.output
    assert f"✓ {POLICIES / 'default.yaml'}: policy default@" in result.output


def test_validate_names_the_configmap_line_a_new_policy_file_needs(tmp_path: Path) -> None:
    """Issue 19: a new policy file was silently left out of the ConfigMap unless policies/Kustomization gained a line."""
    shutil.copy(POLICIES / "default.yaml", tmp_path / "default.yaml")
    shutil.copy(POLICIES / "Kustomization", tmp_path / "Kustomization")
    assert validate(str(tmp_path)).exit_code == 0
    (tmp_path / "strict.yaml").write_text(policy("strict"))
    result = validate(str(tmp_path / "strict.yaml"))
    assert result.exit_code == 1
    assert re.search(r'strict\.yaml: is not listed in .*Kustomization, so Kubernetes never sees it: add the line "      - strict\.yaml" after line \d+', result.output)
    (tmp_path / "strict.yaml").unlink()
    (tmp_path / "default.yaml").rename(tmp_path / "main.yaml")
    result = validate(str(tmp_path))
    assert result.exit_code == 1 and "lists default.yaml, which is not a policy file" in result.output
    assert "main.yaml: is not listed" in result.output
