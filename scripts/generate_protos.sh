#!/usr/bin/env bash
# Regenerate the Python stubs from protos/. CI runs this and fails on a diff.
# Stubs land in moderation/v1/ so that protoc's generated imports
# (`from moderation.v1 import moderation_pb2`) resolve without rewriting.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
"$PYTHON" -m grpc_tools.protoc -I protos \
  --python_out=. --pyi_out=. --grpc_python_out=. \
  protos/moderation/v1/*.proto
