"""The review queue through the real server (issue 22): a REVIEW decision opens a case, reviewers lease and
decide it over ReviewService with their own tokens, the audit has each step, and `moderation review ...`
(export included) works against it.

One module server: a SQLite state store, thumbnails kept in a directory, a policy whose only
category always answers REVIEW (review threshold 0, on_block: REVIEW), and a reviewer token
file with two reviewers. The session's bare server shows the queue off.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from moderation.cli import app
from moderation.offline.labels import read_labels
from moderation.v1 import moderation_pb2 as pb
from moderation.v1 import moderation_pb2_grpc as pb_grpc
from moderation.v1 import review_pb2 as rpb
from moderation.v1 import review_pb2_grpc as rpb_grpc
from tests import images
from tests.conftest import TINY_CLIP
from tests.integration.server import RunningServer, running_server
from tests.postgres import PostgresServer, postgres_for_test

pytestmark = pytest.mark.integration

ALICE_TOKEN = "alice-reviewer-token-0123456789"
BOB_TOKEN = "bob-reviewer-token-0123456789ab"
MODERATOR_TOKEN = "moderator-token-0123456789"
POLICY = """\
id: queue
version: "3"
default: true
benign: ["a cat"]
categories:
  - id: weapons
    clause: {id: W-1, text: "No threatening display of firearms."}
    positive: ["a gun"]
    thresholds: {review: 0.0, block: 0.99}
    on_block: REVIEW
