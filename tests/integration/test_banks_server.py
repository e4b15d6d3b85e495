"""Banks of known content through the real server: a match forces its policy rule's action (issue 20).

One server with a SQLite state store and a 0.2 s bank refresh; the tests write banks into
the same store as a curator's replica would (BankStore), wait until the server's
moderation_bank_version reaches the write, and then moderate over gRPC.

The policy's only category goes no further than REVIEW on its own (on_block: REVIEW), and
the rule for bank `known` forces BLOCK: a BLOCK can only come from a bank match.
"""

from __future__ import annotations

import io
import re
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import skimage.data
from PIL import Image, ImageFilter, ImageOps

from moderation.ops.config import Settings
from moderation.runtime import decode_limits
from moderation.core.decode import decode_frames
from moderation.signals.banks.hashing import md5_hex, pdq_hash, pdq_hash_frame, sha256_hex
from moderation.state.banks import BankStore, NewEntry
from moderation.state.store import open_store
from moderation.v1 import moderation_pb2 as pb
from moderation.v1 import moderation_pb2_grpc as pb_grpc
from tests import images
from tests.integration.server import RunningServer, running_server

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
# A random 64 px ViT: on the tiny 32 px one, a mirrored photo is further from its original
# than unrelated photos are from each other (random weights barely see content). Measured on
# this one over 18 skimage photos: crops of 10-20% and mirrors >= 0.9959, unrelated <= 0.9944.
TINY_64 = ROOT / "tests" / "fixtures" / "tiny-clip-64"
NEAR_DUPLICATE_COSINE = 0.995
REFERENCE = ROOT / "tests" / "fixtures" / "pdq-reference" / "images"

POLICY = """\
id: banked
version: "1"
default: true
benign: ["a cat", "a landscape", "a person"]
categories:
  - id: weapons
    clause: {id: W-1, text: "No threatening display of firearms."}
    positive: ["a gun"]
    thresholds: {review: 0.3, block: 0.6}
    on_block: REVIEW
banks:
  - bank: known
    category: weapons
    action: BLOCK
  - bank: near
    category: weapons
    action: BLOCK
  - bank: review-list
    category: weapons
    action: review
  - bank: not-created-yet
    category: weapons
"""


def photo(name: str) -> Image.Image:
    return Image.fromarray(getattr(skimage.data, name)()).convert("RGB")


def png(image: Image.Image) -> bytes:
    return images.encode(image, "PNG")


def jpeg(image: Image.Image, quality: int = 90) -> bytes:
    return images.encode(image, "JPEG", quality=quality)


def server_pdq(data: bytes) -> tuple[str, int]:
    """The PDQ hash the server computes for these bytes: its decode limits (the 64 px model's draft floor) and frame."""
    frame = decode_frames(data, decode_limits(Settings(), 64)).frames[0]
    found = pdq_hash_frame(frame)
    return found.hex(), found.quality


def flipped(hex_hash: str, bits: int) -> str:
    value = int(hex_hash, 16)
    for bit in range(bits):
        value ^= 1 << (bit * 7 % 256)  # spread over the hash; distinct bits
    return f"{value:064x}"


class Banks:
    def __init__(self, server: RunningServer, store: BankStore):
        self.server, self.store = server, store

    def metric(self, name: str, **labels: str) -> float:
        text = urllib.request.urlopen(self.server.metrics_url, timeout=5).read().decode()
        total = 0.0
        for line in text.splitlines():
            match = re.match(rf"^{name}(?:\{{(.*)\}})? (\S+)$", line)
            if match and all(f"{k}=\"{v}\"" in (match.group(1) or "") for k, v in labels.items()):
                total += float(match.group(2))
        return total

    def settled(self, timeout_s: float = 20.0) -> None:
        """Wait until the server's indexes hold every change written so far."""
        version = self.store.current_version()
        deadline = time.monotonic() + timeout_s
        while self.metric("moderation_bank_version") < version:
            assert time.monotonic() < deadline, f"the server did not reach bank version {version}"
            time.sleep(0.1)

    def add(self, bank: str, *entries: NewEntry) -> None:
        self.store.add_entries(bank, list(entries), by="test-curator")
        self.settled()

    def moderate(self, data: bytes, request_id: str = "r") -> pb.ModerateResponse:
        with self.server.channel() as channel:
            return pb_grpc.ModerationServiceStub(channel).Moderate(pb.ModerateRequest(request_id=request_id, image=data), timeout=30)


