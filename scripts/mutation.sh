#!/usr/bin/env bash
# Mutation testing of the modules that decide outcomes (issue 23), with cosmic-ray.
#
#   bash scripts/mutation.sh                 # every module below, one after the other
#   bash scripts/mutation.sh decision calibration
#   RETRY=1 bash scripts/mutation.sh calibration   # only the last run's survivors, against today's tests
#
# The in-scope tests are synchronous, except admission's and the escalation tier's (ASYNC_TESTS): pytest's asyncio, anyio and timeout plugins are not loaded
# (half of each mutant's start-up time); cosmic-ray's own timeout bounds a mutant that hangs.
#
# Each module is mutated in a throw-away copy of the working tree (the checkout is never
# edited), and each mutant runs only the tests that cover that module (MODULES below), so
# a module takes minutes, not hours. Results: mutation-results/<module>.<shard>.sqlite and
# <module>.txt (scripts/mutation_report.py: score and every surviving mutant). Summary and survivors: docs/testing.md.
# Not run in CI: see docs/testing.md for the times.
#
# PYTHON: the interpreter with the project's dev extras and cosmic-ray (default .venv/bin/python,
# then /work/main/.venv/bin/python). NICE: scheduling niceness (default 10). SHARDS: parallel
# copies (default 2, one per core).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-}
if [[ -z $PYTHON ]]; then
  for candidate in "$ROOT/.venv/bin/python" "/work/main/.venv/bin/python" "$(command -v python3)"; do
    if [[ -x $candidate ]]; then PYTHON=$candidate; break; fi
  done
fi
BIN=$(dirname "$PYTHON")
NICE=${NICE:-10}
SHARDS=${SHARDS:-2}  # mutants run in this many parallel copies
RETRY=${RETRY:-0}    # 1: re-run only the survivors of the results in $OUT (after adding tests)
OUT=${OUT:-$ROOT/mutation-results}

# module name -> "source file|test files"
declare -A MODULES=(
  [decision]="moderation/core/decision.py|tests/unit/test_decision.py"
  [decode]="moderation/core/decode.py|tests/unit/test_imaging.py"
  [calibration]="moderation/offline/calibration.py|tests/unit/test_calibration.py"
  [policy_calibration]="moderation/offline/policy_calibration.py|tests/unit/test_policy_calibration.py"
  [rescore]="moderation/offline/rescore.py|tests/unit/test_rescore.py"
  [schema]="moderation/policy/schema.py|tests/unit/test_policy_schema.py tests/unit/test_policy_fields.py"
  [loader]="moderation/policy/loader.py|tests/unit/test_policy_schema.py"
  [directory]="moderation/policy/directory.py|tests/unit/test_policy_directory.py tests/unit/test_policy_schema.py"
  [registry]="moderation/policy/registry.py|tests/unit/test_policy_schema.py tests/unit/test_policy_directory.py"
  [scorer]="moderation/signals/clip/scorer.py|tests/unit/test_clip_scorer.py"
  [admission]="moderation/serving/admission.py|tests/unit/test_server_bounds.py"
  [tier]="moderation/escalation/tier.py|tests/unit/test_escalation_tier.py"
)
# Modules whose tests are async: pytest-asyncio stays loaded for them.
declare -A ASYNC_TESTS=([admission]=1 [tier]=1)
ORDER=(decision calibration decode policy_calibration rescore schema loader directory registry scorer admission tier)

