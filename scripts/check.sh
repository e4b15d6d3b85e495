#!/usr/bin/env bash
# Static checks CI runs before the tests: stubs up to date, buf lint and breaking.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== protobuf stubs are regenerated and unchanged"
bash scripts/generate_protos.sh
git diff --exit-code -- moderation/v1 || { echo "generated stubs differ from protos/: run scripts/generate_protos.sh and commit" >&2; exit 1; }
untracked=$(git ls-files --others --exclude-standard -- moderation/v1)
[ -z "$untracked" ] || { echo "untracked generated files: $untracked" >&2; exit 1; }

BUF=.tools/node_modules/.bin/buf
echo "== buf lint"
(cd protos && "../$BUF" lint)
echo "== buf breaking (against the previous commit, when there is one)"
if git rev-parse -q --verify HEAD~1 >/dev/null && git cat-file -e HEAD~1:protos/buf.yaml 2>/dev/null; then
  "$BUF" breaking protos --against ".git#ref=HEAD~1,subdir=protos"
fi

echo "== policies validate"
.venv/bin/moderation policy validate policies/*.yaml

echo "== policy golden cases are well formed and run (check-only: tiny random model)"
.venv/bin/moderation policy test policies/*.yaml --model local-dir:tests/fixtures/tiny-clip --weights random
