"""ReviewService in-process: the real interceptors and servicer over a real SQLite store, with an injected clock, so
every refusal's gRPC status is checked without a model server (the full flow is tests/integration/test_review_service.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from prometheus_client import CollectorRegistry

from moderation.ops.metrics import ModerationMetrics
from moderation.serving.admission import Admission
from moderation.serving.auth import TokenAuth
from moderation.serving.interceptors import AdmissionInterceptor, TokenAuthInterceptor
from moderation.serving.review_service import ReviewServicer
from moderation.state.store import open_store
from moderation.v1 import banks_pb2 as bpb
from moderation.v1 import banks_pb2_grpc as bpb_grpc
from moderation.v1 import moderation_pb2 as pb
from moderation.v1 import moderation_pb2_grpc as pb_grpc
from moderation.v1 import review_pb2 as rpb
from moderation.v1 import review_pb2_grpc as rpb_grpc
from tests.state.test_review_store import T0, Clock, new_case

TOKENS = {"alice": "alice-token-0123456789", "bob": "bob-token-0123456789ab", "mod": "moderator-token-0123456", "cur": "curator-token-01234567"}


def bearer(name: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {TOKENS[name]}"),)


class Running:
    def __init__(self, channel: grpc.aio.Channel, clock: Clock, servicer: ReviewServicer, metrics: ModerationMetrics, target: str):
        self.servicer = servicer
        self.target = target
        self.review = rpb_grpc.ReviewServiceStub(channel)
        self.moderation = pb_grpc.ModerationServiceStub(channel)
        self.banks = bpb_grpc.BankServiceStub(channel)
        self.clock = clock
        self.metrics = metrics

    async def refused(self, call) -> tuple[grpc.StatusCode, str]:  # noqa: ANN001
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        return caught.value.code(), caught.value.details()


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Running]:
    store_path = tmp_path / "store.db"
    with open_store(store_path) as store:
        for i in range(3):
            store.open_case(new_case(i))
    metrics = ModerationMetrics(CollectorRegistry())
    admission = Admission(limit=1)
    admission.loaded = True
    auth = TokenAuth({"mod": TOKENS["mod"].encode()})
    interceptors = [
        TokenAuthInterceptor(
            auth, metrics, curation=TokenAuth({"cur": TOKENS["cur"].encode()}),
            review=TokenAuth({name: TOKENS[name].encode() for name in ("alice", "bob")}),
        ),
        AdmissionInterceptor(admission, ("moderation.v1.ModerationService",), "loading", unmetered=("moderation.v1.ReviewService",)),
    ]  # fmt: skip
    server = grpc.aio.server(interceptors=interceptors)
    servicer = ReviewServicer(store_path, enabled=True, metrics=metrics, lease_s=60, max_leases_per_reviewer=2, max_case_age_s=3600)
    rpb_grpc.add_ReviewServiceServicer_to_server(servicer, server)
    pb_grpc.add_ModerationServiceServicer_to_server(pb_grpc.ModerationServiceServicer(), server)
    bpb_grpc.add_BankServiceServicer_to_server(bpb_grpc.BankServiceServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await servicer.attach()
    clock = Clock()
    assert servicer.queue is not None
    servicer.queue.clock = clock
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield Running(channel, clock, servicer, metrics, f"127.0.0.1:{port}")
    finally:
        await server.stop(None)
        await servicer.close()


async def test_each_scope_is_its_own(running: Running) -> None:
    listed = await running.review.ListCases(rpb.ListCasesRequest(), metadata=bearer("alice"))
    assert len(listed.cases) == 3 and listed.open_cases == 3
    for name in ("mod", "cur"):
        code, message = await running.refused(running.review.ListCases(rpb.ListCasesRequest(), metadata=bearer(name)))
        assert code == grpc.StatusCode.PERMISSION_DENIED and "reviewer_tokens_file" in message
    code, message = await running.refused(running.moderation.ListPolicies(pb.ListPoliciesRequest(), metadata=bearer("alice")))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "reviewer's" in message
    code, message = await running.refused(running.banks.ListBanks(bpb.ListBanksRequest(), metadata=bearer("alice")))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "reviewer's" in message
    forged = (("authorization", "Bearer forged-token-0123456789"),)
    assert (await running.refused(running.review.ListCases(rpb.ListCasesRequest(), metadata=forged)))[0] == grpc.StatusCode.UNAUTHENTICATED
    failures = {s.labels["reason"]: s.value for s in running.metrics.registry.collect() for s in s.samples if s.name == "moderation_auth_failures_total"}
    assert failures == {"wrong_scope": 4.0, "invalid": 1.0}


async def test_leases_expire_by_the_clock_and_each_refusal_has_its_status(running: Running) -> None:
    review, alice, bob = running.review, bearer("alice"), bearer("bob")
    first = (await review.LeaseNext(rpb.LeaseNextRequest(), metadata=alice)).case
    assert first.lease_holder == "token:alice" and first.lease_expires_at == pytest.approx(T0 + 60)
    code, message = await running.refused(review.LeaseCase(rpb.LeaseCaseRequest(case_id=first.case_id), metadata=bob))
    assert code == grpc.StatusCode.ABORTED and "leased by another reviewer" in message
    await review.LeaseNext(rpb.LeaseNextRequest(), metadata=alice)
    code, message = await running.refused(review.LeaseNext(rpb.LeaseNextRequest(), metadata=alice))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "review_max_leases_per_reviewer" in message

    running.clock.now += 61
    code, message = await running.refused(review.DecideCase(rpb.DecideCaseRequest(case_id=first.case_id, violates=True), metadata=alice))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "expired" in message
    shown = (await review.GetCase(rpb.GetCaseRequest(case_id=first.case_id), metadata=bob)).case
    assert shown.lease_holder == "" and shown.lease_expires_at == 0  # an expired lease is no lease
    await review.LeaseCase(rpb.LeaseCaseRequest(case_id=first.case_id), metadata=bob)
    decided = (await review.DecideCase(rpb.DecideCaseRequest(case_id=first.case_id, violates=False, note="<b>fine</b>"), metadata=bob)).case
    assert decided.decision.note == "<b>fine</b>" and decided.decision.decided_by == "token:bob"
    code, message = await running.refused(review.DecideCase(rpb.DecideCaseRequest(case_id=first.case_id, violates=False), metadata=bob))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "already decided" in message
    code, _ = await running.refused(review.ReopenCase(rpb.ReopenCaseRequest(case_id=first.case_id, note="x" * 2001), metadata=alice))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert (await review.ReopenCase(rpb.ReopenCaseRequest(case_id=first.case_id, note="appeal"), metadata=alice)).case.reopened == 1
    code, _ = await running.refused(review.ReopenCase(rpb.ReopenCaseRequest(case_id=first.case_id), metadata=alice))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    audit = (await review.GetCaseAudit(rpb.GetCaseAuditRequest(case_id=first.case_id), metadata=alice)).entries
    assert [(e.who, e.action) for e in audit] == [
        ("service", "open"), ("token:alice", "lease"), ("token:bob", "lease"), ("token:bob", "decide"), ("token:alice", "reopen"),
    ]  # fmt: skip


async def test_bad_requests_are_invalid_argument_or_not_found(running: Running) -> None:
    review, alice = running.review, bearer("alice")
    for request in (rpb.GetCaseRequest(case_id=""), rpb.GetCaseRequest(case_id="x" * 65), rpb.GetCaseRequest(case_id="caf\u00e9")):
        assert (await running.refused(review.GetCase(request, metadata=alice)))[0] == grpc.StatusCode.INVALID_ARGUMENT
    assert (await running.refused(review.GetCase(rpb.GetCaseRequest(case_id="unknown"), metadata=alice)))[0] == grpc.StatusCode.NOT_FOUND
    for request in (rpb.ListCasesRequest(page_size=501), rpb.ListCasesRequest(page_token="garbage"), rpb.ListCasesRequest(status=99)):
        assert (await running.refused(review.ListCases(request, metadata=alice)))[0] == grpc.StatusCode.INVALID_ARGUMENT
    case_id = (await review.LeaseNext(rpb.LeaseNextRequest(), metadata=alice)).case.case_id
    code, message = await running.refused(review.DecideCase(rpb.DecideCaseRequest(case_id=case_id, violates=True, clause_id="nope"), metadata=alice))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "W1" in message


async def test_pages_follow_one_another_and_the_gauges_follow_the_queue(running: Running) -> None:
    review, alice = running.review, bearer("alice")
    first = await review.ListCases(rpb.ListCasesRequest(page_size=2), metadata=alice)
    assert len(first.cases) == 2 and first.next_page_token
    rest = await review.ListCases(rpb.ListCasesRequest(page_size=500, page_token=first.next_page_token), metadata=alice)
    assert len(rest.cases) == 1 and not rest.next_page_token
    await review.LeaseNext(rpb.LeaseNextRequest(), metadata=alice)
    gauge = running.metrics.registry.get_sample_value
    running.clock.now = T0 + 30  # within the 60 s lease
    await running.servicer.maintain()
    assert (gauge("moderation_review_queue_depth"), gauge("moderation_review_leased_cases")) == (3.0, 1.0)
    assert gauge("moderation_review_oldest_open_case_age_seconds") == pytest.approx(30.0)  # the oldest was opened at T0
    running.clock.now = T0 + 3700  # past max_case_age_s (3600): every open case expires
    await running.servicer.maintain()
    assert (gauge("moderation_review_queue_depth"), gauge("moderation_review_oldest_open_case_age_seconds")) == (0.0, 0.0)
    expired = await review.ListCases(rpb.ListCasesRequest(status=rpb.CASE_STATUS_EXPIRED), metadata=alice)
    assert len(expired.cases) == 3
    code, _ = await running.refused(review.LeaseCase(rpb.LeaseCaseRequest(case_id=expired.cases[0].case_id), metadata=alice))
    assert code == grpc.StatusCode.FAILED_PRECONDITION


async def test_export_without_thumbnails_writes_the_labels_and_says_why_there_are_no_images(running: Running, tmp_path: Path) -> None:
    import asyncio
    import csv

    from typer.testing import CliRunner

    from moderation.cli import app

    review, alice = running.review, bearer("alice")
    case_id = (await review.LeaseNext(rpb.LeaseNextRequest(), metadata=alice)).case.case_id
    await review.DecideCase(rpb.DecideCaseRequest(case_id=case_id, violates=True), metadata=alice)
    token = tmp_path / "alice.token"
    token.write_text(TOKENS["alice"])
    cli = ["--target", running.target, "--token-file", str(token)]

    def invoke(*args: str):  # noqa: ANN202 - the CLI is synchronous: it runs in a thread while this loop serves it
        return CliRunner().invoke(app, [*args, *cli], env={"COLUMNS": "100"})

    exported = await asyncio.to_thread(invoke, "review", "export", str(tmp_path / "labels"))
    assert exported.exit_code == 0, exported.output
    assert "no images" in exported.output and "keeps no thumbnails" in exported.output
    rows = list(csv.DictReader((tmp_path / "labels" / "cases.csv").open()))
    assert [(r["case_id"], r["label"], r["clause_id"], r["decided_by"], r["image"]) for r in rows] == [(case_id, "weapons", "W1", "token:alice", "")]
    undecided = await asyncio.to_thread(invoke, "review", "decide", case_id)
    assert undecided.exit_code == 2 and "--violates or --benign" in undecided.output


async def test_agreement_is_counted_against_clip_and_against_smolvlm2(running: Running, tmp_path: Path) -> None:
    """docs/reviewing.md: tier="explainer" compares the reviewer with SmolVLM2's verdict on the category it cited."""
    import dataclasses

    from moderation.state.review import CaseCategory

    judged = [
        dataclasses.replace(
            new_case(10 + i, request_id=f"judged-{i}"),
            categories=(
                CaseCategory("weapons", 0.31, 0.3, 0.4, "BORDERLINE", "REVIEW", "W1"),
                CaseCategory("drugs", 0.1, 0.3, 0.4, "BELOW", "ALLOW", "D1", explainer=said),
            ),
        )
        for i, said in enumerate(("violates", "clear"))
    ]
    with open_store(tmp_path / "store.db") as store:
        for case in judged:
            store.open_case(case)
    review, alice = running.review, bearer("alice")
    for case in judged:
        await review.LeaseCase(rpb.LeaseCaseRequest(case_id=case.case_id), metadata=alice)
        await review.DecideCase(rpb.DecideCaseRequest(case_id=case.case_id, violates=False), metadata=alice)
    counted = {
        (s.labels["tier"], s.labels["category"], s.labels["agreement"]): s.value
        for family in running.metrics.registry.collect()
        for s in family.samples
        if s.name == "moderation_review_agreement_total"
    }
    # CLIP put weapons at review both times, the reviewer found no violation; SmolVLM2 said drugs violates once, clear once.
    assert counted == {("clip", "weapons", "disagree"): 2.0, ("explainer", "drugs", "disagree"): 1.0, ("explainer", "drugs", "agree"): 1.0}
