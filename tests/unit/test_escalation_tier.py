"""The escalation tier's bounds, with a real (deliberately slow or failing) backend object."""

from __future__ import annotations

import asyncio

from PIL import Image

from moderation.escalation.tier import (
    Answer,
    AnswerOutcome,
    EscalationMetrics,
    EscalationOutcome,
    EscalationRequest,
    EscalationStatus,
    EscalationTier,
    ExplainerUnavailable,
    Explanation,
    ReviewerQuestion,
)
from moderation.escalation.verdict import ExplainerVerdict
from tests.policies import TWO_CATEGORIES as POLICY


class SlowExplainer:
    model_id = "slow"

    def __init__(self, delay_s: float = 0.0, fail: bool = False):
        self.delay_s = delay_s
        self.fail = fail
        self.calls = 0

    async def explain(self, request: EscalationRequest, timeout_s: float) -> Explanation:
        self.calls += 1
        await asyncio.wait_for(asyncio.sleep(self.delay_s), timeout_s)
        if self.fail:
            raise ExplainerUnavailable("down")
        category = request.policy.category(request.category_ids[0])
        return Explanation(ExplainerVerdict(True, category.id, category.clause.id, "because", 0.9), self.model_id, 12)

    async def close(self) -> None:
        pass


def request() -> EscalationRequest:
    return EscalationRequest("r", b"", Image.new("RGB", (4, 4)), POLICY, (POLICY.categories[0].id,))


def tier(backend: SlowExplainer, **kwargs: object) -> EscalationTier:
    return EscalationTier(backend, **kwargs)


async def test_completed_and_timed_out() -> None:
    assert (await tier(SlowExplainer()).escalate(request(), 5)).status is EscalationStatus.COMPLETED
    outcome = await tier(SlowExplainer(delay_s=1), timeout_s=0.05).escalate(request(), 5)
    assert outcome.status is EscalationStatus.TIMED_OUT and "did not answer within" in outcome.reason


async def test_queue_bound_sheds_at_once() -> None:
    reported: list[tuple[str, EscalationOutcome]] = []
    depths: list[int] = []
    slow = tier(
        SlowExplainer(delay_s=0.3), metrics=EscalationMetrics(lambda p, o: reported.append((p, o)), depths.append), max_concurrent=1, max_waiting=1
    )
    outcomes = await asyncio.gather(*(slow.escalate(request(), 5) for _ in range(4)))
    statuses = sorted(o.status.value for o in outcomes)
    assert statuses.count("COMPLETED") == 2 and statuses.count("SHED") == 2
    assert sorted(o.status.value for _, o in reported) == statuses and {p for p, _ in reported} == {POLICY.id}
    assert depths == [1, 0], "one request waited for the slot, then none"


async def test_budget_sheds_beyond_the_rate() -> None:
    budgeted = tier(SlowExplainer(), budget_per_minute=2)
    outcomes = [await budgeted.escalate(request(), 5) for _ in range(3)]
    assert [o.status for o in outcomes] == [EscalationStatus.COMPLETED, EscalationStatus.COMPLETED, EscalationStatus.SHED]
    assert "budget" in outcomes[-1].reason


async def test_circuit_breaker_opens_and_half_opens() -> None:
    backend = SlowExplainer(fail=True)
    breaking = tier(backend, failure_threshold=2, cooldown_s=0.2)
    first = [await breaking.escalate(request(), 5) for _ in range(3)]
    assert [o.status for o in first] == [EscalationStatus.FAILED, EscalationStatus.FAILED, EscalationStatus.SHED]
    assert backend.calls == 2, "an open circuit does not call the explainer"
    await asyncio.sleep(0.25)
    backend.fail = False
    assert (await breaking.escalate(request(), 5)).status is EscalationStatus.COMPLETED, "the trial call closes the circuit"
    assert (await breaking.escalate(request(), 5)).status is EscalationStatus.COMPLETED