"""


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


ALICE, BOB = bearer(ALICE_TOKEN), bearer(BOB_TOKEN)


def server_env(root: Path, **extra: str) -> dict[str, str]:
    (root / "policies").mkdir(exist_ok=True)
    (root / "policies" / "queue.yaml").write_text(POLICY)
    (root / "reviewers").write_text(f"# one token per reviewer\nalice:{ALICE_TOKEN}\nbob:{BOB_TOKEN}\n")
    (root / "moderators").write_text(f"moderator:{MODERATOR_TOKEN}\n")
    return {
        "MODERATION_POLICIES": str(root / "policies"),
        "MODERATION_CLIP_MODEL": f"local-dir:{TINY_CLIP}",
        "MODERATION_CLIP_WEIGHTS": "random",
        "MODERATION_EMBEDDING_FLUSH_INTERVAL_S": "0.2",
        "MODERATION_REVIEWER_TOKENS_FILE": str(root / "reviewers"),
        "MODERATION_AUTH_TOKENS_FILE": str(root / "moderators"),
        **extra,
    }


@pytest.fixture(scope="module")
def review_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningServer, Path]]:
    root = tmp_path_factory.mktemp("review")
    env = server_env(root, MODERATION_EMBEDDING_STORE=str(root / "store.db"), MODERATION_THUMBNAIL_STORE=str(root / "thumbnails"))
    with running_server(root, env=env) as server:
        yield server, root


def code_of(call) -> tuple[grpc.StatusCode, str]:  # noqa: ANN001
    with pytest.raises(grpc.RpcError) as error:
        call()
    return error.value.code(), error.value.details()


def wait_for_cases(review: rpb_grpc.ReviewServiceStub, count: int) -> list[rpb.Case]:
    deadline = time.monotonic() + 30
    while True:
        cases = list(review.ListCases(rpb.ListCasesRequest(status=rpb.CASE_STATUS_OPEN), metadata=ALICE, timeout=10).cases)
        if len(cases) >= count or time.monotonic() > deadline:
            return cases
        time.sleep(0.1)


def test_a_review_decision_becomes_a_case_that_one_reviewer_at_a_time_decides(review_server: tuple[RunningServer, Path], tmp_path: Path) -> None:
    server, root = review_server
    with server.channel() as channel:
        moderation = pb_grpc.ModerationServiceStub(channel)
        review = rpb_grpc.ReviewServiceStub(channel)
        response = moderation.Moderate(pb.ModerateRequest(request_id="upload-1", image=images.astronaut_jpeg()), metadata=bearer(MODERATOR_TOKEN), timeout=30)
        assert response.action == pb.ACTION_REVIEW
        (case,) = wait_for_cases(review, 1)
        assert case.request_id == "upload-1" and case.caller == "token:moderator" and case.policy_id == "queue" and case.policy_version == "3"
        assert case.category_id == "weapons" and case.reason == "score" and case.status == rpb.CASE_STATUS_OPEN
        assert case.categories[0].score == pytest.approx(response.categories[0].score, abs=1e-5) and case.categories[0].clause_id == "W-1"

        # Tokens: a bad one, none, and a moderation token are each refused; the reviewer scope is its own.
        assert code_of(lambda: review.GetCase(rpb.GetCaseRequest(case_id=case.case_id), metadata=bearer("forged-token-0123456789"), timeout=10))[0] == grpc.StatusCode.UNAUTHENTICATED
        assert code_of(lambda: review.GetCase(rpb.GetCaseRequest(case_id=case.case_id), timeout=10))[0] == grpc.StatusCode.UNAUTHENTICATED
        code, message = code_of(lambda: review.GetCase(rpb.GetCaseRequest(case_id=case.case_id), metadata=bearer(MODERATOR_TOKEN), timeout=10))
        assert code == grpc.StatusCode.PERMISSION_DENIED and "reviewer_tokens_file" in message
        code, message = code_of(lambda: moderation.Moderate(pb.ModerateRequest(image=images.coffee_png()), metadata=ALICE, timeout=30))
        assert code == grpc.StatusCode.PERMISSION_DENIED and "reviewer" in message

        leased = review.LeaseNext(rpb.LeaseNextRequest(), metadata=ALICE, timeout=10).case
        assert leased.case_id == case.case_id and leased.lease_holder == "token:alice"
        code, message = code_of(lambda: review.LeaseCase(rpb.LeaseCaseRequest(case_id=case.case_id), metadata=BOB, timeout=10))
        assert code == grpc.StatusCode.ABORTED and "leased by another reviewer" in message
        code, _ = code_of(lambda: review.DecideCase(rpb.DecideCaseRequest(case_id=case.case_id, violates=False), metadata=BOB, timeout=10))
        assert code == grpc.StatusCode.ABORTED
        assert not review.LeaseNext(rpb.LeaseNextRequest(), metadata=BOB, timeout=10).HasField("case")  # nothing else free

        code, message = code_of(lambda: review.DecideCase(rpb.DecideCaseRequest(case_id=case.case_id, violates=True, note="x" * 2001), metadata=ALICE, timeout=10))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "2000" in message
        code, message = code_of(lambda: review.DecideCase(rpb.DecideCaseRequest(case_id=case.case_id), metadata=ALICE, timeout=10))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "violates" in message
        assert code_of(lambda: review.GetCase(rpb.GetCaseRequest(case_id="no-such-case"), metadata=ALICE, timeout=10))[0] == grpc.StatusCode.NOT_FOUND

        note = "<script>alert('x')</script> knife & fork"
        decided = review.DecideCase(rpb.DecideCaseRequest(case_id=case.case_id, violates=True, note=note), metadata=ALICE, timeout=10).case
        assert decided.status == rpb.CASE_STATUS_DECIDED and decided.decision.clause_id == "W-1" and decided.decision.note == note
        code, message = code_of(lambda: review.DecideCase(rpb.DecideCaseRequest(case_id=case.case_id, violates=False), metadata=ALICE, timeout=10))
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "already decided by token:alice" in message

        audit = review.GetCaseAudit(rpb.GetCaseAuditRequest(case_id=case.case_id), metadata=BOB, timeout=10).entries
        assert [(e.who, e.action) for e in audit] == [("service", "open"), ("token:alice", "lease"), ("token:alice", "decide")]
        assert all(e.policy_id == "queue" and e.policy_version == "3" for e in audit)

        shown = review.GetCase(rpb.GetCaseRequest(case_id=case.case_id, include_thumbnail=True), metadata=BOB, timeout=10)
        assert shown.thumbnails_kept and shown.thumbnail_jpeg[:2] == b"\xff\xd8"

    # The CLI, as a reviewer runs it: the table, then the labelled folder calibration reads.
    token_file = tmp_path / "alice.token"
    token_file.write_text(ALICE_TOKEN + "\n")
    cli = ["--target", server.target, "--token-file", str(token_file)]
    shown_cli = CliRunner().invoke(app, ["review", "show", case.case_id, "--thumbnail-out", str(tmp_path / "case.jpg"), *cli], env={"COLUMNS": "200"})
    assert shown_cli.exit_code == 0, shown_cli.output
    assert "W-1" in shown_cli.output and "<script>" in shown_cli.output and (tmp_path / "case.jpg").read_bytes()[:2] == b"\xff\xd8"
    audited = CliRunner().invoke(app, ["review", "audit", case.case_id, "--json", *cli])
    assert audited.exit_code == 0 and [e["action"] for e in json.loads(audited.output)["entries"]] == ["open", "lease", "decide"]
    listed = CliRunner().invoke(app, ["review", "list", "--status", "decided", *cli], env={"COLUMNS": "200"})
    assert listed.exit_code == 0, listed.output
    assert case.case_id in listed.output and "token:alice" in listed.output
    refused = CliRunner().invoke(app, ["review", "decide", case.case_id, "--benign", *cli])
    assert refused.exit_code == 1 and "FAILED_PRECONDITION" in refused.output
    exported = CliRunner().invoke(app, ["review", "export", str(tmp_path / "labels"), *cli])
    assert exported.exit_code == 0, exported.output
    labelled = read_labels(tmp_path / "labels", ["weapons"])
    assert [(image.path.name, set(image.labels)) for image in labelled] == [(f"{case.case_id}.jpg", {"weapons"})]
    assert case.case_id in (tmp_path / "labels" / "cases.csv").read_text()

    # Reopened on appeal, bob may take it; every step is in the audit; the metrics count it.
    reopened = CliRunner().invoke(app, ["review", "reopen", case.case_id, "--note", "the uploader appealed", *cli])
    assert reopened.exit_code == 0, reopened.output
    with server.channel() as channel:
        review = rpb_grpc.ReviewServiceStub(channel)
        assert review.LeaseCase(rpb.LeaseCaseRequest(case_id=case.case_id), metadata=BOB, timeout=10).case.lease_holder == "token:bob"
        review.DecideCase(rpb.DecideCaseRequest(case_id=case.case_id, violates=False), metadata=BOB, timeout=10)
        audit = review.GetCaseAudit(rpb.GetCaseAuditRequest(case_id=case.case_id), metadata=BOB, timeout=10).entries
        assert [e.action for e in audit] == ["open", "lease", "decide", "reopen", "lease", "decide"]
    metrics = {f.name: f for f in text_string_to_metric_families(urllib.request.urlopen(server.metrics_url, timeout=10).read().decode())}
    decisions = {(s.labels["reviewer"], s.labels["outcome"]): s.value for s in metrics["moderation_review_decisions"].samples if s.name.endswith("_total")}
    assert decisions == {("alice", "violates"): 1.0, ("bob", "benign"): 1.0}
    agreement = {(s.labels["tier"], s.labels["agreement"]): s.value for s in metrics["moderation_review_agreement"].samples if s.name.endswith("_total")}
    assert agreement == {("clip", "agree"): 1.0, ("clip", "disagree"): 1.0}  # CLIP flagged it (review threshold 0): alice agreed, bob did not
    assert any(s.labels.get("category") == "weapons" and s.labels.get("policy_version") == "3" for s in metrics["moderation_review_agreement"].samples)
    assert "moderation_review_queue_depth" in metrics and "moderation_review_oldest_open_case_age_seconds" in metrics
    assert not any(ALICE_TOKEN in line or BOB_TOKEN in line for line in server.log_text().splitlines()), "a token reached the log"


def test_reflection_lists_review_service(review_server: tuple[RunningServer, Path]) -> None:
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    with review_server[0].channel() as channel:
        assert "moderation.v1.ReviewService" in set(ProtoReflectionDescriptorDatabase(channel).get_services())


def test_the_queue_is_off_without_reviewer_tokens(server: RunningServer) -> None:
    with server.channel() as channel:
        code, message = code_of(lambda: rpb_grpc.ReviewServiceStub(channel).ListCases(rpb.ListCasesRequest(), metadata=ALICE, timeout=10))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "MODERATION_REVIEWER_TOKENS_FILE" in message


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    yield from postgres_for_test()


def test_the_same_queue_in_postgresql_with_thumbnails_as_rows(postgres: PostgresServer, tmp_path: Path) -> None:
    url = postgres.create_database("review")
    env = server_env(tmp_path, MODERATION_DATABASE_URL=url, MODERATION_KEEP_THUMBNAILS="true")
    with running_server(tmp_path, env=env) as server, server.channel() as channel:
        moderation = pb_grpc.ModerationServiceStub(channel)
        review = rpb_grpc.ReviewServiceStub(channel)
        for i in range(2):
            moderation.Moderate(pb.ModerateRequest(request_id=f"pg-{i}", image=images.coffee_png()), metadata=bearer(MODERATOR_TOKEN), timeout=30)
        cases = wait_for_cases(review, 2)
        assert sorted(c.request_id for c in cases) == ["pg-0", "pg-1"]
        first = review.LeaseNext(rpb.LeaseNextRequest(), metadata=ALICE, timeout=10).case
        second = review.LeaseNext(rpb.LeaseNextRequest(), metadata=BOB, timeout=10).case
        assert {first.case_id, second.case_id} == {c.case_id for c in cases}, "two reviewers never get the same case"
        assert code_of(lambda: review.DecideCase(rpb.DecideCaseRequest(case_id=first.case_id, violates=True), metadata=BOB, timeout=10))[0] == grpc.StatusCode.ABORTED
        review.DecideCase(rpb.DecideCaseRequest(case_id=first.case_id, violates=True), metadata=ALICE, timeout=10)
        code, _ = code_of(lambda: review.DecideCase(rpb.DecideCaseRequest(case_id=first.case_id, violates=True), metadata=ALICE, timeout=10))
        assert code == grpc.StatusCode.FAILED_PRECONDITION
        audit = review.GetCaseAudit(rpb.GetCaseAuditRequest(case_id=first.case_id), metadata=ALICE, timeout=10).entries
        assert [(e.who, e.action) for e in audit] == [("service", "open"), ("token:alice", "lease"), ("token:alice", "decide")]
        shown = review.GetCase(rpb.GetCaseRequest(case_id=first.case_id, include_thumbnail=True), metadata=ALICE, timeout=10)
        assert shown.thumbnails_kept and shown.thumbnail_jpeg[:2] == b"\xff\xd8"
