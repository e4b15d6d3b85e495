"""Score image files in-process with a ClipScorer, without a server.

`moderation policy test` (golden cases) and `moderation policy calibrate` use it.
Decoding and preprocessing are the server's (same limits, same JPEG draft scale),
so a file scores here as it does when sent over gRPC.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from moderation.clip.scorer import ClipScorer, PolicyTextIndex, most_severe_frame
from moderation.decision import Decision, decide
from moderation.imaging import DecodeLimits, ImageRejected, decode_frames
from moderation.policy.golden import CasesFile, GoldenCase, mismatches
from moderation.policy.schema import Policy

# Small batches keep memory flat on a CPU and still amortise the forward pass.
BATCH_SIZE = 16


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
    limits = DecodeLimits(draft_size=scorer.clip.image_size)  # the server's defaults
    results: list[FileScores] = []
    for start in range(0, len(paths), BATCH_SIZE):
        batch = paths[start : start + BATCH_SIZE]
        # Per decoded file: its frames' pixels and their positions in the animation,
        # so animations are judged by their most severe sampled frame, as the server does.
        decoded: dict[Path, tuple[torch.Tensor, tuple[int, ...]]] = {}
        failed: dict[Path, str] = {}
        for path in batch:
            try:
                frames = decode_frames(path.read_bytes(), limits)
                decoded[path] = (torch.stack([scorer.clip.preprocess(f) for f in frames.frames]), frames.frame_indices)
            except ImageRejected as error:
                failed[path] = str(error)
            except OSError as error:
                failed[path] = f"cannot read file: {error.strerror or error}"
        scored: dict[Path, dict[str, float]] = {}
        if decoded:
            per_frame = scorer.score(scorer.embed_images(torch.cat([pixels for pixels, _ in decoded.values()])), index)
            offset = 0
            for path, (_, indices) in decoded.items():
                scored[path], _ = most_severe_frame(per_frame[offset : offset + len(indices)], indices)
                offset += len(indices)
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
