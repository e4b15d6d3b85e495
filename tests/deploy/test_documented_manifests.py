"""Kubernetes YAML shown in docs/deploy.md: valid, and naming what the overlays name.

An operator copies these blocks as they are; a PersistentVolume that does not bind to
the prod claim would leave every pod without weights.
"""

from __future__ import annotations

import re
from types import ModuleType

import pytest
import yaml

from tests.conftest import ROOT
from tests.deploy.conftest import DEPLOY

pytestmark = pytest.mark.deploy

DEPLOY_DOC = ROOT / "docs" / "deploy.md"


def documented_resources() -> list[dict]:
    """Every fenced yaml block of docs/deploy.md that is a Kubernetes object (indentation of list items removed)."""
    text = DEPLOY_DOC.read_text(encoding="utf-8")
    resources = []
    for indent, body in re.findall(r"^( *)```yaml\n(.*?)^\1```", text, flags=re.S | re.M):
        block = "\n".join(line.removeprefix(indent) for line in body.splitlines())
        for document in yaml.safe_load_all(block):
            if isinstance(document, dict) and {"apiVersion", "kind"} <= document.keys():
                resources.append(document)
    return resources


def test_the_documented_objects_validate_strictly(manifest_validator: ModuleType) -> None:
    resources = documented_resources()
    assert any(r["kind"] == "PersistentVolume" for r in resources), "docs/deploy.md lost its PersistentVolume example"
    for resource in resources:
        assert manifest_validator.validate_resource(resource) == [], resource["kind"]


def test_the_documented_volume_binds_to_the_prod_weights_claim(manifest_validator: ModuleType) -> None:
    (volume,) = [r for r in documented_resources() if r["kind"] == "PersistentVolume"]
    claims = {r["metadata"]["name"]: r for r in manifest_validator.render(DEPLOY / "k8s" / "overlays" / "prod") if r["kind"] == "PersistentVolumeClaim"}
    claim = claims[volume["spec"]["claimRef"]["name"]]
    assert volume["spec"]["claimRef"]["namespace"] == claim["metadata"]["namespace"]
    # Binding needs equal classes ("" on both: no provisioner), a shared access mode and enough capacity.
    assert volume["spec"]["storageClassName"] == claim["spec"]["storageClassName"] == ""
    assert set(claim["spec"]["accessModes"]) <= set(volume["spec"]["accessModes"])
    assert volume["spec"]["capacity"]["storage"] == claim["spec"]["resources"]["requests"]["storage"]
