"""The escalation tier's bounds, with a real (deliberately slow or failing) backend object."""

from __future__ import annotations

import asyncio

from PIL import Image

from moderation.escalation.tier import EscalationMetrics, EscalationOutcome, EscalationRequest, EscalationStatus, EscalationTier, ExplainerUnavailable, Explanation
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
