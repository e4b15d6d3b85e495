"""`moderation export`: write a self-contained model folder (moderation/signals/clip/model_folder.py).

Run once per model and weights (an image build stage, an init container, or by hand),
never inside a serving pod's start. Needs torch and open_clip; what it writes serves
without them (backend 'onnx-folder').

Steps: build the open_clip model (seeded when the weights are 'random', so the folder
holds the model `--weights random` serves); export the image tower (fp32, constants
folded) and the text tower as ONNX; copy the tokenizer's merges file; write the
preprocessing parameters; then measure on a probe set (the prompts x templates of every
policy in the policies directory, and generated images):
  - tokens of the folder's tokenizer against open_clip's, which must be identical;
  - pixels of the numpy/PIL preprocessing against open_clip's transform;
  - category scores of the fp32 graphs against eager open_clip;
  - the int8 guard: category scores of each int8 kind against fp32, at the model's own
    logit scale (the scores serving would return: 100 for trained CLIP models, 14.3 for
    random weights, whose scores mean nothing anyway). Two kinds are tried: static int8
    (onnx_export.quantize_int8_static: activation scales fixed from calibration images,
    generated ones of another seed than the probe set plus the policies' golden-case
    images; it runs batched) and dynamic int8 (onnx_export.quantize_int8: one image per
    run). The folder keeps the first the guard accepts, static before dynamic; where it
    accepts neither, no int8 graph is kept, the manifest says why, and serving runs fp32.
Everything is written to a temporary folder next to OUT_DIR and renamed into place at
the end, so a reader never sees half a folder.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from moderation.signals.clip import arrays
from moderation.signals.clip.backends.onnx_export import ExportFailed, export_fp32, fold_constants, quantize_int8, quantize_int8_static
from moderation.signals.clip.backends.onnx_folder import OnnxFolderEncoder
from moderation.signals.clip.backends.torch_eager import TorchEncoder
from moderation.signals.clip.loading import ClipModelSpec, OpenClipModel, build_open_clip
from moderation.signals.clip.model_folder import (
    DEFAULT_INT8_TOLERANCE,
    FOLDER_FORMAT,
    IMAGE_FILES,
    MANIFEST,
    MERGES_FILE,
    OUTPUT,
    PREPROCESS,
    TEXT_FILE,
    TEXT_INPUT,
    file_sha256,
    read_folder,
)
from moderation.signals.clip.preprocess import RESIZE_MODES, PreprocessParams
from moderation.signals.clip.scorer import ClipScorer

log = logging.getLogger(__name__)

PROBE_IMAGES = 24
# Static int8's calibration: generated images (a seed other than the probe set's) and up to
# CALIBRATION_SAMPLES of the policies' golden-case images.
CALIBRATION_IMAGES, CALIBRATION_SEED, CALIBRATION_SAMPLES = 32, 1, 64
# The int8 kinds the guard tries, in order of preference: static batches, dynamic runs one image per run.
INT8_KINDS = ("int8-static", "int8")
# Beyond this the export is broken (not a precision question): refuse to write the folder.
FP32_MAX_SCORE_DIFF = 1e-3
# Texts beyond the policies' whose tokens are checked against open_clip's at every export.
TOKENIZER_PROBE = (
    "Ünïcödé façade — naïve café", "日本語のテキスト", "emoji 🙂🚫🔞", "ALL CAPS & <b>html</b> &amp; entities",
    "tabs\tand\nnewlines", "don't won't it's we'll", "x" * 400,
)
VERSIONED_PACKAGES = ("moderation", "torch", "open_clip_torch", "onnx", "onnxruntime", "onnxscript", "numpy", "pillow", "ftfy", "regex")


@dataclass(frozen=True)
class ExportReport:
    path: Path
    manifest: dict


class _TextTower(torch.nn.Module):
    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.model.encode_text(tokens), dim=-1)


def build_seeded(spec: ClipModelSpec) -> OpenClipModel:
    """The model `serve --weights random` would build (seed 0), or the real weights."""
    if not spec.random:
        return build_open_clip(spec)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return build_open_clip(spec)


def preprocess_params(clip: OpenClipModel) -> PreprocessParams:
    cfg = getattr(clip.model.visual, "preprocess_cfg", None) or {}
    size = cfg.get("size", clip.image_size)
    size = tuple(size) if isinstance(size, list | tuple) else (size, size)
    if size[0] != size[1]:
        raise ExportFailed(f"the model's input size {size} is not square; only square inputs serve without torch")
    mode = cfg.get("resize_mode", "shortest")
    if mode not in RESIZE_MODES:
        raise ExportFailed(f"the model's resize mode {mode!r} is not reproduced without torch (supported: {', '.join(RESIZE_MODES)})")
    if cfg.get("mode", "RGB") != "RGB":
        raise ExportFailed(f"the model's image mode {cfg.get('mode')!r} is not RGB")
    return PreprocessParams(
        size=int(size[0]), mean=tuple(cfg["mean"]), std=tuple(cfg["std"]),  # type: ignore[arg-type]
        interpolation=cfg.get("interpolation", "bicubic"), resize_mode=mode,
    )  # fmt: skip


def check_tokenizer(clip: OpenClipModel) -> Path:
    """The merges file of open_clip's SimpleTokenizer with 'lower' cleaning: the only tokenizer the folder reproduces."""
    from open_clip import tokenizer as oc_tokenizer

    tok = clip.tokenizer
    if type(tok) is not oc_tokenizer.SimpleTokenizer or tok.reduction_fn is not None or tok.clean_fn is not oc_tokenizer._clean_lower:
        raise ExportFailed(
            f"the model's tokenizer ({type(tok).__name__}) is not open_clip's CLIP BPE tokenizer with 'lower' cleaning; "
            "only that one serves without torch for now (SigLIP and HF tokenizers: use a torch backend)"
        )
    return Path(oc_tokenizer.default_bpe())


