"""Summarise cosmic-ray sessions: score and every surviving mutant, one line each (scripts/mutation.sh).

    python scripts/mutation_report.py mutation-results/decision.*.sqlite

Sessions of one module's shards are combined (a mutant run in one shard is SKIPPED in the
others). Score = killed / (killed + survived); mutants of filtered operators (SKIPPED in
every shard) are not counted. A mutant whose tests time out or that breaks the module's
import (INCOMPETENT) counts as killed.
"""

from __future__ import annotations

import sqlite3
import sys
from collections import defaultdict

QUERY = (
    "SELECT s.job_id, s.module_path, s.operator_name, s.start_pos_row, s.definition_name, r.worker_outcome, r.test_outcome, r.diff "
    "FROM mutation_specs s LEFT JOIN work_results r ON r.job_id = s.job_id"
)


def report(paths: list[str]) -> str:
    modules: dict[str, dict[str, tuple]] = defaultdict(dict)
    for path in paths:
        for job, module, operator, row, definition, worker, test, diff in sqlite3.connect(path).execute(QUERY):
            known = modules[module].get(job)
            if known is None or known[3] == "SKIPPED":
                modules[module][job] = (operator, row, definition, worker, test, diff)
    out = []
    for module, jobs in modules.items():
        mutants = [j for j in jobs.values() if j[3] != "SKIPPED"]
        done = [j for j in mutants if j[4] is not None]
        survived = sorted((j for j in done if j[4] == "SURVIVED"), key=lambda j: (j[1], j[0]))
        killed = len(done) - len(survived)
        score = f"{killed / len(done):.1%}" if done else "n/a"
        lines = [f"{module}: {len(mutants)} mutants, {len(done)} run, {killed} killed, {len(survived)} survived: score {score}"]
        for operator, row, definition, _, _, diff in survived:
            changed = [d[1:].strip() for d in (diff or "").splitlines() if d.startswith("+") and not d.startswith("+++")]
            lines.append(f"  line {row} in {definition}: {operator.removeprefix('core/')}: {changed[0] if changed else ''}")
        out.append("\n".join(lines))
    return "\n\n".join(out)


if __name__ == "__main__":
    print(report(sys.argv[1:]))
