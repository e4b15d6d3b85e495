"""Token files are read again when they change: a revoked token is refused without a restart (docs/security.md)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from moderation.serving.auth import TokenAuth, TokenFileError

ALICE, BOB = "alice-token-0123456789", "bob-token-0123456789ab"


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def replace_file(path: Path, text: str) -> None:
    """As a Kubernetes Secret update does: a new file renamed over the old one (a new inode)."""
    fresh = path.with_suffix(".new")
    fresh.write_text(text)
    fresh.replace(path)


def test_a_removed_token_is_refused_and_an_added_one_taken_at_the_next_check(tmp_path: Path) -> None:
    tokens = tmp_path / "reviewers"
    tokens.write_text(f"alice:{ALICE}\nbob:{BOB}\n")
    auth = TokenAuth.from_file(tokens, "MODERATION_REVIEWER_TOKENS_FILE", recheck_s=0)
    assert auth.check(bearer(ALICE)) == ("alice", "") and auth.check(bearer(BOB)) == ("bob", "")
    replace_file(tokens, f"bob:{BOB}\ncarol:carol-token-0123456789\n")
    assert auth.check(bearer(ALICE)) == (None, "invalid"), "alice's token was removed from the file"
    assert auth.check(bearer("carol-token-0123456789")) == ("carol", "")
    assert auth.check(bearer(BOB)) == ("bob", "")


def test_a_broken_edit_keeps_the_tokens_in_force_and_says_why(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    tokens = tmp_path / "reviewers"
    tokens.write_text(f"alice:{ALICE}\n")
    auth = TokenAuth.from_file(tokens, "MODERATION_REVIEWER_TOKENS_FILE", recheck_s=0)
    with caplog.at_level(logging.ERROR, logger="moderation.serving.auth"):
        replace_file(tokens, "alice:short\n")
        assert auth.check(bearer(ALICE)) == ("alice", "")
        tokens.unlink()
        assert auth.check(bearer(ALICE)) == ("alice", "")
    assert "MODERATION_REVIEWER_TOKENS_FILE changed but cannot be used" in caplog.text
    assert ALICE not in caplog.text, "a token reached the log"


def test_the_file_is_not_read_again_before_the_interval(tmp_path: Path) -> None:
    tokens = tmp_path / "reviewers"
    tokens.write_text(f"alice:{ALICE}\n")
    auth = TokenAuth.from_file(tokens, "MODERATION_REVIEWER_TOKENS_FILE", recheck_s=3600)
    replace_file(tokens, f"bob:{BOB}\n")
    assert auth.check(bearer(ALICE)) == ("alice", ""), "checked at most once an interval"


def test_a_file_without_tokens_stops_the_start(tmp_path: Path) -> None:
    tokens = tmp_path / "reviewers"
    tokens.write_text("# nobody yet\n")
    with pytest.raises(TokenFileError, match="holds no tokens"):
        TokenAuth.from_file(tokens, "MODERATION_REVIEWER_TOKENS_FILE")
