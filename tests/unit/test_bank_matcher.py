"""BankMatcher and LiveBanks: what matches an upload, per bank's config, while banks change."""

from __future__ import annotations

import io
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from moderation.signals.banks.hashing import md5_hex, pdq_hash, sha256_hex
from moderation.signals.banks.matcher import (
    BankConfig,
    BankEntry,
    BankMatch,
    BankMatcher,
    LiveBanks,
    embedding_value,
    in_rollout,
)

REFERENCE = Path(__file__).resolve().parents[1] / "fixtures" / "pdq-reference"


def photo(name: str) -> Image.Image:
    import skimage.data

    return Image.fromarray(getattr(skimage.data, name)()).convert("RGB")


def jpeg(image: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def pdq_entry(bank: str, content_id: str, image: Image.Image) -> BankEntry:
    found = pdq_hash(image)
    return BankEntry(bank, content_id, "pdq", found.hex(), quality=found.quality, added_by="test")


def bank(name: str = "csam", **settings: object) -> BankConfig:
    return BankConfig(name, embedding_min_cosine=settings.pop("embedding_min_cosine", 0.9), **settings)  # type: ignore[arg-type]


def test_a_reencoded_resized_blurred_photo_still_matches_by_pdq_and_unrelated_photos_do_not() -> None:
    original = photo("astronaut")
    matcher = BankMatcher([bank()], [pdq_entry("csam", "astro", original)])
    half = original.resize((original.width // 2, original.height // 2), Image.BILINEAR)
    altered = Image.open(io.BytesIO(jpeg(half.filter(ImageFilter.GaussianBlur(1)), quality=70)))
    altered_bytes = jpeg(altered)
    [found] = matcher.match(altered_bytes, [altered])
    assert (found.bank, found.content_id, found.signal_type, found.threshold, found.frame_index) == ("csam", "astro", "pdq", 31, 0)
    assert found.distance <= 31
    for other in ("coffee", "chelsea", "rocket", "camera"):
        image = photo(other)
        assert matcher.match(jpeg(image), [image]) == [], other


def test_exact_hashes_match_the_bytes_only() -> None:
    data = (REFERENCE / "images" / "wee.jpg").read_bytes()
    image = Image.open(io.BytesIO(data))
    entries = [BankEntry("b", "by-md5", "md5", md5_hex(data).upper()), BankEntry("b", "by-sha", "sha256", sha256_hex(data))]
    matcher = BankMatcher([bank("b")], entries)
    found = matcher.match(data, [image])
    assert sorted((m.content_id, m.signal_type, m.distance, m.frame_index) for m in found) == [
        ("by-md5", "md5", 0, None),
        ("by-sha", "sha256", 0, None),
    ]
    assert matcher.match(data + b"\0", [image]) == []


def test_low_quality_hashes_are_ignored_when_banked_and_when_matched() -> None:
    flat = Image.open(REFERENCE / "images" / "small.jpg")
    assert pdq_hash(flat).quality == 0
    # Banked without its quality (imported text): kept, but the flat upload's own hash is ignored.
    unknown_quality = BankEntry("b", "flat", "pdq", pdq_hash(flat).hex())
    assert len(BankMatcher([bank("b")], [unknown_quality])) == 1
    assert BankMatcher([bank("b")], [unknown_quality]).match(b"x", [flat]) == []
    # Banked with quality 0: never indexed.
    assert len(BankMatcher([bank("b")], [pdq_entry("b", "flat", flat)])) == 0
    # A bank may lower the bar (documented risk): then the flat image matches itself.
    assert len(BankMatcher([bank("b", pdq_min_quality=0)], [pdq_entry("b", "flat", flat)]).match(b"x", [flat])) == 1


def test_every_frame_is_hashed_and_the_match_names_the_closest() -> None:
    target = photo("astronaut")
    matcher = BankMatcher([bank()], [pdq_entry("csam", "astro", target)])
    frames = [photo("coffee"), photo("chelsea"), target, target.filter(ImageFilter.GaussianBlur(2))]
    [found] = matcher.match(b"animation", frames)
    assert (found.frame_index, found.distance) == (2, 0)


def test_a_disabled_bank_matches_nothing() -> None:
    image = photo("astronaut")
    matcher = BankMatcher([bank("off", enabled=False), bank("on")], [pdq_entry("off", "a", image), pdq_entry("on", "a", image)])
    assert [m.bank for m in matcher.match(jpeg(image), [image])] == ["on"]


def test_matching_ratio_is_stable_per_content_and_covers_about_its_share() -> None:
    rng = np.random.default_rng(3)
    image = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    contents = [f"content {i}".encode() for i in range(200)]
    matcher = BankMatcher([bank("half", matching_ratio=0.5)], [pdq_entry("half", "noise", image)])
    first = [bool(matcher.match(data, [image])) for data in contents]
    assert first == [bool(matcher.match(data, [image])) for data in contents]
    assert 80 <= sum(first) <= 120
    assert first == [in_rollout(sha256_hex(data), "half", 0.5) for data in contents]
    # Raising the ratio keeps every content that was already in.
    assert all(in_rollout(sha256_hex(d), "half", 0.8) for d, was in zip(contents, first, strict=True) if was)
    assert not any(in_rollout(sha256_hex(d), "half", 0.0) for d in contents)


def test_a_lookup_of_a_hash_alone_can_ignore_the_rollout() -> None:
    """BankService.Lookup by hash: no upload, so no SHA-256 to place it in or out of a bank's share."""
    from moderation.signals.banks.matcher import ContentHashes

    matcher = BankMatcher([bank("paused", matching_ratio=0.0)], [BankEntry("paused", "c1", "md5", "ab" * 16)])
    hashes = ContentHashes("", "ab" * 16, ())
    assert matcher.match_hashes(hashes) == []
    [found] = matcher.match_hashes(hashes, rollout=False)
    assert (found.content_id, found.signal_type) == ("c1", "md5")


def test_embeddings_match_by_cosine_per_frame() -> None:
    rng = np.random.default_rng(4)
    known = rng.standard_normal((3, 32)).astype(np.float32)
    known /= np.linalg.norm(known, axis=1, keepdims=True)
    entries = [BankEntry("e", f"c{i}", "embedding", embedding_value(v)) for i, v in enumerate(known)]
    matcher = BankMatcher([bank("e", embedding_min_cosine=0.8)], entries)
    noise = rng.standard_normal(32).astype(np.float32)
    query = np.stack([noise, known[1] + 0.1 * noise / np.linalg.norm(noise)])
    [found] = matcher.match(b"x", [], query)
    assert (found.content_id, found.signal_type, found.frame_index, found.threshold) == ("c1", "embedding", 1, 0.8)
    assert found.distance > 0.99
    assert matcher.match(b"x", [], None) == []



def test_embeddings_of_another_encoder_never_match_and_never_fail(caplog: pytest.LogCaptureFixture) -> None:
    """A bank filled with another model's embeddings: its hashes still match, its embeddings are skipped with a warning."""
    vector = np.ones(32, np.float32) / np.sqrt(32)
    entries = [BankEntry("e", "v", "embedding", embedding_value(vector)), BankEntry("e", "h", "sha256", sha256_hex(b"x"))]
    matcher = BankMatcher([bank("e", embedding_min_cosine=0.5)], entries)
    with caplog.at_level("WARNING"):
        found = matcher.match(b"x", [], np.ones((1, 16), np.float32) / 4)
    assert [(m.content_id, m.signal_type) for m in found] == [("h", "sha256")]
    assert "holds 32-dimensional embeddings but the encoder gives 16" in caplog.text


def test_configs_and_entries_are_checked() -> None:
    with pytest.raises(ValueError, match="matching_ratio is 0 to 1"):
        bank(matching_ratio=1.5)
    with pytest.raises(ValueError, match="not configured"):
        BankMatcher([bank("a")], [BankEntry("b", "x", "md5", "0" * 32)])
    with pytest.raises(ValueError, match="an MD5 hash is 32 hexadecimal characters"):
        BankEntry("a", "x", "md5", "0" * 31)
    with pytest.raises(ValueError, match="signal type is one of pdq, md5, sha256, embedding"):
        BankEntry("a", "x", "phash", "0")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="two banks are named 'a'"):
        BankMatcher([bank("a"), bank("a")])


def test_remove_then_match() -> None:
    image = photo("astronaut")
    entry = pdq_entry("csam", "astro", image)
    live = LiveBanks([bank()], [entry, pdq_entry("csam", "coffee", photo("coffee"))])
    before = live.matcher
    assert [m.content_id for m in before.match(b"x", [image])] == ["astro"]
    live.apply(removed=[entry.key])
    assert live.matcher.match(b"x", [image]) == []
    assert [m.content_id for m in live.matcher.match(b"x", [photo("coffee")])] == ["coffee"]
    # A reader still holding the old snapshot sees it whole.
    assert [m.content_id for m in before.match(b"x", [image])] == ["astro"]
    live.apply(removed=[entry])  # replaying a removal is harmless
    live.apply(added=[entry])
    assert [m.content_id for m in live.matcher.match(b"x", [image])] == ["astro"]


def test_re_adding_a_key_replaces_the_entry() -> None:
    image = photo("astronaut")
    live = LiveBanks([bank()], [pdq_entry("csam", "astro", image)])
    live.apply(added=[pdq_entry("csam", "astro", image)])
    assert len(live.matcher) == 1
    assert len(live.matcher.match(b"x", [image])) == 1


def test_concurrent_changes_while_matching_never_raise_nor_return_a_removed_entry() -> None:
    rng = np.random.default_rng(5)
    images = [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(40)]
    hashes = [pdq_hash(image) for image in images]
    entries = [BankEntry("b", f"c{i}", "pdq", h.hex(), quality=h.quality) for i, h in enumerate(hashes)]
    live = LiveBanks([bank("b")], entries[:20])
    removed_for_good: list[str] = []  # appended by the writer; a list copies atomically
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader() -> None:
        own = np.random.default_rng()  # a Generator is not for sharing between threads
        try:
            while not stop.is_set():
                # What was removed before this snapshot was taken must not be in it.
                gone = set(removed_for_good)
                snapshot = live.matcher
                for i in own.permutation(40)[:8]:
                    for found in snapshot.match(b"x", [images[i]]):
                        assert found.content_id not in gone, found
        except BaseException as err:  # noqa: BLE001
            errors.append(err)

    readers = [threading.Thread(target=reader) for _ in range(3)]
    for thread in readers:
        thread.start()
    for step in range(60):
        i = step % 20
        live.apply(added=[entries[20 + i]], removed=[entries[i]] if step < 20 else [])
        if step < 20:
            removed_for_good.append(f"c{i}")
    stop.set()
    for thread in readers:
        thread.join()
    assert errors == []
    final = live.matcher
    for i in range(40):
        assert [m.content_id for m in final.match(b"x", [images[i]])] == ([] if i < 20 else [f"c{i}"])


def test_bank_match_is_a_plain_value() -> None:
    match = BankMatch("b", "c", "pdq", 3, 31, 0)
    assert match == BankMatch("b", "c", "pdq", 3, 31, 0)
