#!/usr/bin/env bash
# Issue 11's acceptance check on a machine with a CUDA GPU: the server on cuda with
# random weights and the in-process explainer, forced escalations, `python -m bench.clip
# --device cuda` beside its two ceilings, the explainer beside plain generate. Prints
# one JSON summary (bench/gpu_check.py) and exits 0 only if every judged check passes.
#
#   scripts/gpu-check.sh                 # the check (about 5-10 minutes)
#   scripts/gpu-check.sh --quick         # short durations
#   scripts/gpu-check.sh --device cpu    # dry run on the CPU with small models (CI runs it)
#
# Python: $PYTHON, else .venv/bin/python, else python3. Needs torch with CUDA and
# torchvision (not installed here: they come with the machine), and the packages
# checked below. The project itself is used from this checkout (PYTHONPATH), not installed.
#
# No network on the GPU box? Build wheels on a machine that has it, for the GPU box's
# Python and platform, without pulling torch in again, and carry the folder over:
#   pip download -d wheels --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
#       open_clip_torch ftfy regex timm safetensors huggingface_hub pydantic-settings python-dotenv \
#       xgrammar num2words docopt grpcio grpcio-health-checking grpcio-reflection protobuf \
#       prometheus-client typer rich pyyaml watchfiles scikit-image --no-deps
#   (add the dependencies pip names if an install below says one is missing)
# then on the GPU box:
#   python3 -m pip install --no-index --find-links wheels --no-deps <the missing packages>
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

# module -> pip package, for every import the check makes.
missing=$("$PY" - <<'PYEOF'
import importlib.util
needed = {
    "torch": "torch", "torchvision": "torchvision", "open_clip": "open_clip_torch", "transformers": "transformers",
    "xgrammar": "xgrammar", "num2words": "num2words", "pydantic": "pydantic", "pydantic_settings": "pydantic-settings",
    "grpc": "grpcio", "grpc_health": "grpcio-health-checking", "grpc_reflection": "grpcio-reflection",
    "google.protobuf": "protobuf", "prometheus_client": "prometheus-client", "typer": "typer", "rich": "rich",
    "yaml": "pyyaml", "PIL": "pillow", "numpy": "numpy", "watchfiles": "watchfiles", "skimage": "scikit-image",
}
missing = []
for module, package in needed.items():
    try:
        found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing
        found = False
    if not found:
        missing.append(package)
print(" ".join(missing))
PYEOF
)
if [ -n "$missing" ]; then
  echo "gpu-check: missing Python packages for $PY: $missing" >&2
  echo "gpu-check: install them, offline from carried wheels if need be (see the top of $0):" >&2
  echo "    $PY -m pip install --no-index --find-links wheels --no-deps $missing" >&2
  exit 2
fi

exec "$PY" -m bench.gpu_check "$@"