@pytest.fixture(scope="module")
def banks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Banks]:
    root = tmp_path_factory.mktemp("banks")
    (root / "policies").mkdir()
    (root / "policies" / "banked.yaml").write_text(POLICY)
    state = root / "state.db"
    with open_store(state) as store:  # created and migrated here, so the curator side can open it before the server
        bank_store = BankStore(store)
        bank_store.create_bank("known", by="test-curator", note="photos known to violate")
        bank_store.create_bank("near", by="test-curator", embedding_min_cosine=NEAR_DUPLICATE_COSINE)
        bank_store.create_bank("review-list", by="test-curator")
        env = {
            "MODERATION_CLIP_MODEL": f"local-dir:{TINY_64}",
            "MODERATION_CLIP_WEIGHTS": "random",
            "MODERATION_POLICIES": str(root / "policies"),
            "MODERATION_EMBEDDING_STORE": str(state),
            "MODERATION_BANK_REFRESH_S": "0.2",
        }
        with running_server(root, env=env) as server:
            yield Banks(server, bank_store)


def bank_hits(response: pb.ModerateResponse) -> list[tuple[str, str, str]]:
    return [(m.bank, m.content_id, pb.BankSignalType.Name(m.signal_type)) for m in response.bank_matches]


def test_a_banked_photo_is_blocked_after_reencoding_resizing_and_blurring(banks: Banks) -> None:
    original = photo("astronaut")
    # A curator's PDQ hash, made elsewhere at full resolution (as lists from other platforms are).
    banks.add("known", NewEntry("astronaut-1", "pdq", pdq_hash(original).hex(), quality=pdq_hash(original).quality))
    variants = {
        "re-encoded": jpeg(original, quality=50),
        "resized": jpeg(original.resize((300, 300))),
        "blurred": png(original.filter(ImageFilter.GaussianBlur(2))),
    }
    for name, data in variants.items():
        response = banks.moderate(data, name)
        assert response.action == pb.ACTION_BLOCK, name
        [match] = response.bank_matches
        assert (match.bank, match.content_id, match.signal_type) == ("known", "astronaut-1", pb.BANK_SIGNAL_TYPE_PDQ), name
        assert 0 <= match.distance <= match.threshold == 31, (name, match.distance)
        assert (match.category_id, match.action, match.clause_id, match.frame_index) == ("weapons", pb.ACTION_BLOCK, "W-1", 0)
        weapons = response.categories[0]
        assert weapons.forced_by == "banks" and weapons.action == pb.ACTION_BLOCK
        assert any("Matched bank 'known' entry 'astronaut-1' by PDQ distance" in r for r in response.reasons), response.reasons
    for name in ("coffee", "camera", "chelsea", "rocket"):
        response = banks.moderate(png(photo(name)), name)
        assert not response.bank_matches and response.action != pb.ACTION_BLOCK, name
        assert response.categories[0].forced_by == ""
    assert banks.metric("moderation_bank_matches_total", bank="known", signal_type="pdq") >= 3


def test_exact_hashes_match_the_bytes_and_only_the_bytes(banks: Banks) -> None:
    coffee, camera = images.coffee_png(), images.camera_grayscale_png()
    banks.add("known", NewEntry("coffee-bytes", "sha256", sha256_hex(coffee)), NewEntry("camera-bytes", "md5", md5_hex(camera).upper()))
    assert bank_hits(banks.moderate(coffee)) == [("known", "coffee-bytes", "BANK_SIGNAL_TYPE_SHA256")]
    [match] = banks.moderate(camera).bank_matches
    assert (match.content_id, match.signal_type, match.distance, match.threshold) == ("camera-bytes", pb.BANK_SIGNAL_TYPE_MD5, 0, 0)
    # The same picture in other bytes is not the same file.
    assert not banks.moderate(jpeg(photo("coffee"))).bank_matches