async def test_a_budget_shed_of_the_half_open_trial_lets_a_later_request_try_again() -> None:
    """Half-open, the breaker admits one trial call; if the budget sheds it, the trial never ran.

    The next request, once the budget has a token again, must get the trial (and close the
    circuit when it succeeds); a trial left marked as running would shed every later
    request with "not calling it for now", forever.
    """
    backend = SlowExplainer()
    # 30 a minute: a full bucket of 30 tokens, then one every 2 s.
    breaking = tier(backend, failure_threshold=1, cooldown_s=0.05, budget_per_minute=30)
    for _ in range(29):
        assert (await breaking.escalate(request(), 5)).status is EscalationStatus.COMPLETED
    backend.fail = True
    assert (await breaking.escalate(request(), 5)).status is EscalationStatus.FAILED, "the last token: the circuit opens"
    await asyncio.sleep(0.1)  # past the cooldown: half-open, and the budget still empty (well under 2 s)
    backend.fail = False
    shed = await breaking.escalate(request(), 5)
    assert shed.status is EscalationStatus.SHED and "budget" in shed.reason, "the trial call met the empty budget"
    assert backend.calls == 30

    await asyncio.sleep(2.2)  # one token again
    trial = await breaking.escalate(request(), 5)
    assert trial.status is EscalationStatus.COMPLETED, f"no trial after the budget shed: {trial.reason}"
    assert backend.calls == 31


# -- each bound as the module documents it (moderation/escalation/tier.py; README: the explainer settings) --


class ScriptedExplainer:
    """Per request id: how long the explainer takes and whether it then fails (a real object, no mock)."""

    model_id = "scripted"

    def __init__(self, script: dict[str, tuple[float, bool]] | None = None, message: str = "down"):
        self.script = script or {}
        self.message = message
        self.calls: list[str] = []
        self.timeouts: list[float] = []

    async def _run(self, key: str, timeout_s: float) -> None:
        self.calls.append(key)
        self.timeouts.append(timeout_s)
        delay, fail = self.script.get(key, (0.0, False))
        await asyncio.wait_for(asyncio.sleep(delay), timeout_s)
        if fail:
            raise ExplainerUnavailable(self.message)

    async def explain(self, request: EscalationRequest, timeout_s: float) -> Explanation:
        await self._run(request.request_id, timeout_s)
        category = request.policy.category(request.category_ids[0])
        verdict = ExplainerVerdict(False, category.id, category.clause.id, "a toy", 0.75)
        return Explanation(verdict, "smol-" + request.request_id, 7, frame_index=request.frame_index + 2)

    async def ask(self, question: ReviewerQuestion, timeout_s: float) -> Answer:
        await self._run(question.case_id, timeout_s)
        return Answer("it is a toy", self.model_id, 5)

    async def close(self) -> None:
        pass


def named(request_id: str, frame_index: int = 0) -> EscalationRequest:
    return EscalationRequest(request_id, b"", Image.new("RGB", (4, 4)), POLICY, (POLICY.categories[1].id,), frame_index=frame_index)


async def test_a_completed_outcome_carries_the_explainers_verdict_model_tokens_and_frame() -> None:
    outcome = await EscalationTier(ScriptedExplainer()).escalate(named("r1", frame_index=3), 5)
    assert outcome.status is EscalationStatus.COMPLETED and outcome.reason == ""
    assert outcome.verdict == ExplainerVerdict(False, "weapons", "W-1", "a toy", 0.75)
    assert (outcome.model_id, outcome.generated_tokens, outcome.frame_index) == ("smol-r1", 7, 5)
    assert outcome.latency_ms >= 0.0


async def test_each_explanation_gets_the_tier_timeout_or_the_requests_time_left_whichever_is_less() -> None:
    backend = ScriptedExplainer({"slow": (5.0, False)})
    short_tier = EscalationTier(backend, timeout_s=0.2)
    outcome = await short_tier.escalate(named("slow"), 30)
    assert outcome.status is EscalationStatus.TIMED_OUT and outcome.reason == "the explainer did not answer within 0.2 s"
    long_tier = EscalationTier(backend, timeout_s=20)
    outcome = await long_tier.escalate(named("slow"), 0.3)
    assert outcome.status is EscalationStatus.TIMED_OUT and outcome.reason == "the explainer did not answer within 0.3 s"
    assert backend.timeouts[0] <= 0.2 and backend.timeouts[1] <= 0.3
    assert (await long_tier.escalate(named("quick"), 30)).status is EscalationStatus.COMPLETED
    assert 19.0 < backend.timeouts[2] <= 20.0


