"""Opt-in thumbnails of flagged cases, so a reviewer can see the image behind a request id.

The one place this service keeps anything of an image besides its embedding, and
only when turned on (off by default). A thumbnail belongs to a case: the caller (token
name, mTLS subject or 'anonymous') and its request id, so a second caller reusing a
request id neither replaces nor reads the first's. Two homes, one interface (`Thumbnails`):
rows of the state store (`DatabaseThumbnails`: the `thumbnails` table of the SQLite
or PostgreSQL store named by `database_url`, shared by every replica), or files in
the directory `thumbnail_store` names (`ThumbnailStore`, one machine). What is kept: a
JPEG no larger than `thumbnail_max_px` on its longer side (256 by default) of the
frame that decided the case, for decisions that the active policy or a shadow
policy did not ALLOW, rebuilt from pixels: no comment, EXIF, ICC or XMP of the upload
(a JPEG comment can hold 64 KB of personal data). Never the uploaded bytes, never
anything in a log line. Both homes are capped (`thumbnail_max_bytes`): past it the
oldest are evicted, counted by moderation_thumbnails_evicted_total; `kept_bytes` (the
moderation_thumbnails_bytes gauge) is a running total, recounted at each prune (files)
or measured in the database now and then (rows), never a scan per save.

Access: the directory is created (or tightened) to mode 0700 and every file is
written 0600, so only the server's user (and root) can read them; `moderation case
show REQUEST_ID` run as that user prints the decision and the thumbnail's path (or
copies it out). Paths are SHA-256 digests, a folder per caller and a file per request
id: neither a caller's name nor its request id ever becomes a path. Files older than the retention (7 days by default) are
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
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from PIL import Image

if TYPE_CHECKING:
    from moderation.state.store import StateStore

log = logging.getLogger(__name__)

DIRECTORY_MODE = 0o700
FILE_MODE = 0o600


class ThumbnailError(RuntimeError):
    """The thumbnail directory cannot be used; the message names it and why."""


ANONYMOUS = "anonymous"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", errors="replace")).hexdigest()


def thumbnail_path(directory: str | Path, request_id: str, caller: str = ANONYMOUS) -> Path:
    """Where the thumbnail of `caller`'s `request_id` lives (whether or not there is one)."""
    return Path(directory) / _digest(caller)[:16] / f"{_digest(request_id)}.jpg"


def thumbnail_paths(directory: str | Path, request_id: str) -> list[Path]:
    """The thumbnails kept under `request_id` by any caller (usually one)."""
    return sorted(Path(directory).glob(f"*/{_digest(request_id)}.jpg"))


def make_thumbnail(frame: Image.Image, max_px: int, quality: int = 80) -> bytes:
    """A JPEG of `frame` scaled down to at most max_px x max_px (never up), without any metadata."""
    copy = frame.convert("RGB")  # a new image: the caller's frame is left as it is
    copy.thumbnail((max_px, max_px), Image.Resampling.LANCZOS)
    # Pixels only: PIL copies `info` (a JPEG or GIF comment among it) through convert and
    # writes its comment into the JPEG; a fresh image carries nothing of the upload.
    clean = Image.frombytes("RGB", copy.size, copy.tobytes())
    buffer = io.BytesIO()
    clean.save(buffer, format="JPEG", quality=quality, optimize=True)
    return buffer.getvalue()


class Thumbnails(Protocol):
    """Where the server keeps thumbnails: save (off the request path), load by case, prune past the retention."""

    max_px: int

    @property
    def kept_bytes(self) -> int:
        """Bytes of thumbnails kept, as this process last counted them plus what it saved since (moderation_thumbnails_bytes)."""
        ...

    def save(self, request_id: str, jpeg: bytes, caller: str = ANONYMOUS) -> object: ...

    def load(self, request_id: str, caller: str = ANONYMOUS) -> bytes | None: ...

    def prune(self) -> int: ...


