"""Renderers: tables and lines for people; commands decide what to show, these decide how.

Every table goes through `print_rows`: a table when it fits the reader's width without
wrapping a cell (so an id is never cut or folded), otherwise, and whenever the width is
unknown (stdout is not a terminal and COLUMNS is unset: a pipe), one block of
`key: value` lines per row, which greps and reads at any width.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rich.measure import Measurement
from rich.table import Table

from moderation.cli.common import escape, out, width_known

if TYPE_CHECKING:
    from moderation.core.decision import Decision
    from moderation.escalation.verdict import ExplainerVerdict
    from moderation.offline.scoring import CaseOutcome
    from moderation.policy import Policy
    from moderation.policy.golden import CasesFile
    from moderation.offline.policy_calibration import PolicyCalibration
    from moderation.offline.rescore import DecisionFlips, FlipExample
    from moderation.state.embeddings import StoreFreshness


@dataclass(frozen=True)
class Column:
    name: str
    justify: str = "left"  # "right" for numbers


def print_rows(title: str | None, columns: Sequence[Column | str], rows: Sequence[Sequence[str]]) -> None:
    """Rows as a table when it fits unwrapped, else as `key: value` blocks. Cells may hold rich markup (escape data)."""
    cols = [c if isinstance(c, Column) else Column(c) for c in columns]
    if title:
        out.print(title, highlight=False)
    table = Table(title_justify="left")
    for column in cols:
        table.add_column(escape(column.name), justify=column.justify, no_wrap=True)  # type: ignore[arg-type]
    for row in rows:
        table.add_row(*row)
    if width_known():
        needed = Measurement.get(out.current(), out.options.update_width(100_000), table).maximum
        if needed <= out.width:
            out.print(table)
            return
    for row in rows:
        for i, (column, value) in enumerate(zip(cols, row, strict=True)):
            out.print(f"{'- ' if i == 0 else '  '}{escape(column.name)}: {value}", highlight=False)


def print_response(path: Path, response) -> None:  # noqa: ANN001 - generated message type
    from moderation.v1 import moderation_pb2 as pb

    action = pb.Action.Name(response.action).removeprefix("ACTION_")
    colour = {"ALLOW": "green", "REVIEW": "yellow", "BLOCK": "red"}.get(action, "white")
    # The request id on a line of its own: whole, and where the eye (and grep) finds it at any width.
    title = (
        f"{escape(str(path))}: [bold {colour}]{action}[/] under {escape(response.policy_id)}@{escape(response.policy_version)} "
        f"({escape(response.model)})\n  request id: {escape(response.request_id)}"
    )
    columns = ["category", Column("score", "right"), Column("review at", "right"), Column("block at", "right"), "band", "clause"]
    rows = [
        [escape(c.id), f"{c.score:.3f}", f"{c.review_threshold:.6g}", f"{c.block_threshold:.6g}", pb.Band.Name(c.band).removeprefix("BAND_"), escape(c.clause_id)]
        for c in response.categories
    ]
    print_rows(title, columns, rows)
    for reason in response.reasons:
        out.print(f"  {escape(reason)}", highlight=False)


def print_video_response(path: Path, response) -> None:  # noqa: ANN001 - generated message type
    """A ModerateVideo answer: the decision as for an image, then the segments (when each category was over its threshold)."""
    from moderation.v1 import moderation_pb2 as pb

    print_response(path, response)
    video = response.video
    out.print(
        f"  {video.duration_ms / 1000:.1f} s {escape(video.codec)} {video.width}x{video.height}, "
        f"{len(response.frame_times_ms)} frames sampled at {video.sample_fps:.3g}/s ({video.frames_decoded} decoded)",
        highlight=False,
    )
    if not response.segments:
        out.print("  no segment: no sampled frame reached a review threshold", highlight=False)
        return
    rows = [
        [
            f"{clock(s.start_ms)}-{clock(s.end_ms)}",
            escape(s.category_id),
            pb.Band.Name(s.band).removeprefix("BAND_"),
            pb.Action.Name(s.action).removeprefix("ACTION_"),
            f"{s.peak_score:.3f} at {clock(s.peak_ms)}",
            escape(s.clause_id) + (f" ({escape(s.forced_by)})" if s.forced_by else ""),
        ]
        for s in response.segments
    ]
    print_rows(f"{len(rows)} segment{'s' if len(rows) != 1 else ''}", ["time", "category", "band", "action", "peak", "clause"], rows)


def clock(ms: int) -> str:
    """Milliseconds as M:SS.mmm, the way a reviewer scrubs to it."""
    minutes, rest = divmod(int(ms), 60_000)
    return f"{minutes}:{rest / 1000:06.3f}"


def print_responses_summary(results: list[tuple[Path, object]]) -> None:
    """One row per image: its request id (to find it in the audit log) and action."""
    from moderation.v1 import moderation_pb2 as pb

    rows = [
        [escape(str(path)), escape(r.request_id), pb.Action.Name(r.action).removeprefix("ACTION_"), escape(f"{r.policy_id}@{r.policy_version}")]
        for path, r in results
    ]
    print_rows(f"{len(results)} images", ["image", "request id", "action", "policy"], rows)


def print_case_outcomes(policy_path: Path, policy: Policy, cases_file: CasesFile, outcomes: list[CaseOutcome], check_only: bool) -> None:
    from moderation.core.decision import Band

    title = escape(f"{policy_path}: {policy.id}@{policy.version}, cases from {cases_file.path}")
    rows = []
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
        rows.append([escape(case.image), escape(expected), actual, escape(categories), result])
    print_rows(title, ["image", "expected", "actual", "categories at or above review (score)", "result"], rows)
    for outcome in outcomes:
        for problem in outcome.problems:
            out.print(f"[red]✗[/] {escape(str(cases_file.problem(cases_file.case_loc(outcome.case), problem)))}", highlight=False)
    passed = sum(outcome.passed for outcome in outcomes)
    verdict = "checked, actions not compared" if check_only else "passed"
    out.print(f"{policy.id}: {passed} of {len(outcomes)} cases {verdict}", highlight=False)



def print_calibration(result: PolicyCalibration, command: str) -> None:
    """The calibration for an analyst (issue 22): counts of images rather than rates, findings grouped, commands that run.

    `command`: the calibrate command up to its targets, for the examples (moderation/offline/advice.py).
    """
    from moderation.offline.advice import WORDS, findings, threshold_sentences
    from moderation.policy.schema import Action

    def share(value: float | None) -> str:
        return "-" if value is None else f"{value:.0%}"

    title = escape(
        f"{result.policy.id}: {result.policy.version} -> {result.proposed.version} "
        f"({len(result.labels)} labelled images, scored with {result.model_id})"
    )
    # Narrow enough for 80 columns: proposed thresholds (* where they move; the sentences below say from what).
    columns = [
        "category", Column("images", "right"), Column("review", "right"), Column("block", "right"),
        Column("right", "right"), Column("caught", "right"), Column("to review", "right"),
    ]  # fmt: skip
    rows = [
        [
            escape(c.category_id),
            str(c.positives),
            f"{c.proposed.review:g}" + ("*" if c.current.review != c.proposed.review else ""),
            f"{c.proposed.block:g}" + ("*" if c.current.block != c.proposed.block else ""),
            share(c.proposed.precision_at_review),
            share(c.proposed.recall_at_review),
            f"{c.proposed.review_load:.1%}",
        ]
        for c in result.categories
    ]
    print_rows(title, columns, rows)
    out.print(
        f"[dim]images: labelled images of the category; review, block: proposed thresholds (* moved); at the review "
        f"threshold: {escape(WORDS)}[/]",
        highlight=False,
    )
    out.print("what the proposed thresholds do to the labelled images:", highlight=False)
    for c in result.categories:
        for sentence in threshold_sentences(result, c):
            out.print(f"  {escape(sentence)}", highlight=False)
    budget = result.targets.max_review_rate
    review_before, review_after = result.current_actions[Action.REVIEW], result.proposed_actions[Action.REVIEW]
    out.print(
        f"images sent to REVIEW in total: {review_before:.1%} -> {review_after:.1%} of the labelled images"
        + (f" (budget {budget:.1%} per category)" if budget is not None else ""),
        highlight=False,
    )
    shares = ", ".join(f"{a.value} {result.current_actions[a]:.1%} -> {result.proposed_actions[a]:.1%}" for a in result.current_actions)
    out.print(f"image actions on the labelled set: {shares}", highlight=False)
    out.print(escape(result.model_note), highlight=False)
    found = findings(result, command)
    if found:
        out.print(f"[bold yellow]read before taking the proposal ({len(found)}):[/]", highlight=False)
    for finding in found:
        out.print(f"[bold yellow]![/] {escape(finding.headline)}", highlight=False)
        out.print(f"  what to do: {escape(finding.todo)}", highlight=False)
        if finding.example:
            out.print(f"  for example: {escape(finding.example)}", highlight=False)


def age(seconds: float) -> str:
    """A duration as a person reads it: 40 s, 12 min, 5 h, 3 d."""
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:.0f} s"


def print_store_freshness(freshness: StoreFreshness, now: float) -> None:
    """How current the stored traffic is, so a diff is not read as covering decisions the store does not hold yet."""
    if freshness.newest is None:
        out.print("store: empty", highlight=False)
        return
    window = (
        f"{freshness.in_window} decisions in the window, newest {age(now - freshness.newest_in_window)} ago, "
        f"oldest {age(now - freshness.oldest_in_window)} ago"
        if freshness.newest_in_window is not None
        else "no decisions in the window"
    )
    out.print(f"store: {window}; newest decision of any policy {age(now - freshness.newest)} ago", highlight=False)


def _scores(example: FlipExample) -> str:
    parts = []
    for category_id, (old, new) in example.scores.items():
        before, after = example.actions[category_id]
        if old is None or new is None or f"{old:.3f}" == f"{new:.3f}":
            score = f"{old if new is None else new:.3f}"
        else:
            score = f"{old:.3f} -> {new:.3f}"
        parts.append(f"{category_id} {score} ({before.value} -> {after.value})")
    return "; ".join(parts) or "-"


def print_flips(flips: DecisionFlips, old: Policy, new: Policy, what: str, thumbnails: Path | None = None) -> None:
    from datetime import datetime, timezone

    from moderation.state.thumbnails import thumbnail_paths

    # What qualifies every number below comes first: read after 150 lines of examples, it was missed (issue 22).
    other_versions = {v: n for v, n in flips.stored_versions.items() if v != old.version}
    if other_versions:
        listed = ", ".join(f"{v} ({n})" for v, n in sorted(other_versions.items()))
        out.print(
            f"[yellow]![/] {sum(other_versions.values())} decisions were made under other versions than {escape(old.version)}: "
            f"{escape(listed)}; their flips compare against {escape(old.version)}, not the version that served them",
            highlight=False,
        )
    if flips.not_reproduced:
        out.print(
            f"[yellow]![/] {flips.not_reproduced} decisions made under {escape(old.version)} get another action from it now "
            f"(e.g. {escape(', '.join(flips.not_reproduced_examples))}): OLD may differ from the file that served them",
            highlight=False,
        )
    share = flips.changed / flips.decisions if flips.decisions else 0.0
    out.print(
        f"re-scored {flips.decisions} {escape(what)} under {old.id}@{escape(old.version)} and {new.id}@{escape(new.version)}: "
        f"[bold]{flips.changed} change action ({share:.1%})[/]",
        highlight=False,
    )
    if not flips.changed and not flips.category_changes:
        out.print("no decision changes", highlight=False)
    if flips.action_changes:
        rows = [
            [before.value, after.value, str(count), f"{count / flips.decisions:.1%}", escape(", ".join(flips.action_examples[(before, after)]))]
            for (before, after), count in flips.action_changes.most_common()
        ]
        columns = ["from", "to", Column("decisions", "right"), Column("share", "right"), "example request ids"]
        print_rows("image action changes", columns, rows)
    if flips.category_changes:
        rows = [
            [escape(category_id), before.value, after.value, str(count), escape(", ".join(flips.category_examples[(category_id, (before, after))]))]
            for category_id, changes in flips.category_changes.items()
            for (before, after), count in changes.most_common()
        ]
        print_rows("category action changes", ["category", "from", "to", Column("decisions", "right"), "example request ids"], rows)
    if flips.example_details:
        rows = []
        for example in flips.example_details.values():
            row = [
                escape(example.request_id),
                datetime.fromtimestamp(example.timestamp, timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
                escape(example.stored_version),
                f"{example.old_action.value} -> {example.new_action.value}",
                escape(_scores(example)),
            ]
            if thumbnails is not None:
                paths = thumbnail_paths(thumbnails, example.request_id)  # any caller's
                row.append(escape(", ".join(str(p) for p in paths)) if paths else "-")
            rows.append(row)
        columns = ["request id", "decided (UTC)", "stored version", "action old -> new", "category score (action old -> new)"]
        print_rows(
            f"examples: scores under {escape(old.version)} -> {escape(new.version)}",
            columns + (["thumbnail"] if thumbnails is not None else []),
            rows,
        )


def print_comparison(image: Path, decision: Decision, verdicts: dict[str, ExplainerVerdict]) -> None:
    """One image, both tiers side by side in 80 columns: a narrow table of verdicts, then each rationale as text.

    The rationale is the one wide thing; in a table it forced ~230 columns (issue 22), so it
    follows the table, one wrapped paragraph per category.
    """
    from moderation.core.decision import clip_leans_violating

    out.print(f"{escape(str(image))}: [bold]{decision.action.value}[/]", highlight=False)
    rows = []
    for c in decision.categories:
        leans = "violates" if clip_leans_violating(c) else "ok"
        verdict = verdicts.get(c.category_id)
        said = f"{'violates' if verdict.violates else 'ok'} {verdict.confidence:.2f}" if verdict else "-"
        agree = ("yes" if verdict.violates == (leans == "violates") else "[bold]no[/]") if verdict else "-"
        rows.append([escape(f"{c.category_id} ({c.clause_id})"), f"{c.score:.3f} {c.band.value}", leans, said, agree])
    columns = ["category (clause)", Column("CLIP score, band", "right"), "CLIP leans", "explainer", "agree"]
    print_rows(None, columns, rows)
    said_why = [(c.category_id, verdicts[c.category_id].rationale) for c in decision.categories if c.category_id in verdicts]
    if said_why:
        out.print("explainer's rationale:", highlight=False)
        for category_id, rationale in said_why:
            out.print(f"  {escape(category_id)}: {escape(rationale) or '(none given)'}", highlight=False)