async def test_time_spent_waiting_for_a_slot_comes_out_of_the_explanations_timeout() -> None:
    """One slot: the second request waits for the first (0.3 s), then has what is left of its 0.5 s, not 0.5 s again."""
    backend = ScriptedExplainer({"first": (0.3, False), "second": (0.35, False)})
    one_slot = EscalationTier(backend, max_concurrent=1, timeout_s=20)
    first, second = await asyncio.gather(one_slot.escalate(named("first"), 30), one_slot.escalate(named("second"), 0.5))
    assert first.status is EscalationStatus.COMPLETED
    assert second.status is EscalationStatus.TIMED_OUT and second.reason == "the explainer did not answer within 0.5 s"
    assert backend.timeouts[1] < 0.25


async def test_a_failure_reason_is_at_most_300_characters() -> None:
    backend = ScriptedExplainer({"r": (0.0, True)}, message="x" * 1000)
    outcome = await EscalationTier(backend).escalate(named("r"), 5)
    assert outcome.status is EscalationStatus.FAILED
    assert outcome.reason.startswith("the explainer failed: xxx") and len(outcome.reason) == 300
    short = await EscalationTier(ScriptedExplainer({"r": (0.0, True)})).escalate(named("r"), 5)
    assert short.reason == "the explainer failed: down"


async def test_the_breaker_counts_consecutive_failures_only() -> None:
    """failure_threshold consecutive failures or timeouts open it; a success in between starts the count again."""
    backend = ScriptedExplainer({"bad": (0.0, True), "good": (0.0, False)})
    breaking = EscalationTier(backend, failure_threshold=2, cooldown_s=60)
    statuses = [(await breaking.escalate(named(k), 5)).status for k in ("bad", "good", "bad", "good", "bad")]
    assert statuses == [EscalationStatus.FAILED, EscalationStatus.COMPLETED, EscalationStatus.FAILED, EscalationStatus.COMPLETED, EscalationStatus.FAILED]
    assert (await breaking.escalate(named("bad"), 5)).status is EscalationStatus.FAILED, "the second failure in a row is still called"
    shed = await breaking.escalate(named("good"), 5)
    assert shed.status is EscalationStatus.SHED
    assert shed.reason == "the explainer failed 2 times in a row; not calling it for now"
    assert len(backend.calls) == 6


async def test_a_timeout_counts_as_a_failure_for_the_breaker() -> None:
    backend = ScriptedExplainer({"slow": (5.0, False)})
    breaking = EscalationTier(backend, failure_threshold=1, cooldown_s=60, timeout_s=0.05)
    assert (await breaking.escalate(named("slow"), 5)).status is EscalationStatus.TIMED_OUT
    assert (await breaking.escalate(named("quick"), 5)).status is EscalationStatus.SHED
    assert backend.calls == ["slow"]


async def test_a_failed_trial_opens_the_circuit_for_another_cooldown_and_one_trial_runs_at_a_time() -> None:
    backend = ScriptedExplainer({"bad": (0.0, True), "trial": (0.3, False)})
    breaking = EscalationTier(backend, failure_threshold=1, cooldown_s=0.2)
    assert (await breaking.escalate(named("bad"), 5)).status is EscalationStatus.FAILED
    await asyncio.sleep(0.25)
    assert (await breaking.escalate(named("bad"), 5)).status is EscalationStatus.FAILED, "the trial call"
    assert (await breaking.escalate(named("good"), 5)).status is EscalationStatus.SHED, "open again at once after a failed trial"
    await asyncio.sleep(0.25)
    trial, other = await asyncio.gather(breaking.escalate(named("trial"), 5), breaking.escalate(named("other"), 5))
    assert trial.status is EscalationStatus.COMPLETED
    assert other.status is EscalationStatus.SHED and "not calling it for now" in other.reason, "half-open: only one trial"
    assert backend.calls == ["bad", "bad", "trial"]
    assert (await breaking.escalate(named("after"), 5)).status is EscalationStatus.COMPLETED, "the trial closed the circuit"