class DatabaseThumbnails:
    """Thumbnails as rows of the state store: buffered and batched with the decisions, pruned by the store's retention."""

    def __init__(self, store: StateStore, max_px: int = 256):
        if store.thumbnail_retention is None:
            raise ValueError("a store keeping thumbnails needs a thumbnail retention")
        self.store = store
        self.max_px = max_px

    @property
    def kept_bytes(self) -> int:
        return self.store.thumbnail_bytes or 0

    def save(self, request_id: str, jpeg: bytes, caller: str = ANONYMOUS) -> None:
        self.store.save_thumbnail(request_id, jpeg, caller=caller)  # buffered: never waits for the database

    def load(self, request_id: str, caller: str = ANONYMOUS) -> bytes | None:
        return self.store.load_thumbnail(request_id, caller)

    def prune(self) -> int:
        return self.store.prune_thumbnails()


class ThumbnailStore:
    """Thumbnails as files in one directory (one machine): the default when no database_url is set."""

    def __init__(
        self,
        directory: str | Path,
        retention: timedelta,
        max_px: int = 256,
        prune_every_s: float = 3600.0,
        max_bytes: int | None = None,
        on_evicted: Callable[[int], None] | None = None,
    ):
        self.directory = Path(directory)
        self.retention = retention
        self.max_px = max_px
        self.prune_every_s = prune_every_s
        self.max_bytes = max_bytes
        self.evicted = 0
        self._on_evicted = on_evicted
        self._bytes = 0  # what the kept files hold: counted at each prune, kept up by save
        self._last_prune = -float("inf")
        self._lock = threading.Lock()
        try:
            self.directory.mkdir(mode=DIRECTORY_MODE, parents=True, exist_ok=True)
            # An existing directory may have been made with looser modes: tighten it.
            os.chmod(self.directory, DIRECTORY_MODE)
        except OSError as error:
            raise ThumbnailError(f"cannot use thumbnail store {self.directory}: {error}") from error
        self.prune()

    def save(self, request_id: str, jpeg: bytes, caller: str = ANONYMOUS) -> Path:
        """Write one thumbnail (replacing an older one of the same case), mode 0600, atomically."""
        path = thumbnail_path(self.directory, request_id, caller)
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
        with self._lock:
            self._bytes += len(jpeg)  # an overwrite counts twice until the next prune recounts: evicts early, never late
            over = self.max_bytes is not None and self._bytes > self.max_bytes
        if over or time.monotonic() - self._last_prune >= self.prune_every_s:
            self.prune()
        return path

    @property
    def kept_bytes(self) -> int:
        return self._bytes

    def load(self, request_id: str, caller: str = ANONYMOUS) -> bytes | None:
        path = thumbnail_path(self.directory, request_id, caller)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None

    def prune(self) -> int:
        """Delete thumbnails older than the retention, then the oldest beyond `max_bytes`; return how many past the retention."""
        with self._lock:
            self._last_prune = time.monotonic()
            cutoff = time.time() - self.retention.total_seconds()
            deleted = 0
            kept: list[tuple[float, int, Path]] = []
            for path in self.directory.glob("*/*.jpg"):
                try:
                    status = path.stat()
                    if status.st_mtime < cutoff:
                        path.unlink()
                        deleted += 1
                    else:
                        kept.append((status.st_mtime, status.st_size, path))
                except FileNotFoundError:
                    continue
            self._bytes = sum(size for _, size, _ in kept)
            evicted = self._evict_oldest(kept) if self.max_bytes is not None and self._bytes > self.max_bytes else 0
            for leftover in self.directory.glob("*/*.tmp"):
                try:
                    if leftover.stat().st_mtime < cutoff:
                        leftover.unlink()
                except FileNotFoundError:
                    continue
        if deleted:
            log.info("deleted %d thumbnails older than %s", deleted, self.retention)
        if evicted:
            log.info("evicted the %d oldest thumbnails to keep %s under thumbnail_max_bytes (%d)", evicted, self.directory, self.max_bytes)
            if self._on_evicted is not None:
                self._on_evicted(evicted)
        return deleted

    def _evict_oldest(self, kept: list[tuple[float, int, Path]]) -> int:
        """Delete the oldest files until they hold at most 90% of max_bytes (the headroom batches the work)."""
        assert self.max_bytes is not None
        target = int(self.max_bytes * 0.9)
        evicted = 0
        for _, size, path in sorted(kept):
            if self._bytes <= target:
                break
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            self._bytes -= size
            evicted += 1
        self.evicted += evicted
        return evicted
