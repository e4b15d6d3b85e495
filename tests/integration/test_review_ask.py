"""ReviewService.AskCase through the real server (issue 22): the reviewer holding a case's lease asks the
explainer (tiny SmolVLM2, random weights, in-process) about the case's kept thumbnail; the advisory answer
is kept with the case and the asking audited; bad questions and other reviewers are refused with a sentence.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from moderation.state.thumbnails import thumbnail_path
from moderation.v1 import moderation_pb2 as pb
from moderation.v1 import moderation_pb2_grpc as pb_grpc
from moderation.v1 import review_pb2 as rpb
from moderation.v1 import review_pb2_grpc as rpb_grpc
from tests import images
from tests.conftest import TINY_CLIP
from tests.integration.server import RunningServer, running_server

pytestmark = pytest.mark.integration

ALICE_TOKEN = "alice-reviewer-token-0123456789"
BOB_TOKEN = "bob-reviewer-token-0123456789ab"
# Every image is borderline for weapons (review 0, block 1): each decision is REVIEW and opens a case.
POLICY = """\
id: queue
version: "3"
default: true
benign: ["a cat"]
categories:
  - id: weapons
    clause: {id: W-1, text: "No threatening display of firearms."}
    positive: ["a gun"]
    thresholds: {review: 0.0, block: 1.0}
