"""Render every kustomize overlay and validate each resource strictly, offline.

    python deploy/k8s/validate.py [OVERLAY_DIR ...]     (default: every deploy/k8s/overlays/*)

Built-in kinds are checked with kubernetes-validate's strict schemas (unknown
fields are errors) for the oldest and newest Kubernetes versions these
manifests target. kubernetes-validate has no schemas for custom resources and
only *warns* about kinds it does not know, which would let a mistyped
apiVersion through; here a kind without a schema is an error, except custom
resources that have a schema vendored in deploy/k8s/schemas/ (the
ServiceMonitor), which are checked against it.

Overlays render with the plain `kubectl kustomize` (no load-restrictor flag),
as `kubectl apply -k` builds them. Kustomize cannot glob the policy files into
the ConfigMap, so each overlay's `moderation-policies` must carry exactly the
files the server loads from policies/; for one that is missing, the finding
names the line to add to policies/Kustomization.

Exit status 0 when every resource of every overlay is valid, 1 otherwise.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import jsonschema
import kubernetes_validate
import yaml

from moderation.policy import kustomization

K8S_DIR = Path(__file__).resolve().parent
OVERLAYS_DIR = K8S_DIR / "overlays"
CUSTOM_RESOURCE_SCHEMAS_DIR = K8S_DIR / "schemas"
# 1.27: native gRPC probes became GA; the newest is what the package ships.
KUBERNETES_VERSIONS = ("1.27.0", kubernetes_validate.utils.latest_version())
KUSTOMIZE = ("kubectl", "kustomize")
POLICIES_DIR = K8S_DIR.parent.parent / "policies"
POLICY_CONFIGMAP = kustomization.POLICY_CONFIGMAP
# What the server loads from its policy directory (moderation/policy/registry.py,
# policy_files): top-level *.yaml and *.yml files, not hidden ones.
POLICY_SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True)
class Finding:
    overlay: str
    resource: str
    problem: str

    def __str__(self) -> str:
        return f"{self.overlay}: {self.resource}: {self.problem}"


def render(overlay: Path) -> list[dict]:
    """The resources `kubectl kustomize` makes of an overlay. Raises on kustomize errors."""
    built = subprocess.run([*KUSTOMIZE, str(overlay)], capture_output=True, text=True, timeout=120)
    if built.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {overlay} failed:\n{built.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(built.stdout) if doc]


def custom_resource_schema_path(resource: dict) -> Path:
    """deploy/k8s/schemas/<kind>-<group>-<version>.json, named as kubernetes-validate names its files."""
    group, _, version = resource["apiVersion"].rpartition("/")
    return CUSTOM_RESOURCE_SCHEMAS_DIR / f"{resource['kind'].lower()}-{group.split('.')[0]}-{version}.json"


def resource_name(resource: dict) -> str:
    return f"{resource.get('kind', '?')}/{resource.get('metadata', {}).get('name', '?')}"


def validate_resource(resource: dict) -> list[str]:
    """Problems with one resource; empty when valid."""
    if "apiVersion" not in resource or "kind" not in resource:
        return ["no apiVersion or kind"]
    schema_path = custom_resource_schema_path(resource)
    if "." in resource["apiVersion"].split("/")[0] and schema_path.is_file():
        validator = jsonschema.Draft202012Validator(json.loads(schema_path.read_text()))
        return [
            f"{'.'.join(map(str, error.absolute_path)) or '<root>'}: {error.message} (schema {schema_path.name})"
            for error in sorted(validator.iter_errors(resource), key=lambda e: list(map(str, e.absolute_path)))
        ]
    problems = []
    for version in KUBERNETES_VERSIONS:
        try:
            kubernetes_validate.validate(resource, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            problems.append(f"Kubernetes {error.version}: {'.'.join(map(str, error.path)) or '<root>'}: {error.message}")
        except kubernetes_validate.SchemaNotFoundError as error:
            problems.append(
                f"{error.message}; for a custom resource, vendor a JSON schema as {schema_path.relative_to(K8S_DIR.parent.parent)}"
            )
    return problems


def policy_file_names(policies_dir: Path) -> list[str]:
    """The files the server loads from `policies_dir`, as ConfigMap keys."""
    return sorted(
        p.name for p in policies_dir.iterdir() if p.suffix in POLICY_SUFFIXES and not p.name.startswith(".") and p.is_file()
    )


def shown(path: Path) -> str:
    """`path` relative to the working directory when below it, as a person would type it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def line_to_add(policies_dir: Path, name: str) -> str:
    """What to add to policies/Kustomization's `files:` list, and where, for the policy file `name`."""
    return kustomization.line_to_add(Path(shown(policies_dir / "Kustomization")), name)


def check_policy_configmap(resources: list[dict], policies_dir: Path) -> list[str]:
    """Problems with the policy ConfigMap: it must hold every file the server would load, and nothing else."""
    configmaps = [r for r in resources if r.get("kind") == "ConfigMap" and r.get("metadata", {}).get("name") == POLICY_CONFIGMAP]
    if len(configmaps) != 1:
        return [f"expected one ConfigMap {POLICY_CONFIGMAP}, found {len(configmaps)}"]
    keys = set(configmaps[0].get("data", {})) | set(configmaps[0].get("binaryData", {}))
    wanted = policy_file_names(policies_dir)
    problems = [
        f"{shown(policies_dir / name)} is not in the ConfigMap: {line_to_add(policies_dir, name)}" for name in wanted if name not in keys
    ]
    problems += [
        f"key {key} is not a policy file the server would load from {shown(policies_dir)} (a top-level *.yaml or *.yml): "
        f"remove it from {shown(policies_dir / 'Kustomization')}"
        for key in sorted(keys - set(wanted))
    ]
    return problems


def validate_overlay(overlay: Path, policies_dir: Path = POLICIES_DIR) -> tuple[int, list[Finding]]:
    """(number of resources, findings) for one overlay."""
    try:
        resources = render(overlay)
    except RuntimeError as error:
        return 0, [Finding(overlay.name, "kustomize", str(error))]
    findings = [
        Finding(overlay.name, resource_name(resource), problem) for resource in resources for problem in validate_resource(resource)
    ]
    findings += [
        Finding(overlay.name, f"ConfigMap/{POLICY_CONFIGMAP}", problem) for problem in check_policy_configmap(resources, policies_dir)
    ]
    return len(resources), findings


def main(argv: list[str]) -> int:
    overlays = [Path(arg) for arg in argv] or sorted(p for p in OVERLAYS_DIR.iterdir() if (p / "kustomization.yaml").is_file())
    failed = False
    for overlay in overlays:
        count, findings = validate_overlay(overlay)
        for finding in findings:
            print(f"INVALID {finding}")
        status = "FAILED" if findings else "ok"
        print(f"{status}: {overlay.name}: {count} resources, strict schemas of Kubernetes {' and '.join(KUBERNETES_VERSIONS)}")
        failed |= bool(findings) or count == 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
