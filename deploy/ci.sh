#!/usr/bin/env bash
# Deployment checks, run by CI after the unit and integration tests:
#   1. every kustomize overlay renders with plain `kubectl kustomize` and validates
#      against strict Kubernetes schemas; its policy ConfigMap holds every policy file
#   2. promtool: the rules load, and their unit tests pass
#   3. pytest -m deploy: the manifests agree with the server and image, and a real
#      Prometheus scraping a real server evaluates every rule and dashboard query
#   4. both container images build (scorer: no torch, <= 1 GB; torch); the torch image's
#      `moderation export` writes a model folder that the scorer image serves read-only and
#      non-root: gRPC health, a Moderate call, some load, exit 0 on SIGTERM (deploy/image.sh check)
# Needs: scripts/install.sh (the .venv), deploy/install-tools.sh (prometheus,
# podman, ...), kubectl on PATH, and root for the image's debootstrap base.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-.venv/bin/python}"
started=$SECONDS
step() {
  echo "== $* ($((SECONDS - started)) s so far)"
}

step "kubernetes manifests: kubectl kustomize + kubernetes-validate --strict + every policy file in the ConfigMap"
"$PYTHON" deploy/k8s/validate.py

step "prometheus rules: promtool check rules, promtool test rules"
promtool check rules deploy/observability/rules/*.yaml
promtool test rules deploy/observability/tests/*.yaml

if [ -z "${DEPLOY_SKIP_PYTEST:-}" ]; then  # .ci/run has just run the whole suite
  step "pytest -m deploy (manifest consistency, live Prometheus)"
  "$PYTHON" -m pytest -q -m deploy tests/deploy
fi

step "container images: build both, export (torch image), serve the folder (scorer image), health, Moderate, SIGTERM"
PYTHON="$PYTHON" bash deploy/image.sh check

step "deployment checks passed"
