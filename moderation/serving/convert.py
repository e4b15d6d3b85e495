"""Conversions between serving results and protobuf messages, kept at the edge."""

from __future__ import annotations

from moderation.core.decision import Band
from moderation.escalation.tier import EscalationOutcome, EscalationStatus
from moderation.serving.result import ModerationResult
from moderation.policy.registry import ServedPolicy
from moderation.policy.schema import Action
from moderation.v1 import moderation_pb2 as pb

ACTION_TO_PB = {Action.ALLOW: pb.ACTION_ALLOW, Action.REVIEW: pb.ACTION_REVIEW, Action.BLOCK: pb.ACTION_BLOCK}
BAND_TO_PB = {Band.BELOW: pb.BAND_BELOW, Band.BORDERLINE: pb.BAND_BORDERLINE, Band.ABOVE: pb.BAND_ABOVE}
BANK_SIGNAL_TO_PB = {kind: getattr(pb, f"BANK_SIGNAL_TYPE_{kind.upper()}") for kind in ("pdq", "md5", "sha256", "embedding")}
ESCALATION_TO_PB = {s: getattr(pb, f"ESCALATION_STATUS_{s.value}") for s in EscalationStatus}


def result_to_pb(result: ModerationResult) -> pb.ModerateResponse:
    decision = result.decision
    return pb.ModerateResponse(
        request_id=result.request_id,
        action=ACTION_TO_PB[decision.action],
        policy_id=decision.policy_id,
        policy_version=decision.policy_version,
        model=result.model_id,
        categories=[
            pb.CategoryResult(
                id=c.category_id,
                score=c.score,
                review_threshold=c.review_threshold,
                block_threshold=c.block_threshold,
                band=BAND_TO_PB[c.band],
                clause_id=c.clause_id,
                action=ACTION_TO_PB[c.action],
                frame_index=result.frames.deciding.get(c.category_id, 0),
                forced_by=c.forced_by,
            )
            for c in decision.categories
        ],
        bank_matches=[
            pb.BankMatch(
                bank=match.bank,
                content_id=match.content_id,
                signal_type=BANK_SIGNAL_TO_PB[match.signal_type],
                distance=match.distance,
                threshold=match.threshold,
                frame_index=match.frame_index,
                category_id=forced.category_id,
                action=ACTION_TO_PB[forced.action],
                clause_id=forced.clause_id,
            )
            for forced, match in result.judgement.forced_matches()
        ],
        frames_scored=len(result.frames.indices),
        frames_total=result.frames.total,
        escalation=escalation_to_pb(result.escalation),
        timings=pb.StageTimings(
            decode_ms=result.timings.decode_ms,
            embed_ms=result.timings.embed_ms,
            decide_ms=result.timings.decide_ms,
            escalation_ms=result.timings.escalation_ms,
            total_ms=result.timings.total_ms,
        ),
        reasons=list(decision.reasons),
    )


def video_result_to_pb(result: ModerationResult) -> pb.ModerateVideoResponse:
    """A ModerateVideo answer: the image answer's decision, plus times, timeline, segments and what the file held."""
    image = result_to_pb(result)
    video = result.video
    assert video is not None, "not a video result"
    info = video.info
    return pb.ModerateVideoResponse(
        request_id=image.request_id,
        action=image.action,
        policy_id=image.policy_id,
        policy_version=image.policy_version,
        model=image.model,
        categories=image.categories,
        segments=[
            pb.VideoSegment(
                category_id=s.category_id,
                start_ms=s.start_ms,
                end_ms=s.end_ms,
                band=BAND_TO_PB[s.band],
                peak_score=s.peak_score,
                peak_ms=s.peak_ms,
                action=ACTION_TO_PB[s.action],
                clause_id=s.clause_id,
                forced_by=s.forced_by,
            )
            for s in video.segments
        ],
        frame_times_ms=list(video.times_ms),
        timeline=[pb.CategoryTimeline(category_id=c, scores=list(scores)) for c, scores in video.timeline.items()],
        reasons=image.reasons,
        bank_matches=image.bank_matches,
        video=pb.VideoInfo(
            container=info.container,
            codec=info.codec,
            width=info.width,
            height=info.height,
            duration_ms=info.duration_ms,
            frame_rate=info.frame_rate,
            sample_fps=info.sample_fps,
            frames_decoded=info.frames_decoded,
            rotation=info.rotation,
        ),
        timings=image.timings,
        escalation=image.escalation,
    )


def policy_summary_to_pb(served: ServedPolicy, is_default: bool) -> pb.PolicySummary:
    p = served.policy
    return pb.PolicySummary(
        id=p.id,
        version=p.version,
        description=p.description.strip(),
        is_default=is_default,
        category_ids=[c.id for c in p.categories],
        mode=p.mode.value,
        shadow_of=p.shadow_of or "",
        content_sha256=served.content_sha256,
    )


def policy_to_pb(served: ServedPolicy, is_default: bool) -> pb.GetPolicyResponse:
    p = served.policy
    return pb.GetPolicyResponse(
        id=p.id,
        version=p.version,
        description=p.description.strip(),
        is_default=is_default,
        templates=list(p.templates),
        benign_prompts=list(p.benign),
        categories=[
            pb.PolicyCategory(
                id=c.id,
                clause=pb.Clause(id=c.clause.id, text=c.clause.text.strip()),
                review_threshold=c.thresholds.review,
                block_threshold=c.thresholds.block,
                action_on_block=ACTION_TO_PB[c.on_block],
                positive_prompts=list(c.positive),
                contrast_prompts=list(c.contrast),
            )
            for c in p.categories
        ],
        source_yaml=served.source_text,
        content_sha256=served.content_sha256,
    )


def escalation_to_pb(outcome: EscalationOutcome) -> pb.Escalation:
    message = pb.Escalation(status=ESCALATION_TO_PB[outcome.status], reason=outcome.reason, latency_ms=outcome.latency_ms)
    verdict = outcome.verdict
    if verdict is not None:
        message.violates = verdict.violates
        message.category_id = verdict.category_id
        message.clause_id = verdict.clause_id
        message.rationale = verdict.rationale
        message.confidence = verdict.confidence
        message.model = outcome.model_id
        message.generated_tokens = outcome.generated_tokens
        message.frame_index = outcome.frame_index
        message.agrees_with_clip = outcome.agrees_with_clip
        message.changed_action = outcome.changed_action
    return message
