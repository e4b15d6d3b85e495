"""Renderers: tables and lines for people; commands decide what to show, these decide how."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rich.markup import escape
from rich.table import Table

from moderation.cli.common import out

if TYPE_CHECKING:
    from moderation.decision import Decision
    from moderation.escalation.verdict import ExplainerVerdict
    from moderation.offline import CaseOutcome
    from moderation.policy import Policy
    from moderation.policy.golden import CasesFile
    from moderation.policy_calibration import PolicyCalibration
    from moderation.rescore import DecisionFlips


def print_response(path: Path, response) -> None:  # noqa: ANN001 - generated message type
    from moderation.v1 import moderation_pb2 as pb

    action = pb.Action.Name(response.action).removeprefix("ACTION_")
    colour = {"ALLOW": "green", "REVIEW": "yellow", "BLOCK": "red"}.get(action, "white")
    table = Table(
        title=f"{path}: [bold {colour}]{action}[/] under {response.policy_id}@{response.policy_version} ({response.model})",
        title_justify="left",
    )
    for column in ("category", "score", "review at", "block at", "band", "clause"):
        table.add_column(column, justify="right" if column in ("score", "review at", "block at") else "left")
    for c in response.categories:
        table.add_row(c.id, f"{c.score:.3f}", f"{c.review_threshold:.2f}", f"{c.block_threshold:.2f}", pb.Band.Name(c.band).removeprefix("BAND_"), c.clause_id)
    out.print(table)
    for reason in response.reasons:
        out.print(f"  {escape(reason)}", highlight=False)



def print_case_outcomes(policy_path: Path, policy: Policy, cases_file: CasesFile, outcomes: list[CaseOutcome], check_only: bool) -> None:
    from moderation.decision import Band

    title = f"{policy_path}: {policy.id}@{policy.version}, cases from {cases_file.path}"
    table = Table(title=escape(title), title_justify="left")
    for column in ("image", "expected", "actual", "categories at or above review (score)", "result"):
        table.add_column(column, overflow="fold")
    for outcome in outcomes:
        case, decision = outcome.case, outcome.decision
        expected = case.expect.value + (f" flagged={sorted(case.flagged)}" if case.flagged is not None else "")
        expected += "".join(f" {cid}={band.value}" for cid, band in case.bands.items())
        if decision is None:
            actual, categories = "-", "-"
        else:
            actual = decision.action.value
            flagged = [c for c in decision.categories if c.band is not Band.BELOW]
            top = max(decision.categories, key=lambda c: c.score)
            categories = ", ".join(f"{c.category_id} {c.band.value} ({c.score:.3f})" for c in flagged) or f"none (top: {top.category_id} {top.score:.3f})"
        if not outcome.passed:
            result = "[red]✗ fail[/]"
        else:
            result = "[yellow]checked[/]" if check_only else "[green]✓ pass[/]"
        table.add_row(escape(case.image), escape(expected), actual, escape(categories), result)
    out.print(table)
    for outcome in outcomes:
        for problem in outcome.problems:
            out.print(f"[red]✗[/] {escape(str(cases_file.problem(cases_file.case_loc(outcome.case), problem)))}", highlight=False)
    passed = sum(outcome.passed for outcome in outcomes)
    verdict = "checked, actions not compared" if check_only else "passed"
    out.print(f"{policy.id}: {passed} of {len(outcomes)} cases {verdict}", highlight=False)



def print_calibration(result: PolicyCalibration) -> None:
    table = Table(
        title=escape(f"{result.policy.id}: {result.policy.version} -> {result.proposed.version} ({len(result.labels)} labelled images, model {result.model_id})"),
        title_justify="left",
    )
    for column in ("category", "positives", "review", "block", "precision at block", "recall at review", "review load"):
        table.add_column(column, overflow="fold", justify="left" if column == "category" else "right")
    for c in result.categories:
        table.add_row(
            c.category_id,
            str(c.positives),
            f"{c.current.review:g} -> {c.proposed.review:g}",
            f"{c.current.block:g} -> {c.proposed.block:g}",
            "-" if c.proposed.precision_at_block is None else f"{c.proposed.precision_at_block:.3f}",
            "-" if c.proposed.recall_at_review is None else f"{c.proposed.recall_at_review:.3f}",
            f"{c.current.review_load:.1%} -> {c.proposed.review_load:.1%}",
        )
    out.print(table)
    for c in result.categories:
        for note in c.notes:
            out.print(f"[yellow]![/] {escape(f'{c.category_id}: {note}')}", highlight=False)
    shares = ", ".join(f"{a.value} {result.current_actions[a]:.1%} -> {result.proposed_actions[a]:.1%}" for a in result.current_actions)
    out.print(f"image actions on the labelled set: {shares}", highlight=False)



def print_flips(flips: DecisionFlips, old: Policy, new: Policy, what: str) -> None:
    share = flips.changed / flips.decisions if flips.decisions else 0.0
    out.print(
        f"re-scored {flips.decisions} {escape(what)} under {old.id}@{escape(old.version)} and {new.id}@{escape(new.version)}: "
        f"[bold]{flips.changed} change action ({share:.1%})[/]",
        highlight=False,
    )
    if not flips.changed and not flips.category_changes:
        out.print("no decision changes", highlight=False)
    if flips.action_changes:
        table = Table(title="image action changes", title_justify="left")
        for column in ("from", "to", "decisions", "share", "example request ids"):
            table.add_column(column, overflow="fold", justify="right" if column in ("decisions", "share") else "left")
        for (before, after), count in flips.action_changes.most_common():
            table.add_row(before.value, after.value, str(count), f"{count / flips.decisions:.1%}", escape(", ".join(flips.action_examples[(before, after)])))
        out.print(table)
    if flips.category_changes:
        table = Table(title="category action changes", title_justify="left")
        for column in ("category", "from", "to", "decisions", "example request ids"):
            table.add_column(column, overflow="fold", justify="right" if column == "decisions" else "left")
        for category_id, changes in flips.category_changes.items():
            for (before, after), count in changes.most_common():
                table.add_row(category_id, before.value, after.value, str(count), escape(", ".join(flips.category_examples[(category_id, (before, after))])))
        out.print(table)
    other_versions = {v: n for v, n in flips.stored_versions.items() if v != old.version}
    if other_versions:
        listed = ", ".join(f"{v} ({n})" for v, n in sorted(other_versions.items()))
        out.print(f"[yellow]![/] {sum(other_versions.values())} decisions were made under other versions than {escape(old.version)}: {escape(listed)}", highlight=False)
    if flips.not_reproduced:
        out.print(
            f"[yellow]![/] {flips.not_reproduced} decisions made under {escape(old.version)} get another action from it now "
            f"(e.g. {escape(', '.join(flips.not_reproduced_examples))}): OLD may differ from the file that served them",
            highlight=False,
        )



def print_bench(results: dict, model: str, device: str) -> None:
    table = Table(title=f"{model} on {device}: server over gRPC", title_justify="left")
    for column in ("clients", "images/s", "p50 ms", "p95 ms", "p99 ms", "errors"):
        table.add_column(column, justify="right")
    for row in results["load"]:
        table.add_row(
            str(row["concurrency"]), f"{row['throughput_per_s']:.2f}", f"{row['p50_ms']:.0f}", f"{row['p95_ms']:.0f}",
            f"{row['p99_ms']:.0f}", str(sum(row["errors"].values())),
        )  # fmt: skip
    out.print(table)
    for key in results["targets"]:
        value = results.get(key)
        value = value if value is not None else "not measured (needs concurrency 1)"
        out.print(f"{key}: {value}  (target {results['targets'][key]})", highlight=False)


def print_comparison(
    image: Path, clip_model: str, explainer_id: str, decision: Decision, verdicts: dict[str, ExplainerVerdict], random_weights: bool
) -> None:
    from moderation.decision import clip_leans_violating

    table = Table(title=f"{image}: CLIP {escape(clip_model)} -> {decision.action.value}; explainer {escape(explainer_id)}", title_justify="left")
    for column in ("category", "clause", "CLIP score", "band", "CLIP leans", "explainer", "confidence", "agree", "rationale"):
        table.add_column(column)
    for c in decision.categories:
        leans = "violates" if clip_leans_violating(c) else "ok"
        verdict = verdicts.get(c.category_id)
        said = ("violates" if verdict.violates else "ok") if verdict else "-"
        agree = ("yes" if (verdict.violates == (leans == "violates")) else "no") if verdict else "-"
        table.add_row(
            c.category_id, c.clause_id, f"{c.score:.3f}", c.band.value, leans, said,
            f"{verdict.confidence:.2f}" if verdict else "-", agree, escape(verdict.rationale) if verdict else "",
        )  # fmt: skip
    out.print(table)
    if random_weights or explainer_id.endswith("/random"):
        out.print("[bold yellow]random weights: these outputs mean nothing[/]")
