"""The opt-in thumbnail store: small, private, keyed by request id, pruned."""

from __future__ import annotations

import os
import stat
import time
from datetime import timedelta
from pathlib import Path

import skimage.data
from PIL import Image

from moderation.state.thumbnails import ThumbnailStore, make_thumbnail, thumbnail_path


def test_thumbnails_are_small_private_jpegs_named_by_a_hash_of_the_request_id(tmp_path: Path) -> None:
    directory = tmp_path / "thumbs"
    directory.mkdir(mode=0o755)
    store = ThumbnailStore(directory, timedelta(days=7), max_px=64)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700, "an existing directory is tightened"
    frame = Image.fromarray(skimage.data.astronaut())  # 512 x 512
    path = store.save("../../etc/passwd", make_thumbnail(frame, store.max_px))
    assert path == thumbnail_path(directory, "../../etc/passwd") and path.parent.parent == directory
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    with Image.open(path) as thumbnail:
        assert thumbnail.format == "JPEG" and max(thumbnail.size) == 64
        assert not thumbnail.getexif()
    small = Image.new("RGB", (20, 10), "red")
    with Image.open(store.save("tiny", make_thumbnail(small, 256))) as thumbnail:
        assert thumbnail.size == (20, 10), "never scaled up"


def test_old_thumbnails_are_pruned(tmp_path: Path) -> None:
    store = ThumbnailStore(tmp_path, timedelta(days=1), max_px=32)
    old = store.save("old", make_thumbnail(Image.new("RGB", (40, 40)), 32))
    fresh = store.save("fresh", make_thumbnail(Image.new("RGB", (40, 40)), 32))
    two_days_ago = time.time() - 2 * 86400
    os.utime(old, (two_days_ago, two_days_ago))
    assert store.prune() == 1
    assert not old.exists() and fresh.exists()
    # A new store prunes at start too.
    os.utime(fresh, (two_days_ago, two_days_ago))
    ThumbnailStore(tmp_path, timedelta(days=1))
    assert not fresh.exists()
