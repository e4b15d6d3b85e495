"""CLIP backends behind the ImageTextEncoder seam: the ONNX Runtime backends against the
torch reference, the export cache, refusals, and what adding a backend takes."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from moderation.signals.clip import ClipModelSpec, ClipScorer, ImageTextEncoder, UnknownBackend, load_encoder
from moderation.signals.clip.backends import BACKENDS, onnx_export, onnx_runtime
from moderation.signals.clip.backends.onnx_runtime import SCORE_TOLERANCE, CpuOnlyBackend
from moderation.core.decode import DecodeLimits, decode_frames
from moderation.policy import load_policy_file
from tests import images
from tests.conftest import POLICIES, TINY_CLIP

TINY = f"local-dir:{TINY_CLIP}"
ONNX_BACKENDS = ("onnxruntime", "onnxruntime-int8")
# Embeddings: the least cosine to the torch backend's, per backend.
MIN_COSINE = {"onnxruntime": 0.99999, "onnxruntime-int8": 0.999}


def tiny_spec(cache: Path, backend: str = "torch", **overrides: object) -> ClipModelSpec:
    return ClipModelSpec(model=TINY, weights="random", backend=backend, cache_dir=cache, export_dir=cache, **overrides)


def load_seeded(cache: Path, backend: str, seed: int = 0) -> ImageTextEncoder:
    """Random weights drawn from `seed`: the same seed gives every backend the same tensors."""
    torch.manual_seed(seed)
    return load_encoder(tiny_spec(cache, backend))


def exports(cache: Path) -> list[Path]:
    return sorted(cache.rglob("*.onnx"))


class _Scaled:
    """An encoder seen at another logit scale (a trained CLIP's is 100; random weights give 14.3)."""

    def __init__(self, encoder: ImageTextEncoder, logit_scale: float):
        self._encoder = encoder
        self.logit_scale = logit_scale

    def __getattr__(self, name: str) -> object:
        return getattr(self._encoder, name)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("clip-export")


@pytest.fixture(scope="module")
def reference(cache: Path) -> ImageTextEncoder:
    return load_seeded(cache, "torch")


@pytest.fixture(scope="module")
def photos() -> list:
    import skimage.data

    data = [images.astronaut_jpeg(), images.coffee_png(), images.camera_grayscale_png(), images.encode(skimage.data.chelsea(), "PNG")]
    return [decode_frames(item, DecodeLimits()) for item in data]


@pytest.mark.parametrize("backend", ONNX_BACKENDS)
def test_embeddings_and_scores_stay_within_tolerance_of_torch(backend: str, cache: Path, reference: ImageTextEncoder, photos: list) -> None:
    encoder = load_seeded(cache, backend)
    assert encoder.backend == backend and encoder.name == reference.name and encoder.logit_scale == reference.logit_scale
    policy, _ = load_policy_file(POLICIES / "default.yaml")
    ours, theirs = ClipScorer(encoder), ClipScorer(reference)
    index, reference_index = ours.index_policy(policy), theirs.index_policy(policy)
    # Text stays on the torch model: identical prompt embeddings (same weights, same code).
    assert torch.equal(index.embeddings, reference_index.embeddings)

    pixels = torch.cat([ours.prepare(photo) for photo in photos])
    embeddings, expected = ours.embed_images(pixels), theirs.embed_images(pixels)
    assert embeddings.dtype == torch.float32 and embeddings.shape == expected.shape
    assert torch.allclose(embeddings.norm(dim=-1), torch.ones(len(photos)), atol=1e-5)
    assert float((embeddings * expected).sum(-1).min()) >= MIN_COSINE[backend]

    deviation = max(abs(a[c] - b[c]) for a, b in zip(ours.score(embeddings, index), theirs.score(expected, index), strict=True) for c in a)
    assert deviation <= SCORE_TOLERANCE[backend]
    # The documented score through the same one path callers use.
    decoded = ours.score_decoded(photos, index)
    assert [set(r.scores) for r in decoded] == [{c.id for c in policy.categories}] * len(photos)


def test_fp32_backend_matches_torch_at_the_trained_logit_scale(cache: Path, reference: ImageTextEncoder, photos: list) -> None:
    """Scores are softmax(logit_scale * cosine): a trained model's scale (100) amplifies embedding error 7x."""
    encoder = load_seeded(cache, "onnxruntime")
    policy, _ = load_policy_file(POLICIES / "default.yaml")
    ours, theirs = ClipScorer(_Scaled(encoder, 100.0)), ClipScorer(_Scaled(reference, 100.0))
    index = theirs.index_policy(policy)
    pixels = torch.cat([ours.prepare(photo) for photo in photos])
    scores, expected = ours.score(ours.embed_images(pixels), index), theirs.score(theirs.embed_images(pixels), index)
    assert max(abs(a[c] - b[c]) for a, b in zip(scores, expected, strict=True) for c in a) <= SCORE_TOLERANCE["onnxruntime"]


@pytest.mark.parametrize("batch", [1, 3])
def test_any_batch_size_runs(batch: int, cache: Path, reference: ImageTextEncoder) -> None:
    encoder = load_seeded(cache, "onnxruntime-int8")
    pixels = torch.rand(batch, 3, encoder.image_size, encoder.image_size)
    assert encoder.encode_images(pixels).shape == reference.encode_images(pixels).shape == (batch, 32)


@pytest.mark.parametrize("backend", ONNX_BACKENDS)
def test_an_image_scores_the_same_whatever_shares_its_batch(backend: str, cache: Path) -> None:
    """A caller's score must not depend on other callers' images in the same forward pass."""
    encoder = load_seeded(cache, backend)
    torch.manual_seed(3)
    batch = torch.rand(4, 3, encoder.image_size, encoder.image_size)
    batch[1:] *= 3.0  # batch-mates with a much wider range than the first image
    alone, together = encoder.encode_images(batch[:1]), encoder.encode_images(batch)[:1]
    assert torch.allclose(alone, together, atol=1e-5), float((alone - together).abs().max())


def test_export_is_cached_and_a_weights_change_replaces_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    original = onnx_export.export_fp32

    def counting(*args: object) -> None:
        calls.append(args)
        original(*args)

    monkeypatch.setattr(onnx_export, "export_fp32", counting)
    load_seeded(tmp_path, "onnxruntime-int8", seed=0)
    first = exports(tmp_path)
    assert len(calls) == 1 and len(first) == 1 and first[0].name.startswith("image-int8-")
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".partial-")], "no temporary file is left behind"

    load_seeded(tmp_path, "onnxruntime-int8", seed=0)
    assert len(calls) == 1, "same weights: the cached export is used"
    assert exports(tmp_path) == first

    load_seeded(tmp_path, "onnxruntime-int8", seed=1)
    assert len(calls) == 2, "other weights: exported again"
    second = exports(tmp_path)
    assert len(second) == 1 and second != first, "the new export replaces the old one"

    load_seeded(tmp_path, "onnxruntime", seed=1)
    assert len(calls) == 3 and len(exports(tmp_path)) == 2, "fp32 and int8 are cached side by side"


