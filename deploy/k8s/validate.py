"""Render every kustomize overlay and validate each resource strictly, offline.

    python deploy/k8s/validate.py [OVERLAY_DIR ...]     (default: every deploy/k8s/overlays/*)

Built-in kinds are checked with kubernetes-validate's strict schemas (unknown
fields are errors) for the oldest and newest Kubernetes versions these
manifests target. kubernetes-validate has no schemas for custom resources and
only *warns* about kinds it does not know, which would let a mistyped
apiVersion through; here a kind without a schema is an error, except custom
resources that have a schema vendored in deploy/k8s/schemas/ (the
ServiceMonitor), which are checked against it.

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

K8S_DIR = Path(__file__).resolve().parent
OVERLAYS_DIR = K8S_DIR / "overlays"
CUSTOM_RESOURCE_SCHEMAS_DIR = K8S_DIR / "schemas"
# 1.27: native gRPC probes became GA; the newest is what the package ships.
KUBERNETES_VERSIONS = ("1.27.0", kubernetes_validate.utils.latest_version())
KUSTOMIZE = ("kubectl", "kustomize", "--load-restrictor", "LoadRestrictionsNone")


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


def validate_overlay(overlay: Path) -> tuple[int, list[Finding]]:
    """(number of resources, findings) for one overlay."""
    try:
        resources = render(overlay)
    except RuntimeError as error:
        return 0, [Finding(overlay.name, "kustomize", str(error))]
    findings = [
        Finding(overlay.name, resource_name(resource), problem) for resource in resources for problem in validate_resource(resource)
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
