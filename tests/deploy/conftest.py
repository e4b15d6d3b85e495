"""Fixtures for the deployment checks: real kubectl, promtool and prometheus binaries.

A missing tool fails the test with the command that installs it, rather than
skipping: a skipped deployment check in CI looks the same as a passing one.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from types import ModuleType

import pytest

from tests.conftest import ROOT

DEPLOY = ROOT / "deploy"
RULES_FILE = DEPLOY / "observability" / "rules" / "moderation.rules.yaml"
RULES_TEST_FILE = DEPLOY / "observability" / "tests" / "moderation.rules.test.yaml"
DASHBOARD_FILE = DEPLOY / "observability" / "grafana" / "moderation-dashboard.json"

INSTALL_HINT = {
    "promtool": "Debian package prometheus: run deploy/install-tools.sh",
    "prometheus": "Debian package prometheus: run deploy/install-tools.sh",
    "kubectl": "kubectl (with kustomize) is not packaged in Debian bookworm; install it from https://kubernetes.io/docs/tasks/tools/",
}


def require_tool(name: str) -> str:
    found = shutil.which(name)
    if not found:
        pytest.fail(f"{name} not found on PATH ({INSTALL_HINT[name]})", pytrace=False)
    return found


@pytest.fixture(scope="session")
def promtool() -> str:
    return require_tool("promtool")


@pytest.fixture(scope="session")
def prometheus_binary() -> str:
    return require_tool("prometheus")


@pytest.fixture(scope="session")
def kubectl() -> str:
    return require_tool("kubectl")


@pytest.fixture(scope="session")
def manifest_validator(kubectl: str) -> ModuleType:
    """deploy/k8s/validate.py, the same code deploy/ci.sh runs."""
    path = DEPLOY / "k8s" / "validate.py"
    spec = importlib.util.spec_from_file_location("deploy_k8s_validate", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    # Registered first: dataclasses look their module up in sys.modules.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