def export_text(clip: OpenClipModel, path: Path) -> None:
    tower = _TextTower(clip.model).eval()
    example = clip.tokenizer(["a photo", "of two"])
    raw = path.with_suffix(".raw.onnx")
    try:
        with torch.no_grad():
            program = torch.onnx.export(
                tower, (example,), dynamo=True, input_names=[TEXT_INPUT], output_names=[OUTPUT],
                dynamic_shapes=({0: torch.export.Dim("batch")},), optimize=False, verbose=False,
            )  # fmt: skip
            program.save(str(raw), external_data=False)
        fold_constants(raw, path)
    except ExportFailed:
        raise
    except Exception as err:  # the exporter raises many types; one line says what failed
        raise ExportFailed(f"ONNX export of the text tower failed: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}") from err
    finally:
        raw.unlink(missing_ok=True)


def weights_sha256(clip: OpenClipModel) -> str:
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in clip.model.state_dict().items():
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name} {flat.dtype} {tuple(tensor.shape)}\n".encode())
        digest.update(flat.view(torch.uint8).numpy())
    return digest.hexdigest()


def probe_images(count: int = PROBE_IMAGES, seed: int = 0) -> list[Image.Image]:
    """Generated images of several sizes and kinds: noise, gradients, blocks, stripes (seeded)."""
    rng = np.random.default_rng(seed)
    images = []
    for i in range(count):
        width, height = int(rng.integers(24, 320)), int(rng.integers(24, 320))
        kind = i % 4
        if kind == 0:
            pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        elif kind == 1:
            ramp = np.linspace(0, 255, width, dtype=np.float32)[None, :, None] * rng.random(3, dtype=np.float32)
            pixels = np.broadcast_to(ramp, (height, width, 3)).astype(np.uint8)
        elif kind == 2:
            pixels = np.kron(rng.integers(0, 256, (4, 4, 3)), np.ones((height // 4 + 1, width // 4 + 1, 1)))[:height, :width].astype(np.uint8)
        else:
            stripes = ((np.arange(width) // max(1, int(rng.integers(2, 12)))) % 2 * 255).astype(np.uint8)
            pixels = np.broadcast_to(stripes[None, :, None], (height, width, 3)).copy()
            pixels[..., int(rng.integers(0, 3))] = rng.integers(0, 256)
        images.append(Image.fromarray(np.ascontiguousarray(pixels), "RGB"))
    return images


def policy_sample_images(policies_dir: Path | None, limit: int = CALIBRATION_SAMPLES) -> list[Image.Image]:
    """The images the policies' golden cases name (policies/tests/*.tests.yaml), first frames in RGB; unreadable ones skipped."""
    from moderation.policy.golden import cases_path_for, load_cases_file

    if policies_dir is None or not policies_dir.is_dir():
        return []
    images: list[Image.Image] = []
    for policy_path in sorted(policies_dir.glob("*.yaml")):
        cases_path = cases_path_for(policy_path)
        if not cases_path.is_file():
            continue
        try:
            cases = load_cases_file(cases_path)
        except Exception as err:  # noqa: BLE001 - `policy test` reports broken cases; calibration goes on without them
            log.warning("calibration: skipping %s (%s)", cases_path, err)
            continue
        for case in cases.cases.cases:
            if len(images) >= limit:
                return images
            try:
                with Image.open(cases.image_path(case)) as image:
                    image.seek(0)
                    images.append(image.convert("RGB"))
            except Exception as err:  # noqa: BLE001 - videos and unreadable files are not calibration images
                log.warning("calibration: skipping %s (%s)", case.image, err)
    return images


def calibration_images(policies_dir: Path | None) -> list[Image.Image]:
    return probe_images(CALIBRATION_IMAGES, seed=CALIBRATION_SEED) + policy_sample_images(policies_dir)


def probe_policies(policies_dir: Path | None) -> list:
    from moderation.policy import load_policy_file

    if policies_dir is None or not policies_dir.is_dir():
        return []
    return [load_policy_file(path)[0] for path in sorted(policies_dir.glob("*.yaml"))]


class _AtScale:
    """An encoder seen at another logit scale (the guard's)."""

    def __init__(self, encoder: object, logit_scale: float):
        self._encoder = encoder
        self.logit_scale = logit_scale

    def __getattr__(self, name: str) -> object:
        return getattr(self._encoder, name)


def _scores(encoder: object, policies: Sequence, pixels: object, logit_scale: float | None = None) -> np.ndarray:
    """Every category score of every probe image under every policy, as one flat float64 vector."""
    scorer = ClipScorer(_AtScale(encoder, logit_scale) if logit_scale is not None else encoder)  # type: ignore[arg-type]
    embeddings = scorer.embed_images(pixels)
    columns = []
    for policy in policies:
        index = scorer.index_policy(policy)
        columns.extend(np.asarray(values, dtype=np.float64) for values in scorer.score_columns(embeddings, index).values())
    return np.concatenate(columns) if columns else np.zeros(0)


def _embeddings(encoder: object, pixels: object) -> np.ndarray:
    return arrays.to_numpy(encoder.encode_images(pixels)).astype(np.float64)  # type: ignore[attr-defined]


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def export_model_folder(
    spec: ClipModelSpec,
    out_dir: Path,
    policies_dir: Path | None = Path("policies"),
    int8_tolerance: float = DEFAULT_INT8_TOLERANCE,
    int8: bool = True,
    force: bool = False,
    clip: OpenClipModel | None = None,
    static_int8: bool = True,
) -> ExportReport:
    """Write the model folder for `spec` at `out_dir`. `clip` (tests) exports an already built model."""
    if out_dir.exists() and any(out_dir.iterdir()) and not force:
        raise ExportFailed(f"{out_dir} exists and is not empty; choose a new folder or pass --force to replace it")
    started = time.monotonic()
    clip = clip or build_seeded(spec)
    clip.model.float().eval()
    params = preprocess_params(clip)
    merges = check_tokenizer(clip)
    policies = probe_policies(policies_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        export_fp32(clip, work / IMAGE_FILES["fp32"])
        export_text(clip, work / TEXT_FILE)
        (work / MERGES_FILE).parent.mkdir()
        shutil.copyfile(merges, work / MERGES_FILE)
        (work / PREPROCESS).write_text(json.dumps(params.to_dict(), indent=2) + "\n", encoding="utf-8")
        logit_scale = float(clip.model.logit_scale.detach().float().exp())
        manifest: dict = {
            "format": FOLDER_FORMAT,
            "model": spec.model,
            "weights": spec.weights,
            "model_id": spec.model_id,
            "random_weights": spec.random,
            "weights_sha256": weights_sha256(clip),
            "image_size": params.size,
            "embed_dim": None,
            "context_length": int(clip.tokenizer.context_length),
            "logit_scale": logit_scale,
            "versions": versions(),
            "files": {},
        }
        _write_manifest(work, manifest, ["fp32"])
        kinds = [kind for kind in INT8_KINDS if static_int8 or kind != "int8-static"] if int8 else []
        calibration = calibration_images(policies_dir) if "int8-static" in kinds else []
        accuracy, guard = _measure(clip, work, policies, int8_tolerance if int8 else None, kinds, calibration)
        manifest["embed_dim"] = accuracy.pop("embed_dim")
        manifest["accuracy"] = accuracy
        manifest["int8"] = guard
        variants = ["fp32", guard["variant"]] if guard["accepted"] else ["fp32"]
        for kind in INT8_KINDS:
            if kind not in variants:
                (work / IMAGE_FILES[kind]).unlink(missing_ok=True)
        manifest["image_variant"] = variants[-1]
        manifest["export_seconds"] = round(time.monotonic() - started, 1)
        manifest["exported_at"] = datetime.now(UTC).isoformat(timespec="seconds")
        _write_manifest(work, manifest, variants)
        work.chmod(0o755)
        if out_dir.exists():  # --force: move the old folder aside first, so OUT_DIR is never half of either
            old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
            os.replace(out_dir, old)
            os.replace(work, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(work, out_dir)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    log.info("exported %s to %s in %.1f s: image tower %s (%s)", spec.model_id, out_dir, manifest["export_seconds"], manifest["image_variant"], guard["reason"])
    return ExportReport(out_dir, manifest)


def _write_manifest(work: Path, manifest: dict, variants: Sequence[str]) -> None:
    names = [IMAGE_FILES[v] for v in variants] + [TEXT_FILE, MERGES_FILE, PREPROCESS]
    manifest["files"] = {name: file_sha256(work / name) for name in names}
    manifest.setdefault("image_variant", variants[-1])
    (work / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def _measure(
    clip: OpenClipModel,
    work: Path,
    policies: Sequence,
    int8_tolerance: float | None,
    kinds: Sequence[str] = INT8_KINDS,
    calibration: Sequence[Image.Image] = (),
) -> tuple[dict, dict]:
    """Accuracy of the folder against eager open_clip, and the int8 guard's verdict."""
    folder = read_folder(work)
    fp32 = OnnxFolderEncoder(folder, "fp32")
    reference = TorchEncoder(ClipModelSpec(model="export-reference", weights="random"), clip)
    texts = [template.format(p) for policy in policies for p in _prompts(policy) for template in policy.templates]
    probe_texts = list(dict.fromkeys([*texts, *TOKENIZER_PROBE]))
    ours, theirs = fp32.tokenize(probe_texts), clip.tokenizer(probe_texts).numpy()
    if not np.array_equal(ours, theirs):
        bad = next(t for t, a, b in zip(probe_texts, ours, theirs, strict=True) if not np.array_equal(a, b))
        raise ExportFailed(f"the folder's tokenizer disagrees with open_clip's on {bad!r}; the folder would score other prompts")
    images = probe_images()
    pixel_diff = max(float(np.abs(fp32.preprocess(im) - reference.preprocess(im).numpy()).max()) for im in images)
    pixels = np.stack([fp32.preprocess(im) for im in images])
    fp32_scores = _scores(fp32, policies, pixels)
    torch_scores = _scores(reference, policies, torch.from_numpy(pixels))
    fp32_diff = float(np.abs(fp32_scores - torch_scores).max()) if len(policies) else 0.0
    fp32_cos = float((_embeddings(fp32, pixels) * _embeddings(reference, torch.from_numpy(pixels))).sum(-1).min())
    text_diff = float(np.abs(fp32.encode_texts(probe_texts[:64]) - reference.encode_texts(probe_texts[:64]).numpy()).max())
    if fp32_diff > FP32_MAX_SCORE_DIFF or pixel_diff > 1e-5:
        raise ExportFailed(f"the exported fp32 folder does not reproduce open_clip (scores differ by {fp32_diff:.2g}, pixels by {pixel_diff:.2g})")
    accuracy = {
        "probe": {"images": len(images), "policies": [f"{p.id}@{p.version}" for p in policies], "texts": len(probe_texts)},
        "embed_dim": int(_embeddings(fp32, pixels[:1]).shape[1]),
        "tokenizer_identical_to_open_clip": True,
        "preprocess_max_abs_diff": pixel_diff,
        "fp32_max_score_diff_vs_torch": fp32_diff,
        "fp32_min_image_cosine_vs_torch": fp32_cos,
        "fp32_text_max_abs_diff_vs_torch": text_diff,
    }
    if int8_tolerance is None or not kinds:
        return accuracy, {"accepted": False, "variant": "fp32", "reason": "int8 not exported (--no-int8)"}
    if not policies:
        return accuracy, {"accepted": False, "variant": "fp32", "reason": "no policies to probe int8 with (--policies); serving fp32"}
    return accuracy, _int8_guard(work, fp32, policies, pixels, int8_tolerance, kinds, calibration)


def _int8_guard(
    work: Path, fp32: OnnxFolderEncoder, policies: Sequence, pixels: np.ndarray, tolerance: float, kinds: Sequence[str], calibration: Sequence[Image.Image]
) -> dict:
    """Quantise each int8 kind, score the probe set with it, and keep the first within `tolerance` of fp32."""
    fp32_file = work / IMAGE_FILES["fp32"]
    for kind in kinds:
        if kind == "int8-static":
            quantize_int8_static(fp32_file, work / IMAGE_FILES[kind], np.stack([fp32.preprocess(image) for image in calibration]))
        else:
            quantize_int8(fp32_file, work / IMAGE_FILES[kind])
    reference_embeddings = _embeddings(fp32, pixels)
    manifest = json.loads((work / MANIFEST).read_text())
    manifest["embed_dim"] = int(reference_embeddings.shape[1])  # the text cache below needs it
    _write_manifest(work, manifest, ["fp32", *kinds])
    folder = read_folder(work)
    scale = fp32.logit_scale
    measured: dict[str, dict] = {}
    # The text tower is the same fp32 graph for every kind: its embeddings are computed once.
    with tempfile.TemporaryDirectory(prefix="export-text-") as texts:
        reference = OnnxFolderEncoder(folder, "fp32", text_cache=Path(texts))
        reference_scores = _scores(reference, policies, pixels, scale)
        for kind in kinds:
            encoder = OnnxFolderEncoder(folder, kind, text_cache=Path(texts))
            diff = float(np.abs(_scores(encoder, policies, pixels, scale) - reference_scores).max())
            cosine = float((_embeddings(encoder, pixels) * reference_embeddings).sum(-1).min())
            measured[kind] = {"accepted": diff <= tolerance, "max_score_diff_vs_fp32": diff, "min_image_cosine_vs_fp32": cosine}
            if kind == "int8-static":
                measured[kind]["calibration_images"] = len(calibration)
            del encoder
    chosen = next((kind for kind in kinds if measured[kind]["accepted"]), None)
    described = {kind: f"{_KIND_NAMES[kind]} {measured[kind]['max_score_diff_vs_fp32']:.4f}" for kind in kinds}
    if chosen is not None:
        passed_over = [described[kind] for kind in kinds[: kinds.index(chosen)]]
        reason = (
            f"{_KIND_NAMES[chosen]} accepted: category scores within {measured[chosen]['max_score_diff_vs_fp32']:.4f} of fp32 "
            f"(tolerance {tolerance:g}) on the probe set" + (f"; refused: {', '.join(passed_over)}" if passed_over else "")
        )
        headline = measured[chosen]
    else:
        reason = f"int8 refused: a category score moved from fp32 by {', '.join(described.values())}, beyond the tolerance {tolerance:g}; serving fp32"
        headline = min(measured.values(), key=lambda m: m["max_score_diff_vs_fp32"])
    return {
        "accepted": chosen is not None, "variant": chosen or "fp32", "reason": reason,
        "max_score_diff_vs_fp32": headline["max_score_diff_vs_fp32"], "tolerance": tolerance,
        "min_image_cosine_vs_fp32": headline["min_image_cosine_vs_fp32"], "logit_scale": scale, "kinds": measured,
    }  # fmt: skip


_KIND_NAMES = {"int8-static": "static int8 (batched)", "int8": "dynamic int8 (one image per run)"}


def _prompts(policy: object) -> list[str]:
    prompts = list(policy.benign)  # type: ignore[attr-defined]
    for category in policy.categories:  # type: ignore[attr-defined]
        prompts += list(category.positive) + list(category.contrast)
    return prompts