def test_a_damaged_cache_file_is_exported_again(tmp_path: Path) -> None:
    load_seeded(tmp_path, "onnxruntime", seed=0)
    (cached,) = exports(tmp_path)
    cached.write_bytes(b"not an onnx model")
    # The model is built again to re-export (random weights are drawn again: a new fingerprint).
    encoder = load_seeded(tmp_path, "onnxruntime", seed=0)
    (exported,) = exports(tmp_path)
    assert exported.stat().st_size > 1000
    embeddings = encoder.encode_images(torch.rand(2, 3, encoder.image_size, encoder.image_size))
    assert torch.allclose(embeddings.norm(dim=-1), torch.ones(2), atol=1e-5)


def constant_graph(path: Path, size: int, dim: int) -> None:
    """A valid 2 KB ONNX graph with the tower's input and output names that ignores its input (issue 18)."""
    import onnx
    from onnx import TensorProto, helper

    value = helper.make_tensor("value", TensorProto.FLOAT, [1, dim], [1.0 / dim**0.5] * dim)
    nodes = [
        helper.make_node("Shape", [onnx_export.INPUT_NAME], ["shape"], start=0, end=1),
        helper.make_node("Concat", ["shape", "width"], ["target"], axis=0),
        helper.make_node("Expand", ["value", "target"], [onnx_export.OUTPUT_NAME]),
    ]
    graph = helper.make_graph(
        nodes,
        "planted",
        [helper.make_tensor_value_info(onnx_export.INPUT_NAME, TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info(onnx_export.OUTPUT_NAME, TensorProto.FLOAT, ["batch", dim])],
        [value, helper.make_tensor("width", TensorProto.INT64, [1], [dim])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_a_graph_planted_under_the_cached_name_is_not_loaded(tmp_path: Path) -> None:
    """Issue 18: a constant graph under the expected file name scored every image 0.331 before digests."""
    honest = load_seeded(tmp_path, "onnxruntime", seed=0)
    pixels = torch.rand(2, 3, honest.image_size, honest.image_size)
    (cached,) = exports(tmp_path)
    dim = honest.encode_images(pixels).shape[1]
    constant_graph(cached, honest.image_size, dim)
    encoder = load_seeded(tmp_path, "onnxruntime", seed=0)
    embeddings = encoder.encode_images(pixels)
    assert not torch.allclose(embeddings[0], embeddings[1]), "the planted constant graph was loaded"
    assert torch.allclose(embeddings, honest.encode_images(pixels), atol=1e-5)


@pytest.mark.parametrize("target", ["cache", "model folder"])
def test_an_export_cache_other_users_can_write_is_refused(tmp_path: Path, target: str) -> None:
    load_seeded(tmp_path, "onnxruntime", seed=0)
    (cached,) = exports(tmp_path)
    writable = tmp_path if target == "cache" else cached.parent
    writable.chmod(0o777)
    with pytest.raises(onnx_export.UnsafeExportCache, match=r"writable by other users \(mode 777\).*chmod go-w"):
        load_seeded(tmp_path, "onnxruntime", seed=0)


def test_fingerprint_covers_architecture_settings_not_only_weights(cache: Path) -> None:
    from moderation.signals.clip.loading import build_open_clip

    torch.manual_seed(0)
    clip = build_open_clip(tiny_spec(cache))
    before = onnx_export.tower_fingerprint(clip)
    clip.model.visual.final_ln_after_pool = not clip.model.visual.final_ln_after_pool
    assert onnx_export.tower_fingerprint(clip) != before


def test_the_torch_image_tower_is_freed(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The runtime holds its own copy; no torch parameter of the image tower may survive the load."""
    from moderation.signals.clip import loading

    alive: list[weakref.ref] = []

    def building(spec: ClipModelSpec) -> loading.OpenClipModel:
        clip = loading.build_open_clip(spec)
        alive.extend(weakref.ref(p) for p in clip.model.visual.parameters())
        return clip

    monkeypatch.setattr(onnx_runtime, "build_open_clip", building)
    encoder = load_seeded(cache, "onnxruntime-int8", seed=7)  # a seed no other test uses: this load exports
    gc.collect()
    assert alive and not [ref for ref in alive if ref() is not None]
    assert encoder.encode_texts(["a cat"]).shape == (1, 32), "the text tower stays"


def test_threads_follow_torch_unless_given(cache: Path) -> None:
    encoder = load_seeded(cache, "onnxruntime")
    assert encoder._session.get_session_options().intra_op_num_threads == torch.get_num_threads()
    torch.manual_seed(0)
    pinned = onnx_runtime.load_fp32(tiny_spec(cache, "onnxruntime"), threads=1)
    assert pinned._session.get_session_options().intra_op_num_threads == 1


@pytest.mark.parametrize("backend", ONNX_BACKENDS)
def test_cuda_and_half_precision_are_refused_in_one_line(backend: str, tmp_path: Path) -> None:
    with pytest.raises(CpuOnlyBackend, match=r"runs on the CPU only, not device 'cuda'.*backend 'torch'") as refused:
        load_encoder(tiny_spec(tmp_path, backend, device="cuda"))
    assert "\n" not in str(refused.value)
    with pytest.raises(CpuOnlyBackend, match="precision 'auto' or 'fp32', not 'fp16'"):
        load_encoder(tiny_spec(tmp_path, backend, precision="fp16"))
    assert not list(tmp_path.iterdir()), "refused before building or exporting anything"


def test_unknown_backend_names_the_choices(tmp_path: Path) -> None:
    with pytest.raises(UnknownBackend, match=r"unknown CLIP backend 'tensorrt'; choose one of: torch, onnxruntime, onnxruntime-int8"):
        load_encoder(tiny_spec(tmp_path, "tensorrt"))


# A third backend is one module with a loader plus one line in the table: this one is the
# whole module. It embeds an image as a fixed projection of its mean colour per quadrant,
# and text as a hash-seeded vector: meaningless, but it honours the seam's contract.


class ToyEncoder:
    backend = "toy"
    random_weights = True
    image_size = 16
    device = torch.device("cpu")
    dtype = torch.float32
    logit_scale = 10.0

    def __init__(self, spec: ClipModelSpec):
        self.name = f"toy/{spec.model}"
        self._weights = torch.randn(12, 8, generator=torch.Generator().manual_seed(0))

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        pixels = torch.frombuffer(bytearray(image.convert("RGB").resize((16, 16)).tobytes()), dtype=torch.uint8)
        return pixels.reshape(16, 16, 3).permute(2, 0, 1).float() / 255.0

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        quadrants = F.adaptive_avg_pool2d(pixels, 2).flatten(1)  # [B, 3 * 4]
        return F.normalize(quadrants @ self._weights, dim=-1)

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        rows = [torch.randn(8, generator=torch.Generator().manual_seed(sum(map(ord, text)))) for text in texts]
        return F.normalize(torch.stack(rows), dim=-1)


def load_toy(spec: ClipModelSpec) -> ToyEncoder:
    return ToyEncoder(spec)


def test_a_third_backend_is_one_module_and_one_table_line(photos: list) -> None:
    table = {**BACKENDS, "toy": "tests.unit.test_clip_backends:load_toy"}
    encoder = load_encoder(ClipModelSpec(model="anything", backend="toy"), backends=table)
    assert isinstance(encoder, ToyEncoder) and isinstance(encoder, ImageTextEncoder)
    scorer = ClipScorer(encoder)
    policy, _ = load_policy_file(POLICIES / "default.yaml")
    results = scorer.score_decoded(photos, scorer.index_policy(policy))
    assert len(results) == len(photos)
    for result in results:
        assert set(result.scores) == {c.id for c in policy.categories}
        assert all(0.0 <= s <= 1.0 for s in result.scores.values())
    assert results[0].scores != results[1].scores


def load_nothing(spec: ClipModelSpec) -> object:
    return object()


def test_a_loader_that_returns_no_encoder_is_refused() -> None:
    with pytest.raises(TypeError, match="not an ImageTextEncoder"):
        load_encoder(ClipModelSpec(backend="broken"), backends={"broken": "tests.unit.test_clip_backends:load_nothing"})