def test_pdq_matches_at_31_bits_and_not_at_32(banks: Banks) -> None:
    chelsea, rocket = png(photo("chelsea")), png(photo("rocket"))
    (chelsea_hash, chelsea_quality), (rocket_hash, rocket_quality) = server_pdq(chelsea), server_pdq(rocket)
    assert min(chelsea_quality, rocket_quality) >= 50
    banks.add(
        "known",
        NewEntry("chelsea-31", "pdq", flipped(chelsea_hash, 31), quality=100),
        NewEntry("rocket-32", "pdq", flipped(rocket_hash, 32), quality=100),
    )
    [match] = banks.moderate(chelsea).bank_matches
    assert (match.content_id, match.distance) == ("chelsea-31", 31)
    assert not banks.moderate(rocket).bank_matches


def test_flat_images_never_match_by_pdq(banks: Banks) -> None:
    """small.jpg hashes at quality 0: banked, it is not indexed; uploaded, its hash is not looked up."""
    small = (REFERENCE / "small.jpg").read_bytes()
    found = pdq_hash(Image.open(io.BytesIO(small)))
    assert found.quality < 50
    banks.add("known", NewEntry("flat", "pdq", found.hex(), quality=found.quality), NewEntry("flat-unrated", "pdq", server_pdq(small)[0]))
    assert server_pdq(small)[1] < 50
    assert not banks.moderate(small).bank_matches


def test_a_frame_inside_an_animation_is_found_and_named(banks: Banks) -> None:
    horse = photo("horse") if hasattr(skimage.data, "horse") else photo("hubble_deep_field")
    banks.add("known", NewEntry("animated", "pdq", pdq_hash(horse).hex(), quality=100))
    rng = np.random.default_rng(3)
    frames = [Image.fromarray(rng.integers(0, 255, (200, 200, 3), dtype=np.uint8)) for _ in range(8)]
    frames[5] = horse.resize((200, 200))
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=100)
    response = banks.moderate(buffer.getvalue())
    [match] = response.bank_matches
    assert (match.content_id, match.frame_index) == ("animated", 5)
    assert response.categories[0].frame_index == 5, "the forcing match names the deciding frame"


def test_disabled_and_rolled_back_banks_match_nothing_until_turned_on(banks: Banks) -> None:
    moon = png(photo("moon"))
    banks.store.create_bank("paused", by="test-curator")
    banks.add("review-list", NewEntry("moon", "sha256", sha256_hex(moon)))
    response = banks.moderate(moon)
    assert bank_hits(response) == [("review-list", "moon", "BANK_SIGNAL_TYPE_SHA256")]
    assert response.bank_matches[0].action == pb.ACTION_REVIEW and response.action in (pb.ACTION_REVIEW, pb.ACTION_BLOCK)
    banks.store.set_enabled("review-list", False, by="test-curator", reason="false positives")
    banks.settled()
    assert not banks.moderate(moon).bank_matches
    banks.store.set_enabled("review-list", True, by="test-curator")
    banks.store.update_settings("review-list", by="test-curator", matching_ratio=0.0)
    banks.settled()
    assert not banks.moderate(moon).bank_matches, "a ratio of 0 matches no upload"
    banks.store.update_settings("review-list", by="test-curator", matching_ratio=1.0)
    banks.settled()
    assert bank_hits(banks.moderate(moon)) == [("review-list", "moon", "BANK_SIGNAL_TYPE_SHA256")]
    banks.store.remove_entries("review-list", by="test-curator", content_ids=["moon"])
    banks.settled()
    assert not banks.moderate(moon).bank_matches


