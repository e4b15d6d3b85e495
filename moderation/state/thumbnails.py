"""Opt-in thumbnails of flagged cases, so a reviewer can see the image behind a request id.

The one place this service keeps anything of an image besides its embedding, and
only when turned on (off by default). Two homes, one interface (`Thumbnails`):
rows of the state store (`DatabaseThumbnails`: the `thumbnails` table of the SQLite
or PostgreSQL store named by `database_url`, shared by every replica), or files in
the directory `thumbnail_store` names (`ThumbnailStore`, one machine). What is kept: a
JPEG no larger than `thumbnail_max_px` on its longer side (256 by default) of the
frame that decided the case, for decisions that the active policy or a shadow
policy did not ALLOW. Never the uploaded bytes, never anything in a log line.

Access: the directory is created (or tightened) to mode 0700 and every file is
written 0600, so only the server's user (and root) can read them; `moderation case
show REQUEST_ID` run as that user prints the decision and the thumbnail's path (or
copies it out). File names are the SHA-256 of the request id: a caller's request id
never becomes a path. Files older than the retention (7 days by default) are
deleted at start and then at most once an hour.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from PIL import Image

if TYPE_CHECKING:
    from moderation.state.store import StateStore

log = logging.getLogger(__name__)

DIRECTORY_MODE = 0o700
FILE_MODE = 0o600


class ThumbnailError(RuntimeError):
    """The thumbnail directory cannot be used; the message names it and why."""


def thumbnail_path(directory: str | Path, request_id: str) -> Path:
    """Where the thumbnail of `request_id` lives (whether or not there is one)."""
    digest = hashlib.sha256(request_id.encode("utf-8")).hexdigest()
    return Path(directory) / digest[:2] / f"{digest}.jpg"


def make_thumbnail(frame: Image.Image, max_px: int, quality: int = 80) -> bytes:
    """A JPEG of `frame` scaled down to at most max_px x max_px (never up), without metadata."""
    copy = frame.convert("RGB")  # a new image: the caller's frame is left as it is
    copy.thumbnail((max_px, max_px), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    copy.save(buffer, format="JPEG", quality=quality, optimize=True)  # no EXIF: PIL writes none unless given
    return buffer.getvalue()


class Thumbnails(Protocol):
    """Where the server keeps thumbnails: save (off the request path), load by request id, prune past the retention."""

    max_px: int

    def save(self, request_id: str, jpeg: bytes) -> object: ...

    def load(self, request_id: str) -> bytes | None: ...

    def prune(self) -> int: ...


class DatabaseThumbnails:
    """Thumbnails as rows of the state store: buffered and batched with the decisions, pruned by the store's retention."""

    def __init__(self, store: StateStore, max_px: int = 256):
        if store.thumbnail_retention is None:
            raise ValueError("a store keeping thumbnails needs a thumbnail retention")
        self.store = store
        self.max_px = max_px

    def save(self, request_id: str, jpeg: bytes) -> None:
        self.store.save_thumbnail(request_id, jpeg)  # buffered: never waits for the database

    def load(self, request_id: str) -> bytes | None:
        return self.store.load_thumbnail(request_id)

    def prune(self) -> int:
        return self.store.prune_thumbnails()


class ThumbnailStore:
    """Thumbnails as files in one directory (one machine): the default when no database_url is set."""

    def __init__(self, directory: str | Path, retention: timedelta, max_px: int = 256, prune_every_s: float = 3600.0):
        self.directory = Path(directory)
        self.retention = retention
        self.max_px = max_px
        self.prune_every_s = prune_every_s
        self._last_prune = -float("inf")
        self._lock = threading.Lock()
        try:
            self.directory.mkdir(mode=DIRECTORY_MODE, parents=True, exist_ok=True)
            # An existing directory may have been made with looser modes: tighten it.
            os.chmod(self.directory, DIRECTORY_MODE)
        except OSError as error:
            raise ThumbnailError(f"cannot use thumbnail store {self.directory}: {error}") from error
        self.prune()

    def save(self, request_id: str, jpeg: bytes) -> Path:
        """Write one thumbnail (replacing an older one of the same request id), mode 0600, atomically."""
        path = thumbnail_path(self.directory, request_id)
        path.parent.mkdir(mode=DIRECTORY_MODE, exist_ok=True)
        temporary = path.with_suffix(f".{threading.get_ident()}.tmp")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
        try:
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(jpeg)
            os.chmod(temporary, FILE_MODE)  # O_CREAT's mode does not apply to a leftover file
            os.replace(temporary, path)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        if time.monotonic() - self._last_prune >= self.prune_every_s:
            self.prune()
        return path

    def load(self, request_id: str) -> bytes | None:
        path = thumbnail_path(self.directory, request_id)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None

    def prune(self) -> int:
        """Delete thumbnails older than the retention; return how many."""
        with self._lock:
            self._last_prune = time.monotonic()
            cutoff = time.time() - self.retention.total_seconds()
            deleted = 0
            for path in self.directory.glob("*/*.jpg"):
                try:
                    if path.stat().st_mtime < cutoff:
                        path.unlink()
                        deleted += 1
                except FileNotFoundError:
                    continue
            for leftover in self.directory.glob("*/*.tmp"):
                try:
                    if leftover.stat().st_mtime < cutoff:
                        leftover.unlink()
                except FileNotFoundError:
                    continue
        if deleted:
            log.info("deleted %d thumbnails older than %s", deleted, self.retention)
        return deleted
