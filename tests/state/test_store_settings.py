"""Which store the settings name: database_url first, then the older file settings; clear errors, no passwords."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from pydantic import ValidationError

from moderation.ops.config import Settings
from moderation.runtime import ConfigurationError, build_store, build_thumbnails
from moderation.state.thumbnails import DatabaseThumbnails, ThumbnailStore


def test_database_url_takes_precedence_over_the_file_settings(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings(
        database_url=f"sqlite://{tmp_path / 'shared.db'}", embedding_store=tmp_path / "file.db", thumbnail_store=tmp_path / "thumbs"
    )
    with caplog.at_level(logging.WARNING, logger="moderation.runtime"):
        store = build_store(settings)
    assert store is not None and store.where == str(tmp_path / "shared.db")
    assert "embedding_store and thumbnail_store ignored" in caplog.text
    thumbnails = build_thumbnails(settings, store)
    assert isinstance(thumbnails, DatabaseThumbnails), "thumbnail_store set turns thumbnails on; the database keeps them"
    thumbnails.save("r1", b"\xff\xd8jpeg")
    store.flush()
    assert thumbnails.load("r1") == b"\xff\xd8jpeg"
    store.close()
    assert not (tmp_path / "file.db").exists() and not (tmp_path / "thumbs").exists()


def test_without_database_url_the_file_settings_work_as_before(tmp_path: Path) -> None:
    settings = Settings(embedding_store=tmp_path / "file.db", thumbnail_store=tmp_path / "thumbs")
    store = build_store(settings)
    assert store is not None and store.where == str(tmp_path / "file.db")
    assert isinstance(build_thumbnails(settings, store), ThumbnailStore)
    store.close()
    assert build_store(Settings()) is None and build_thumbnails(Settings()) is None


def test_thumbnails_need_a_home() -> None:
    with pytest.raises(ValidationError, match="keep_thumbnails needs database_url"):
        Settings(keep_thumbnails=True)


def test_a_store_that_cannot_open_fails_the_start_naming_the_setting_not_the_password(postgres_url: str) -> None:
    wrong = postgres_url.replace(":test-password-not-secret@", ":wrong-password@")
    with pytest.raises(ConfigurationError, match="MODERATION_DATABASE_URL") as refused:
        build_store(Settings(database_url=wrong))
    assert "wrong-password" not in str(refused.value) and "***" in str(refused.value)
    with pytest.raises(ConfigurationError, match="unknown store URL scheme 'mysql'"):
        build_store(Settings(database_url="mysql://u:secret@h/db"))