def test_crops_and_mirrors_match_by_embedding_and_unrelated_photos_do_not(banks: Banks) -> None:
    from moderation.runtime import build_core, clip_spec, load_scorer

    # The embedding a curator's replica computes for the banked photo: same model, same seed, same decode.
    settings = Settings(clip_model=f"local-dir:{TINY_64}", clip_weights="random")
    core = build_core(settings, load_scorer(clip_spec(settings)))
    original = photo("chelsea")
    [vector] = core.embed([core.decode(png(original))])[0].numpy()
    banks.add("near", NewEntry("chelsea-embedding", "embedding", vector))
    w, h = original.size
    near = {
        "crop 10%": original.crop((w // 20, h // 20, w - w // 20, h - h // 20)),
        "crop 20%": original.crop((w // 10, h // 10, w - w // 10, h - h // 10)),
        "corner crop 20%": original.crop((0, 0, w * 4 // 5, h * 4 // 5)),
        "mirror": ImageOps.mirror(original),
    }
    for name, image in near.items():
        hits = [m for m in banks.moderate(png(image), name).bank_matches if m.bank == "near"]
        assert [(m.content_id, m.signal_type) for m in hits] == [("chelsea-embedding", pb.BANK_SIGNAL_TYPE_EMBEDDING)], name
        assert hits[0].distance >= hits[0].threshold == pytest.approx(NEAR_DUPLICATE_COSINE)
    for name in ("astronaut", "coffee", "camera", "rocket", "coins", "moon"):
        assert not [m for m in banks.moderate(png(photo(name)), name).bank_matches if m.bank == "near"], name


def test_curators_adding_and_removing_while_requests_flow_fail_no_request(banks: Banks) -> None:
    """Changes land while requests are matched, including a PDQ index rebuild (over MAX_PENDING additions)."""
    coins = png(photo("coins"))
    stop, errors, answered = threading.Event(), [], []

    def moderate_until_stopped() -> None:
        with banks.server.channel() as channel:
            stub = pb_grpc.ModerationServiceStub(channel)
            while not stop.is_set():
                try:
                    response = stub.Moderate(pb.ModerateRequest(request_id="flow", image=coins), timeout=30)
                    answered.append([m.content_id for m in response.bank_matches])
                except grpc.RpcError as error:
                    errors.append(f"{error.code().name}: {error.details()}")

    client = threading.Thread(target=moderate_until_stopped)
    client.start()
    try:
        rng = np.random.default_rng(9)
        codes = rng.integers(0, 256, size=(5000, 32), dtype=np.uint8)
        banks.store.add_entries("known", [NewEntry(f"random-{i}", "pdq", c.tobytes().hex(), quality=100) for i, c in enumerate(codes)], by="test-curator")
        for cycle in range(10):
            banks.store.add_entries("known", [NewEntry(f"coins-{cycle}", "sha256", sha256_hex(coins))], by="test-curator")
            time.sleep(0.15)
            banks.store.remove_entries("known", by="test-curator", content_ids=[f"coins-{cycle}"])
        banks.store.remove_entries("known", by="test-curator", content_ids=[f"random-{i}" for i in range(5000)])
        banks.settled()
    finally:
        stop.set()
        client.join(timeout=60)
    assert not errors, errors[:5]
    assert len(answered) >= 5
    # Every answer saw one snapshot: at most the one coins entry of that moment, never a removed one's leftovers.
    assert all(len(ids) <= 1 and all(i.startswith("coins-") for i in ids) for ids in answered), answered
    assert not banks.moderate(coins).bank_matches
    banks.add("known", NewEntry("coins-final", "sha256", sha256_hex(coins)))
    assert bank_hits(banks.moderate(coins)) == [("known", "coins-final", "BANK_SIGNAL_TYPE_SHA256")]


def test_a_policy_naming_a_missing_bank_is_served_and_says_so_once(banks: Banks) -> None:
    assert banks.server.log_text().count("matches bank 'not-created-yet', but it does not exist") == 1
    assert banks.metric("moderation_bank_entries", bank="known", signal_type="pdq") >= 1


def test_a_policy_with_banks_and_no_store_stops_the_start(tmp_path: Path) -> None:
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "banked.yaml").write_text(POLICY)
    env = {"MODERATION_CLIP_MODEL": f"local-dir:{TINY_64}", "MODERATION_CLIP_WEIGHTS": "random", "MODERATION_POLICIES": str(tmp_path / "policies")}
    with pytest.raises(RuntimeError, match="server exited with 2") as refused:
        with running_server(tmp_path, env=env):
            pass
    assert "match banks of known content, but this server has no banks" in str(refused.value)