async def _open_with_busy_slots() -> tuple[EscalationTier, list[asyncio.Task]]:
    """Two slots, both held by slow calls admitted before the breaker opened (failure_threshold 1), then half-open."""
    backend = ScriptedExplainer({"long1": (2.0, False), "fails": (0.05, True), "long2": (2.0, False)})
    breaking = EscalationTier(backend, max_concurrent=2, max_waiting=4, failure_threshold=1, cooldown_s=0.05)
    started = [asyncio.ensure_future(breaking.escalate(named(k), 10)) for k in ("long1", "fails", "long2")]
    await asyncio.sleep(0.2)  # "fails" failed at 0.05 s (the circuit opened), "long2" took its slot; past the cooldown
    assert started[1].done() and started[1].result().status is EscalationStatus.FAILED
    return breaking, started


async def test_a_trial_that_times_out_waiting_for_a_slot_lets_the_next_request_be_the_trial() -> None:
    breaking, started = await _open_with_busy_slots()
    first = await breaking.escalate(named("trial1"), 0.1)
    assert first.status is EscalationStatus.TIMED_OUT and first.reason == "no explainer slot became free within the time left"
    second = await breaking.escalate(named("trial2"), 0.1)
    assert second.status is EscalationStatus.TIMED_OUT, f"the first trial never ran; the next request must be the trial: {second.reason}"
    for task in started:
        task.cancel()
    await asyncio.gather(*started, return_exceptions=True)


async def test_a_budget_under_one_a_minute_still_admits_one_escalation() -> None:
    budgeted = EscalationTier(ScriptedExplainer(), budget_per_minute=0.5)
    first, second = [await budgeted.escalate(named(k), 5) for k in ("a", "b")]
    assert first.status is EscalationStatus.COMPLETED
    assert second.status is EscalationStatus.SHED
    assert second.reason == "the escalation budget is used up for now (setting explainer_budget_per_minute)"


async def test_reviewer_questions_go_through_the_same_bounds() -> None:
    backend = ScriptedExplainer({"case-slow": (5.0, False)})
    tier_ = EscalationTier(backend, budget_per_minute=2, timeout_s=0.1)

    def question(case_id: str) -> ReviewerQuestion:
        return ReviewerQuestion(case_id, b"", Image.new("RGB", (4, 4)), POLICY, "weapons", "is it a toy?")

    answered = await tier_.ask(question("case-1"), 5)
    assert answered.status is EscalationStatus.COMPLETED and answered.answer == Answer("it is a toy", "scripted", 5)
    timed_out = await tier_.ask(question("case-slow"), 5)
    assert timed_out.status is EscalationStatus.TIMED_OUT and timed_out.answer is None
    shed = await tier_.ask(question("case-3"), 5)
    assert shed.status is EscalationStatus.SHED and "budget" in shed.reason
    assert backend.calls == ["case-1", "case-slow"]


def test_borderline_categories_are_escalated_and_all_of_them_only_when_forced() -> None:
    from moderation.escalation.tier import categories_to_escalate

    assert categories_to_escalate(["weapons"], ["violence", "weapons"], forced=False) == ("weapons",)
    assert categories_to_escalate(["weapons"], ["violence", "weapons"], forced=True) == ("weapons",)
    assert categories_to_escalate([], ["violence", "weapons"], forced=True) == ("violence", "weapons")
    assert categories_to_escalate([], ["violence", "weapons"], forced=False) == ()


def test_outcomes_requests_and_answers_are_values_and_a_not_needed_outcome_is_empty() -> None:
    import dataclasses

    import pytest

    assert EscalationOutcome() == EscalationOutcome(EscalationStatus.NOT_NEEDED, "", None, "", 0, 0, 0.0, False, False)
    assert AnswerOutcome(EscalationStatus.SHED) == AnswerOutcome(EscalationStatus.SHED, "", None, 0.0)
    assert request().frame_index == 0, "a still image is frame 0"
    assert Explanation(ExplainerVerdict(True, "weapons", "W-1", "a gun", 0.9), "m", 3).frame_index == 0
    for value, field in (
        (EscalationOutcome(), "reason"),
        (named("r"), "request_id"),
        (AnswerOutcome(EscalationStatus.SHED), "reason"),
        (EscalationMetrics(), "outcome"),
        (Answer("a", "m", 1), "text"),
        (Explanation(ExplainerVerdict(True, "weapons", "W-1", "a gun", 0.9), "m", 3), "model_id"),
        (ReviewerQuestion("c", b"", Image.new("RGB", (4, 4)), POLICY, None, "why?"), "question"),
    ):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(value, field, None)


