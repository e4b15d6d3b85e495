#!/usr/bin/env bash
# Set up a fresh machine for development and CI: a virtual environment in .venv
# with the package and its test tools, the Debian packages the deployment
# checks use (deploy/install-tools.sh, needs root or sudo), and buf (npm) for
# proto checks in .tools/.
#
# torch: pip takes torch 2.14.1 / torchvision 0.29.1 from this machine's local
# package files (a CUDA build that runs on the CPU, ~5.5 GB; a few minutes).
set -euo pipefail
cd "$(dirname "$0")/.."

# pdqhash (PDQ hashing for the known-content banks) ships as source only: pip compiles its
# C++ with g++, so a machine without a C++ compiler gets Debian's g++ first.
if ! command -v g++ >/dev/null 2>&1 && ! command -v c++ >/dev/null 2>&1; then
  SUDO=()
  [ "$(id -u)" -eq 0 ] || SUDO=(sudo)
  echo "installing g++ (pdqhash builds from source)"
  DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq --no-install-recommends g++ >/dev/null
fi

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet --progress-bar off -e '.[dev]'

# Debian packages for the deployment checks and the state store tests: prometheus/promtool, podman,
# buildah, debootstrap, postgresql (server binaries only; the tests start their own).
bash deploy/install-tools.sh

if command -v npm >/dev/null 2>&1; then
  npm install --silent --no-audit --no-fund --prefix .tools @bufbuild/buf@1.75.0
else
  echo "npm not found: skipping buf (proto lint); install Node.js to run scripts/check.sh" >&2
fi
echo "installed: .venv/bin/moderation, .venv/bin/python -m pytest"
