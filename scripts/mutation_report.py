"""Summarise a cosmic-ray session: score and every surviving mutant as one line (scripts/mutation.sh).

    python scripts/mutation_report.py mutation-results/decision.sqlite [...]

Score = killed / (killed + survived); filtered operators (SKIPPED) are not mutants. A mutant
whose tests time out or that breaks the module's import (INCOMPETENT) counts as killed.
"""

from __future__ import annotations

import sqlite3
import sys


def report(path: str) -> str:
    db = sqlite3.connect(path)
    rows = db.execute(
        "SELECT s.module_path, s.operator_name, s.start_pos_row, s.definition_name, r.worker_outcome, r.test_outcome, r.diff "
        "FROM mutation_specs s LEFT JOIN work_results r ON r.job_id = s.job_id ORDER BY s.start_pos_row, s.operator_name"
    ).fetchall()
    mutants = [r for r in rows if r[4] != "SKIPPED"]
    done = [r for r in mutants if r[5] is not None]
    survived = [r for r in done if r[5] == "SURVIVED"]
    killed = len(done) - len(survived)
    module = rows[0][0] if rows else path
    score = f"{killed / len(done):.1%}" if done else "n/a"
    lines = [f"{module}: {len(mutants)} mutants, {len(done)} run, {killed} killed, {len(survived)} survived: score {score}"]
    for _, operator, row, definition, _, _, diff in survived:
        changed = [d[1:].strip() for d in (diff or "").splitlines() if d.startswith("+") and not d.startswith("+++")]
        lines.append(f"  line {row} in {definition}: {operator.removeprefix('core/')}: {changed[0] if changed else ''}")
    return "\n".join(lines)


if __name__ == "__main__":
    print("\n\n".join(report(p) for p in sys.argv[1:]))