async def test_the_budget_refills_at_budget_per_minute() -> None:
    """A token bucket of `budget_per_minute` escalations: emptied, then 30 s later (set back on its clock) it holds 30, 59 s later 59."""
    from moderation.escalation.tier import TokenBucket

    bucket = TokenBucket(60)
    assert sum(bucket.take() for _ in range(61)) == 60, "a full bucket holds a minute's budget"
    bucket.updated -= 30.0
    assert sum(bucket.take() for _ in range(40)) == 30
    bucket.updated -= 59.0  # 59 s: 59 tokens at one a second, not a full bucket of 60
    assert sum(bucket.take() for _ in range(70)) == 59


def test_an_explanation_watches_at_most_8_frames_of_a_video_segment() -> None:
    """docs/video.md: the explainer watches 'up to 8 of its sampled frames'; explain-serve and the server share the bound."""
    from moderation.escalation.tier import MAX_WATCHED_FRAMES
    from moderation.serving.shell import VIDEO_ESCALATION_FRAMES

    assert MAX_WATCHED_FRAMES == VIDEO_ESCALATION_FRAMES == 8


async def test_the_tier_defaults_are_the_documented_settings() -> None:
    """README: explainer timeout 20 s, 1 at once, 4 waiting, 60 a minute; breaker 3 failures, 30 s (ops/config.py)."""
    from moderation.ops.config import Settings

    fields = Settings.model_fields
    defaults = EscalationTier(ScriptedExplainer({"bad": (0.0, True)}))
    assert (defaults.timeout_s, defaults.max_waiting) == (fields["explainer_timeout_s"].default, fields["explainer_max_waiting"].default) == (20.0, 4)
    statuses = [(await defaults.escalate(named("ok"), 5)).status for _ in range(61)]
    assert statuses.count(EscalationStatus.COMPLETED) == 60 == fields["explainer_budget_per_minute"].default
    breaking = EscalationTier(ScriptedExplainer({"bad": (0.0, True)}))
    statuses = [(await breaking.escalate(named("bad"), 5)).status for _ in range(4)]
    assert statuses == [EscalationStatus.FAILED] * 3 + [EscalationStatus.SHED], "3 failures in a row open the breaker"
    assert fields["explainer_failure_threshold"].default == 3
    assert breaking._breaker.cooldown_s == fields["explainer_cooldown_s"].default == 30.0
    assert breaking.model_id == "scripted", "the tier names its backend's model"
    # One explanation at a time: of two at once, the second waits for the slot.
    depths: list[int] = []
    one_at_a_time = EscalationTier(ScriptedExplainer({"slow": (0.2, False)}), metrics=EscalationMetrics(queue_depth=depths.append))
    both = await asyncio.gather(one_at_a_time.escalate(named("slow"), 5), one_at_a_time.escalate(named("slow"), 5))
    assert [o.status for o in both] == [EscalationStatus.COMPLETED] * 2 and depths == [1, 0]
    assert fields["explainer_max_concurrent"].default == 1


async def test_no_time_left_still_hands_the_explainer_a_positive_timeout() -> None:
    backend = ScriptedExplainer()
    outcome = await EscalationTier(backend).escalate(named("r"), 0)
    assert backend.timeouts and backend.timeouts[0] > 0
    assert outcome.status in (EscalationStatus.COMPLETED, EscalationStatus.TIMED_OUT)


async def test_latency_is_reported_in_milliseconds() -> None:
    outcome = await EscalationTier(ScriptedExplainer({"slow": (1.2, False)})).escalate(named("slow"), 30)
    assert outcome.status is EscalationStatus.COMPLETED and outcome.latency_ms >= 1200.0
    assert outcome.latency_ms < 600_000, "the call's own duration (the test itself times out at 10 minutes)"
    budgeted = EscalationTier(ScriptedExplainer(), budget_per_minute=1)
    await budgeted.escalate(named("r"), 5)
    shed = await budgeted.escalate(named("r"), 5)
    assert shed.status is EscalationStatus.SHED and shed.latency_ms == 0.0, "shed before any waiting: no latency"
