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
    assert path == thumbnail_path(directory, "../../etc/passwd", "anonymous") and path.parent.parent == directory
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


def test_a_thumbnail_keeps_no_metadata_of_the_upload_however_large(tmp_path: Path) -> None:
    """Issue 18, item 3: a JPEG comment (up to 64 KB, possibly personal data) was copied into the
    thumbnail, and a GIF comment over 65,533 bytes meant no thumbnail was kept."""
    import io

    picture = Image.fromarray(skimage.data.astronaut())
    exif = Image.Exif()
    exif[0x010E] = "owner: Jane Doe, +1 555 0100"  # ImageDescription
    upload = io.BytesIO()
    picture.save(upload, format="JPEG", comment=b"personal " * 7000, exif=exif)  # a 63 KB comment
    gif = io.BytesIO()
    picture.convert("P").save(gif, format="GIF", comment=b"x" * 70_000)
    for encoded in (upload.getvalue(), gif.getvalue()):
        with Image.open(io.BytesIO(encoded)) as frame:
            assert len(frame.info.get("comment", b"")) > 60_000, "the upload carries its comment"
            jpeg = make_thumbnail(frame, 64)
        with Image.open(io.BytesIO(jpeg)) as thumbnail:
            assert thumbnail.format == "JPEG" and max(thumbnail.size) == 64
            assert "comment" not in thumbnail.info and not thumbnail.getexif()
            assert not {"icc_profile", "xmp", "exif"} & thumbnail.info.keys()
        # Nothing of the comment in the bytes: no COM (0xFFFE) or APP1 (0xFFE1) segment at all.
        assert b"personal" not in jpeg and b"\xff\xfe" not in jpeg and b"\xff\xe1" not in jpeg


def test_two_callers_with_one_request_id_keep_two_thumbnails(tmp_path: Path) -> None:
    from moderation.state.thumbnails import thumbnail_paths

    store = ThumbnailStore(tmp_path, timedelta(days=1), max_px=32)
    first = store.save("r1", make_thumbnail(Image.new("RGB", (40, 40), "red"), 32), caller="token:a")
    second = store.save("r1", make_thumbnail(Image.new("RGB", (40, 40), "blue"), 32), caller="token:b")
    assert first != second and thumbnail_paths(tmp_path, "r1") == sorted([first, second])
    assert store.load("r1", "token:a") != store.load("r1", "token:b") and store.load("r1", "anonymous") is None


def test_the_thumbnail_directory_is_capped_oldest_first(tmp_path: Path) -> None:
    evicted: list[int] = []
    noise = Image.fromarray(skimage.data.astronaut())
    one = make_thumbnail(noise, 128)
    cap = 10 * len(one) + len(one) // 2  # room for ten and a half
    store = ThumbnailStore(tmp_path, timedelta(days=1), max_px=128, max_bytes=cap, on_evicted=evicted.append)
    paths = []
    for i in range(30):
        paths.append(store.save(f"r{i}", one))
        os.utime(paths[-1], (time.time() - 1000 + i, time.time() - 1000 + i))  # saved in this order
    kept = sorted(tmp_path.glob("*/*.jpg"))
    assert sum(p.stat().st_size for p in kept) <= cap
    assert set(kept) <= set(paths[-11:]), "the oldest go first"
    assert sum(evicted) == store.evicted == 30 - len(kept) and len(kept) >= 9  # down to 90% of the cap
    assert store.kept_bytes == sum(p.stat().st_size for p in kept), "the running total (moderation_thumbnails_bytes)"
