"""Judge image files in-process through the judging core, without a server.

`moderation policy test` (golden cases) and `moderation policy calibrate` use it. The
core is the server's (runtime.build_core from the same settings: decode limits, frame
sampling, JPEG draft scale, signals), so a file is judged here as it is when sent over
gRPC; only the forward passes are shared differently (in-process batches of files
instead of the micro-batcher).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from moderation.core.decision import Band, Decision
from moderation.core.decode import ImageRejected
from moderation.core.judge import Judgement, JudgingCore
from moderation.policy.golden import CasesFile, GoldenCase
from moderation.policy.registry import ServedPolicy
from moderation.policy.schema import Policy
from moderation.signals.clip.scorer import OFFLINE_BATCH, ClipScorer, PolicyTextIndex


@dataclass(frozen=True, slots=True)
class FileScores:
    path: Path
    decision: Decision | None  # None when the file could not be read or decoded
    error: str = ""
    # The image's normalised CLIP embedding (float32 [dim]): the representative frame's, as the
    # server stores it for `policy diff`, so a probe is trained on what it will score.
    embedding: np.ndarray | None = None

    @property
    def scores(self) -> dict[str, float] | None:
        """Per category, the score the decision was made on."""
        return None if self.decision is None else {c.category_id: c.score for c in self.decision.categories}


def offline_policy(scorer: ClipScorer, policy: Policy, source: Path = Path("")) -> ServedPolicy[PolicyTextIndex]:
    """`policy` compiled for the loaded model, as the server's registry serves it."""
    return ServedPolicy(policy, source, "", scorer.index_policy(policy))


def score_image_files(
    core: JudgingCore,
    served: ServedPolicy[PolicyTextIndex],
    paths: Sequence[Path],
    on_scored: Callable[[int], None] | None = None,
) -> list[FileScores]:
    """One result per path, in order; unreadable files get an error instead of a decision.

    `on_scored(n)` is called after each batch with the number of files it finished,
    for progress bars.
    """
    results: list[FileScores] = []
    for start in range(0, len(paths), OFFLINE_BATCH):
        batch = paths[start : start + OFFLINE_BATCH]
        outcomes: dict[Path, Judgement | str] = {}  # a judgement, or why there is none
        read: dict[Path, bytes] = {}
        for path in batch:
            try:
                read[path] = path.read_bytes()
            except OSError as error:
                outcomes[path] = f"cannot read file: {error.strerror or error}"
        for path, judged in zip(read, core.judge_images(list(read.values()), served), strict=True):
            outcomes[path] = str(judged) if isinstance(judged, ImageRejected) else judged
        for path in batch:
            outcome = outcomes[path]
            if isinstance(outcome, str):
                results.append(FileScores(path, None, outcome))
            else:
                row = outcome.frames.embeddings[outcome.representative_row()]
                results.append(FileScores(path, outcome.decision, embedding=np.asarray(row, dtype=np.float32)))
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


def check_golden_cases(core: JudgingCore, served: ServedPolicy[PolicyTextIndex], cases_file: CasesFile, compare: bool) -> list[CaseOutcome]:
    """Judge every case's image under the served policy; with `compare`, check the expectations too.

    Without `compare` (random weights) a case still fails when its image cannot be
    read or decoded, and every image still goes through the model and `decide`.
    """
    cases = cases_file.cases.cases
    scored = score_image_files(core, served, [cases_file.image_path(case) for case in cases])
    outcomes = []
    for case, result in zip(cases, scored, strict=True):
        if result.decision is None:
            outcomes.append(CaseOutcome(case, None, (result.error,)))
        else:
            outcomes.append(CaseOutcome(case, result.decision, tuple(mismatches(case, result.decision)) if compare else ()))
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