if [[ $# -gt 0 ]]; then ORDER=("$@"); fi
for name in "${ORDER[@]}"; do
  [[ -n ${MODULES[$name]:-} ]] || { echo "unknown module '$name'; known: ${!MODULES[*]}" >&2; exit 2; }
done

mkdir -p "$OUT"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/mutation.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

for name in "${ORDER[@]}"; do
  IFS='|' read -r source tests <<<"${MODULES[$name]}"
  plugins="-p no:asyncio -p no:anyio"
  if [[ -n ${ASYNC_TESTS[$name]:-} ]]; then plugins="-p no:anyio"; fi
  copy="$WORK/$name"
  mkdir -p "$copy"
  # Tracked and untracked-but-not-ignored files: what the tests see in the checkout.
  (cd "$ROOT" && git ls-files -z -co --exclude-standard | xargs -0 cp --parents -t "$copy")
  cat >"$copy/cosmic-ray.toml" <<TOML
[cosmic-ray]
module-path = "$source"
timeout = 120.0
excluded-modules = []
test-command = "env PYTHONPATH=$copy $PYTHON -m pytest -x -q -p no:cacheprovider $plugins -p no:timeout -W ignore::pytest.PytestConfigWarning $tests"

[cosmic-ray.distributor]
name = "local"

[cosmic-ray.filters.operators-filter]
# Kept: arithmetic swaps among + - * /, every comparison swap (is/is not included), unary and
# boolean operators, True/False, numbers, break/continue, exceptions, zero-iteration loops,
# removed decorators. Left out (time on 2 cores; nearly always equivalent or trivially killed
# here): shifts, bitwise operators, %, //, ** as replacements, variable insert/replace, and
# swaps between an ordering comparison (< <= > >=) and an identity one (is, is not): on floats
# 'is' means nothing, on enums and None they either crash at once or are equivalent.
exclude-operators = [
  "core/ReplaceComparisonOperator_(Lt|LtE|Gt|GtE)_(Is|IsNot)",
  "core/ReplaceComparisonOperator_(Is|IsNot)_(Lt|LtE|Gt|GtE)",
  "core/ReplaceBinaryOperator_.*_(RShift|LShift|BitOr|BitAnd|BitXor|Mod|FloorDiv|Pow)",
  "core/ReplaceBinaryOperator_(RShift|LShift|BitOr|BitAnd|BitXor|Mod|FloorDiv|Pow)_.*",
  "core/VariableReplacer",
  "core/VariableInserter",
]
TOML
  started=$(date +%s)
  if [[ $RETRY == 1 ]]; then
    # Re-run only the mutants that survived the last run (after adding tests), in fresh copies.
    previous=("$OUT/$name".*.sqlite)
    [[ -e ${previous[0]} ]] || { echo "RETRY=1: no earlier results in $OUT for $name" >&2; exit 2; }
    for old in "${previous[@]}"; do
      k=${old%.sqlite}; k=${k##*.}
      shard="$WORK/$name.shard$k"
      cp -a "$copy" "$shard"
      sed -i "s#$copy#$shard#g" "$shard/cosmic-ray.toml"
      cp "$old" "$shard/session.sqlite"
      "$PYTHON" -c "import sqlite3, sys; db = sqlite3.connect(sys.argv[1]); db.execute(\"DELETE FROM work_results WHERE test_outcome = 'SURVIVED'\"); db.commit()" "$shard/session.sqlite"
      (cd "$shard" && nice -n "$NICE" "$BIN/cosmic-ray" exec cosmic-ray.toml session.sqlite; cp session.sqlite "$OUT/$name.$k.sqlite") &
    done
  else
  (
    cd "$copy"
    "$BIN/cosmic-ray" init cosmic-ray.toml session.sqlite
    "$BIN/cr-filter-operators" session.sqlite cosmic-ray.toml
    nice -n "$NICE" "$BIN/cosmic-ray" baseline cosmic-ray.toml
  )
  # SHARDS copies of the tree, each running every SHARDS-th mutant (a mutant edits its copy in place).
  rm -f "$OUT/$name".*.sqlite "$OUT/$name.sqlite"
  for ((k = 0; k < SHARDS; k++)); do
    shard="$WORK/$name.shard$k"
    cp -a "$copy" "$shard"
    sed -i "s#$copy#$shard#g" "$shard/cosmic-ray.toml"
    "$PYTHON" - "$shard/session.sqlite" "$k" "$SHARDS" <<'PY'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1]); k, n = int(sys.argv[2]), int(sys.argv[3])
pending = [r[0] for r in db.execute("SELECT job_id FROM work_items WHERE job_id NOT IN (SELECT job_id FROM work_results) ORDER BY job_id")]
db.executemany("INSERT INTO work_results (worker_outcome, output, test_outcome, diff, job_id) VALUES ('SKIPPED', 'other shard', NULL, NULL, ?)",
               [(j,) for i, j in enumerate(pending) if i % n != k])
db.commit()
PY
    (cd "$shard" && nice -n "$NICE" "$BIN/cosmic-ray" exec cosmic-ray.toml session.sqlite; cp session.sqlite "$OUT/$name.$k.sqlite") &
  done
  fi
  wait
  elapsed=$(( $(date +%s) - started ))
  "$PYTHON" "$ROOT/scripts/mutation_report.py" "$OUT/$name".*.sqlite >"$OUT/$name.txt"
  echo "== $name ($source): ${elapsed}s, retry $RETRY; $(head -n 1 "$OUT/$name.txt")" | tee -a "$OUT/summary.txt"
done
