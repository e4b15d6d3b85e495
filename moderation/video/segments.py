"""A video's timeline and segments, from the judging core's evidence over its sampled frames. Pure: no I/O.

The core judges all sampled frames of a video at once, as it judges an animation: the
decision is the most severe frame per category, bank matches force actions. What a video
answer adds is *when*:

  timeline   per category, every sampled frame's score (the highest any signal gave it)
  segments   per category, each run of consecutive sampled frames whose score is at or
             over the review threshold, or that a bank matched. A segment starts at its
             first such frame and ends at the next sampled frame (back under the threshold)
             or at the end of the video: the content ended somewhere in that last interval,
             so both ends are exact to within one sampling interval.
             Its band and action are the most severe of its frames (a bank match raises the
             action, never lowers it), its peak the highest score and the frame that set it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from moderation.core.decision import decide_category
from moderation.core.evidence import CategoryScores, Evidence, ForcedAction
from moderation.policy.schema import Action, Band, Policy

_BAND_SEVERITY = {Band.BELOW: 0, Band.BORDERLINE: 1, Band.ABOVE: 2}
# Matches on the file's bytes, not one frame: the whole video is the known content.
_WHOLE_FILE = ("md5", "sha256")


@dataclass(frozen=True, slots=True)
class Segment:
    category_id: str
    start_ms: int
    end_ms: int
    band: Band
    peak_score: float
    peak_ms: int
    action: Action
    clause_id: str
    forced_by: str = ""  # the signal whose match forced a frame of this segment ("" when scores alone did)


def timeline(evidence: Sequence[Evidence], policy: Policy, frames: int) -> dict[str, tuple[float, ...]]:
    """Per policy category, each sampled frame's score: the highest any signal's per-frame scores give it (0 without one)."""
    scores = {category.id: [0.0] * frames for category in policy.categories}
    for item in evidence:
        if not isinstance(item, CategoryScores):
            continue
        for category_id, values in item.frame_scores.items():
            row = scores.get(category_id)
            if row is None:
                continue
            if len(values) != frames:
                raise ValueError(f"signal {item.signal!r} scored {len(values)} frames of {category_id!r}; the video has {frames} sampled")
            for i, value in enumerate(values):
                row[i] = max(row[i], value)
    return {category_id: tuple(row) for category_id, row in scores.items()}


def forced_frames(evidence: Sequence[Evidence], frame_indices: Sequence[int]) -> dict[str, dict[int, ForcedAction]]:
    """Per category, the sampled frames (positions) a forced action matched, with the most severe action on each."""
    position = {index: i for i, index in enumerate(frame_indices)}
    forced: dict[str, dict[int, ForcedAction]] = {}
    for item in evidence:
        if not isinstance(item, ForcedAction):
            continue
        frames: set[int] = set()
        for match in item.matches:
            if match.signal_type in _WHOLE_FILE:
                frames.update(range(len(frame_indices)))
            elif match.frame_index in position:
                frames.add(position[match.frame_index])
        if not item.matches and item.frame_index in position:
            frames.add(position[item.frame_index])
        by_frame = forced.setdefault(item.category_id, {})
        for frame in frames:
            current = by_frame.get(frame)
            if current is None or item.action.severity > current.action.severity:
                by_frame[frame] = item
    return forced


def segments(
    evidence: Sequence[Evidence],
    policy: Policy,
    frame_indices: Sequence[int],
    times_ms: Sequence[int],
    duration_ms: int,
) -> list[Segment]:
    """Every category's runs of sampled frames at or over its review threshold (or matched by a bank), in time order."""
    if len(frame_indices) != len(times_ms):
        raise ValueError(f"{len(frame_indices)} frames but {len(times_ms)} frame times")
    count = len(times_ms)
    scores = timeline(evidence, policy, count)
    forced = forced_frames(evidence, frame_indices)
    found: list[Segment] = []
    for category in policy.categories:
        row = scores[category.id]
        matched = forced.get(category.id, {})
        run: list[int] = []
        for i in range(count + 1):
            over = i < count and (decide_category(row[i], category).band is not Band.BELOW or i in matched)
            if over:
                run.append(i)
                continue
            if run:
                found.append(_segment(category.id, category.clause.id, run, row, matched, [decide_category(row[j], category) for j in run], times_ms, duration_ms))
                run = []
    found.sort(key=lambda s: (s.start_ms, s.category_id))
    return found


def _segment(category_id, clause_id, run, row, matched, decisions, times_ms, duration_ms) -> Segment:
    peak = max(run, key=lambda j: (row[j], -j))
    band = max((d.band for d in decisions), key=_BAND_SEVERITY.__getitem__)
    action = max((d.action for d in decisions), key=lambda a: a.severity)
    forced_by, clause = "", clause_id
    for j in run:
        item = matched.get(j)
        if item is not None and item.action.severity >= action.severity:
            action, forced_by, clause = item.action, item.signal, item.clause_id
    end = run[-1] + 1
    return Segment(
        category_id=category_id,
        start_ms=times_ms[run[0]],
        end_ms=times_ms[end] if end < len(times_ms) else max(duration_ms, times_ms[run[-1]]),
        band=band,
        peak_score=row[peak],
        peak_ms=times_ms[peak],
        action=action,
        clause_id=clause,
        forced_by=forced_by,
    )


@dataclass(frozen=True, slots=True)
class VideoInfo:
    """What the decoder found in the file (ModerateVideoResponse.video)."""

    container: str
    codec: str
    width: int
    height: int
    duration_ms: int
    frame_rate: float
    sample_fps: float
    frames_decoded: int
    rotation: int


@dataclass(frozen=True, slots=True)
class VideoAnswer:
    """What a video's answer adds to an image's: when each sampled frame is shown, each category's scores over
    those times, the segments, and what the decoder found. Small: no pixels."""

    times_ms: tuple[int, ...]
    timeline: dict[str, tuple[float, ...]]
    segments: tuple[Segment, ...]
    info: VideoInfo


def video_answer(evidence: Sequence[Evidence], policy: Policy, frame_indices: Sequence[int], times_ms: Sequence[int], info: VideoInfo) -> VideoAnswer:
    return VideoAnswer(
        tuple(times_ms),
        timeline(evidence, policy, len(times_ms)),
        tuple(segments(evidence, policy, frame_indices, times_ms, info.duration_ms)),
        info,
    )
