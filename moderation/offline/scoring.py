"""Score image files in-process with a ClipScorer, without a server.

`moderation policy test` (golden cases) and `moderation policy calibrate` use it.
Decoding and preprocessing are the server's (same limits, same JPEG draft scale),
so a file scores here as it does when sent over gRPC.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from moderation.signals.clip.scorer import OFFLINE_BATCH, ClipScorer, PolicyTextIndex
from moderation.core.decision import Band, Decision, decide
from moderation.core.decode import DecodedImage, DecodeLimits, ImageRejected, decode_frames
from moderation.policy.golden import CasesFile, GoldenCase
from moderation.policy.schema import Policy


@dataclass(frozen=True, slots=True)
class FileScores:
    path: Path
    scores: dict[str, float] | None  # None when the file could not be read or decoded
    error: str = ""


def score_image_files(
    scorer: ClipScorer,
    index: PolicyTextIndex,
    paths: Sequence[Path],
    on_scored: Callable[[int], None] | None = None,
) -> list[FileScores]:
    """One result per path, in order; unreadable files get an error instead of scores.

    `on_scored(n)` is called after each batch with the number of files it finished,
    for progress bars.
    """
    limits = DecodeLimits(draft_size=scorer.image_size)  # the server's defaults
    results: list[FileScores] = []
    for start in range(0, len(paths), OFFLINE_BATCH):
        batch = paths[start : start + OFFLINE_BATCH]
        decoded: dict[Path, DecodedImage] = {}
        failed: dict[Path, str] = {}
        for path in batch:
            try:
                decoded[path] = decode_frames(path.read_bytes(), limits)
            except ImageRejected as error:
                failed[path] = str(error)
            except OSError as error:
                failed[path] = f"cannot read file: {error.strerror or error}"
        # Animations are judged by their most severe sampled frame, as the server does.
        scored = dict(zip(decoded, (s.scores for s in scorer.score_decoded(list(decoded.values()), index)), strict=True))
        for path in batch:
            results.append(FileScores(path, scored.get(path), failed.get(path, "")))
        if on_scored is not None:
            on_scored(len(batch))
    return results


@dataclass(frozen=True, slots=True)
class CaseOutcome:
    case: GoldenCase
    decision: Decision | None  # None when the image could not be scored
    problems: tuple[str, ...]  # unreadable image, or (when compared) what differs from the expectation

    @property
    def passed(self) -> bool:
        return not self.problems


def check_golden_cases(scorer: ClipScorer, policy: Policy, cases_file: CasesFile, compare: bool) -> list[CaseOutcome]:
    """Score every case's image under `policy`; with `compare`, check the expectations too.

    Without `compare` (random weights) a case still fails when its image cannot be
    read or decoded, and every image still goes through the model and `decide`.
    """
    cases = cases_file.cases.cases
    scored = score_image_files(scorer, scorer.index_policy(policy), [cases_file.image_path(case) for case in cases])
    outcomes = []
    for case, result in zip(cases, scored, strict=True):
        if result.scores is None:
            outcomes.append(CaseOutcome(case, None, (result.error,)))
            continue
        decision = decide(result.scores, policy)
        outcomes.append(CaseOutcome(case, decision, tuple(mismatches(case, decision)) if compare else ()))
    return outcomes


def mismatches(case: GoldenCase, decision: Decision) -> list[str]:
    """What differs between the expectations of `case` and `decision`; empty when it passes."""
    found = []
    if decision.action is not case.expect:
        found.append(f"action {decision.action.value}, expected {case.expect.value}")
    actual_flagged = sorted(c.category_id for c in decision.categories if c.band is not Band.BELOW)
    if case.flagged is not None and sorted(case.flagged) != actual_flagged:
        found.append(f"flagged {actual_flagged or 'none'}, expected {sorted(case.flagged) or 'none'}")
    by_id = {c.category_id: c for c in decision.categories}
    for category_id, band in case.bands.items():
        actual = by_id[category_id]
        if actual.band is not band:
            found.append(f"{category_id} {actual.band.value} ({actual.score:.3f}), expected {band.value}")
    return found
