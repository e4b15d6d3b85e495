"""The review console's settings (the page itself: tests/integration/test_console_browser.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from moderation.ops.config import Settings
from moderation.serving.console import HTTP_STATUS, METHODS
from moderation.v1 import review_pb2 as rpb


def test_the_console_is_off_by_default_and_binds_like_metrics(tmp_path: Path) -> None:
    assert Settings().console_port == 0
    tokens = tmp_path / "reviewers"
    tokens.write_text("alice:alice-token-0123456789\n")
    settings = Settings(console_port=8080, reviewer_tokens_file=tokens, embedding_store=tmp_path / "s.db", host="10.0.0.5")
    assert settings.console_bind_host == "10.0.0.5"
    assert Settings(console_port=8080, console_host="127.0.0.1", reviewer_tokens_file=tokens, embedding_store=tmp_path / "s.db").console_bind_host == "127.0.0.1"


def test_the_console_needs_reviewers(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="needs the review queue: set reviewer_tokens_file"):
        Settings(console_port=8080)


def test_every_review_service_method_is_forwarded_and_refusals_map_to_http() -> None:
    assert set(METHODS) == {m.name for m in rpb.DESCRIPTOR.services_by_name["ReviewService"].methods}
    assert METHODS["AskCase"] == (rpb.AskCaseRequest, rpb.AskCaseResponse)
    import grpc

    assert (HTTP_STATUS[grpc.StatusCode.UNAUTHENTICATED], HTTP_STATUS[grpc.StatusCode.ABORTED], HTTP_STATUS[grpc.StatusCode.NOT_FOUND]) == (401, 409, 404)
