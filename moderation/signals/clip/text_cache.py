"""Text embeddings of an exported model folder, kept on disk across starts (no torch).

Compiling a policy runs the text tower over every prompt x template: 36 s for the shipped
policy on ViT-B-32 on 2 cores, most of a start. The embeddings depend only on the text and
the model, so they are kept in `<clip_export_dir>/text-embeddings/<model key>/<sha256 of
the text>.npy`, where the model key hashes the folder's text graph and tokenizer files
(their sha256 from manifest.json) and context length: another model, or a re-export with
other weights, never reads them. A restart reads each prompt's row instead of computing it.

An embedding planted there would move every score, so the cache is refused (with one
warning, and the server computes as without it) when a directory on the way is a
symbolic link, belongs to another user, or is writable by group or others, as the image
export cache is (onnx_export.check_private). Entries are written to a temporary name and
renamed, so a reader never sees half a file; an unreadable or malformed entry is computed
again and rewritten.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


class UnsafeTextCache(RuntimeError):
    pass


def model_key(text_graph_sha256: str, merges_sha256: str, context_length: int) -> str:
    return hashlib.sha256(f"{text_graph_sha256} {merges_sha256} {context_length}".encode()).hexdigest()[:32]


def _check_private(path: Path) -> None:
    info = path.lstat()
    if path.is_symlink():
        raise UnsafeTextCache(f"{path} is a symbolic link")
    if info.st_uid not in (os.geteuid(), 0):
        raise UnsafeTextCache(f"{path} belongs to user {info.st_uid}, not to this process's user {os.geteuid()}")
    if info.st_mode & 0o022:
        raise UnsafeTextCache(f"{path} is writable by other users (mode {info.st_mode & 0o777:o}); run chmod go-w {path}")


class TextEmbeddingCache:
    def __init__(self, root: Path, key: str, dim: int):
        self.folder = root / "text-embeddings" / key
        self.dim = dim
        for path in (root, root / "text-embeddings", self.folder):
            path.mkdir(mode=0o755, exist_ok=True, parents=path == root)
            _check_private(path)

    @classmethod
    def open(cls, root: Path | None, key: str, dim: int) -> TextEmbeddingCache | None:
        """The cache, or None (with a warning saying why) when it cannot be used safely."""
        if root is None:
            return None
        try:
            return cls(root, key, dim)
        except (OSError, UnsafeTextCache) as err:
            log.warning("text embedding cache off: %s; policy compiles run the text tower on every start (MODERATION_CLIP_EXPORT_DIR)", err)
            return None

    def _path(self, text: str) -> Path:
        return self.folder / f"{hashlib.sha256(text.encode('utf-8', 'surrogatepass')).hexdigest()}.npy"

    def get(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        found = {}
        for text in set(texts):
            try:
                row = np.load(self._path(text), allow_pickle=False)
            except (OSError, ValueError):
                continue
            if row.dtype == np.float32 and row.shape == (self.dim,):
                found[text] = row
        return found

    def put(self, texts: Sequence[str], rows: np.ndarray) -> None:
        for text, row in zip(texts, rows, strict=True):
            try:
                handle, name = tempfile.mkstemp(prefix=".partial-", suffix=".npy", dir=self.folder)
                with os.fdopen(handle, "wb") as out:
                    np.save(out, np.ascontiguousarray(row, dtype=np.float32), allow_pickle=False)
                os.chmod(name, 0o644)
                os.replace(name, self._path(text))
            except OSError as err:  # a full disk must not fail a compile: the rows are computed
                log.warning("text embedding cache: cannot write (%s); continuing without storing", err)
                Path(name).unlink(missing_ok=True)
                return