"""
EXPLAINER = ("--explainer", "in-process", "--explainer-model", "tiny-smolvlm", "--explainer-weights", "random")
ANSWER = re.compile(r"[?!A-Za-z0-9 ,.;:'()-]{1,362}")


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


ALICE, BOB = bearer(ALICE_TOKEN), bearer(BOB_TOKEN)


def server_root(tmp_path_factory: pytest.TempPathFactory, name: str) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp(name)
    (root / "policies").mkdir()
    (root / "policies" / "queue.yaml").write_text(POLICY)
    (root / "reviewers").write_text(f"alice:{ALICE_TOKEN}\nbob:{BOB_TOKEN}\n")
    env = {
        "MODERATION_EMBEDDING_STORE": str(root / "store.db"),
        "MODERATION_THUMBNAIL_STORE": str(root / "thumbnails"),
        "MODERATION_EMBEDDING_FLUSH_INTERVAL_S": "0.2",
        "MODERATION_REVIEWER_TOKENS_FILE": str(root / "reviewers"),
    }
    return root, env


@pytest.fixture(scope="module")
def ask_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningServer, Path]]:
    root, env = server_root(tmp_path_factory, "ask")
    args = ("--policies", str(root / "policies"), "--model", f"local-dir:{TINY_CLIP}", "--weights", "random", *EXPLAINER)
    with running_server(root, *args, env=env) as server:
        yield server, root


def code_of(call) -> tuple[grpc.StatusCode, str]:  # noqa: ANN001
    with pytest.raises(grpc.RpcError) as error:
        call()
    return error.value.code(), error.value.details()


def open_case(channel: grpc.Channel, request_id: str) -> rpb.Case:
    """Moderate one image (REVIEW) and wait for its case."""
    response = pb_grpc.ModerationServiceStub(channel).Moderate(pb.ModerateRequest(request_id=request_id, image=images.astronaut_jpeg()), timeout=120)
    assert response.action == pb.ACTION_REVIEW
    review = rpb_grpc.ReviewServiceStub(channel)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for case in review.ListCases(rpb.ListCasesRequest(page_size=100), metadata=ALICE, timeout=10).cases:
            if case.request_id == request_id:
                return case
        time.sleep(0.1)
    raise AssertionError(f"no case opened for {request_id}")


def test_the_reviewer_holding_the_lease_asks_and_the_answer_is_kept_advisory_and_audited(ask_server: tuple[RunningServer, Path]) -> None:
    server, _ = ask_server
    with server.channel() as channel:
        review = rpb_grpc.ReviewServiceStub(channel)
        case = open_case(channel, "ask-1")
        ask = rpb.AskCaseRequest(case_id=case.case_id, question="Is the <b>knife</b> being sold?")

        code, message = code_of(lambda: review.AskCase(ask, metadata=ALICE, timeout=60))
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "lease it first" in message
        review.LeaseCase(rpb.LeaseCaseRequest(case_id=case.case_id), metadata=ALICE, timeout=10)
        code, message = code_of(lambda: review.AskCase(ask, metadata=BOB, timeout=60))
        assert code == grpc.StatusCode.ABORTED and "leased by another reviewer" in message
        for question, says in [("x" * 301, "at most 300"), ("  ", "the question is empty"), ("two\nlines", "ask it on one line")]:
            code, message = code_of(lambda: review.AskCase(rpb.AskCaseRequest(case_id=case.case_id, question=question), metadata=ALICE, timeout=60))
            assert code == grpc.StatusCode.INVALID_ARGUMENT and says in message, message
        assert code_of(lambda: review.AskCase(ask, metadata=bearer("forged-token-0123456789"), timeout=10))[0] == grpc.StatusCode.UNAUTHENTICATED

        reply = review.AskCase(ask, metadata=ALICE, timeout=120)
        asked = reply.question
        assert asked.advisory and asked.asked_by == "token:alice" and asked.question == "Is the <b>knife</b> being sold?"
        assert ANSWER.fullmatch(asked.answer), asked.answer
        assert asked.model.endswith("random") and asked.asked_at > 0
        assert [q.answer for q in reply.case.questions] == [asked.answer]

        # Kept with the case: GetCase returns it; the audit says who asked, without the question's text.
        kept = review.GetCase(rpb.GetCaseRequest(case_id=case.case_id), metadata=BOB, timeout=10).case
        assert [(q.question, q.answer, q.advisory) for q in kept.questions] == [(asked.question, asked.answer, True)]
        entries = review.GetCaseAudit(rpb.GetCaseAuditRequest(case_id=case.case_id), metadata=BOB, timeout=10).entries
        asks = [e for e in entries if e.action == "ask"]
        assert len(asks) == 1 and asks[0].who == "token:alice" and asks[0].policy_version == "3"
        assert "advisory answer by" in asks[0].detail and "knife" not in asks[0].detail

        # Decided: no more questions.
        review.DecideCase(rpb.DecideCaseRequest(case_id=case.case_id, violates=False), metadata=ALICE, timeout=10)
        code, message = code_of(lambda: review.AskCase(ask, metadata=ALICE, timeout=60))
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "is decided" in message
    assert "knife" not in server.log_text(), "questions are not logged"


def test_a_case_without_a_kept_thumbnail_cannot_be_asked_about(ask_server: tuple[RunningServer, Path]) -> None:
    server, root = ask_server
    with server.channel() as channel:
        review = rpb_grpc.ReviewServiceStub(channel)
        case = open_case(channel, "ask-2")
        review.LeaseCase(rpb.LeaseCaseRequest(case_id=case.case_id), metadata=ALICE, timeout=10)
        deadline = time.monotonic() + 30
        path = thumbnail_path(root / "thumbnails", "ask-2", case.caller)
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        path.unlink()
        code, message = code_of(lambda: review.AskCase(rpb.AskCaseRequest(case_id=case.case_id, question="Sold?"), metadata=ALICE, timeout=60))
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "MODERATION_KEEP_THUMBNAILS" in message, message
        assert len(review.GetCase(rpb.GetCaseRequest(case_id=case.case_id), metadata=ALICE, timeout=10).case.questions) == 0


def test_without_the_explainer_questions_are_refused_with_a_sentence(tmp_path_factory: pytest.TempPathFactory) -> None:
    root, env = server_root(tmp_path_factory, "ask-off")
    args = ("--policies", str(root / "policies"), "--model", f"local-dir:{TINY_CLIP}", "--weights", "random")
    with running_server(root, *args, env=env) as server, server.channel() as channel:
        review = rpb_grpc.ReviewServiceStub(channel)
        case = open_case(channel, "off-1")
        review.LeaseCase(rpb.LeaseCaseRequest(case_id=case.case_id), metadata=ALICE, timeout=10)
        code, message = code_of(lambda: review.AskCase(rpb.AskCaseRequest(case_id=case.case_id, question="Sold?"), metadata=ALICE, timeout=60))
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "the explainer is off" in message, message
        # The server is still up and the case still decidable.
        assert review.DecideCase(rpb.DecideCaseRequest(case_id=case.case_id, violates=True), metadata=ALICE, timeout=10).case.decision.violates


def test_the_cli_asks_and_shows_the_questions(ask_server: tuple[RunningServer, Path], tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from moderation.cli import app

    server, _ = ask_server
    token_file = tmp_path / "alice.token"
    token_file.write_text(ALICE_TOKEN + "\n")
    cli = ["--target", server.target, "--token-file", str(token_file)]
    with server.channel() as channel:
        case = open_case(channel, "ask-cli")
        rpb_grpc.ReviewServiceStub(channel).LeaseCase(rpb.LeaseCaseRequest(case_id=case.case_id), metadata=ALICE, timeout=10)
    asked = CliRunner().invoke(app, ["review", "ask", case.case_id, "Is it <i>for sale</i>?", *cli])
    assert asked.exit_code == 0, asked.output
    assert asked.output.startswith("answer (advisory: it decides nothing): ")
    shown = CliRunner().invoke(app, ["review", "show", case.case_id, *cli])
    assert shown.exit_code == 0, shown.output
    assert "asked by token:alice at " in shown.output and ": Is it <i>for sale</i>?" in shown.output
    assert "answer (advisory, tiny-smolvlm" in shown.output
    refused = CliRunner().invoke(app, ["review", "ask", case.case_id, "x" * 301, *cli])
    assert refused.exit_code == 1 and "at most 300" in refused.output
