"""The policy ConfigMap's generator: every policy file must be listed, or Kubernetes never sees it.

Kustomize has no globs in `configMapGenerator.files`, so a new policy file is
silently left out of the ConfigMap until its line is added, and a deleted file whose
line stays breaks `kubectl kustomize`. `moderation policy validate` checks a policy
directory's `Kustomization` (or kustomization.yaml) against the files the server
loads, and names the line to add or remove; deploy/k8s/validate.py checks the
rendered ConfigMap the same way.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from moderation.policy.loader import PolicyProblem

KUSTOMIZATION_NAMES = ("Kustomization", "kustomization.yaml", "kustomization.yml")
POLICY_CONFIGMAP = "moderation-policies"


def kustomization_of(directory: Path) -> Path | None:
    """The kustomization file beside the policies, if the directory has one."""
    return next((directory / name for name in KUSTOMIZATION_NAMES if (directory / name).is_file()), None)


def listed_files(kustomization: Path) -> list[str]:
    """The file names the policy ConfigMap's generator lists (`key=path` entries give their path)."""
    document = yaml.safe_load(kustomization.read_text(encoding="utf-8")) or {}
    names = []
    for generator in document.get("configMapGenerator") or []:
        if generator.get("name") != POLICY_CONFIGMAP:
            continue
        for entry in generator.get("files") or []:
            names.append(str(entry).split("=", 1)[-1])
    return names


def line_to_add(kustomization: Path, name: str) -> str:
    """What to add to the generator's `files:` list, and where, for the policy file `name`."""
    lines = kustomization.read_text(encoding="utf-8").splitlines()
    # The entries of `files:` are "- NAME.yaml" lines: the new one goes after the last, indented alike.
    entries = [(number, match.group(1)) for number, line in enumerate(lines, 1) if (match := re.match(r"^(\s*)- \S+\.ya?ml\s*$", line))]
    if not entries:
        return f'add the line "      - {name}" under `files:` in {kustomization}'
    after, indent = entries[-1]
    return f'add the line "{indent}- {name}" after line {after} of {kustomization}'


def configmap_problems(directory: Path, policy_names: list[str]) -> list[PolicyProblem]:
    """Policy files the ConfigMap would leave out, and listed files that do not exist."""
    kustomization = kustomization_of(directory)
    if kustomization is None:
        return []
    try:
        listed = listed_files(kustomization)
    except (OSError, yaml.YAMLError, AttributeError, TypeError) as error:
        return [PolicyProblem(str(kustomization), None, "", f"cannot read the ConfigMap generator: {error}")]
    problems = [
        PolicyProblem(
            str(directory / name), None, "",
            f"is not listed in {kustomization}, so Kubernetes never sees it: {line_to_add(kustomization, name)}",
        )  # fmt: skip
        for name in policy_names
        if name not in listed
    ]
    problems += [
        PolicyProblem(str(kustomization), None, "", f"lists {name}, which is not a policy file in {directory}: remove its line")
        for name in listed
        if name not in policy_names
    ]
    return problems
