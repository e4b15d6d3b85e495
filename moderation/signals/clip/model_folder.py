"""An exported CLIP model folder (written by `moderation export`), read without torch.

    manifest.json          what is in the folder and how it was measured (below)
    image-fp32.onnx        image tower + L2 norm: pixels [B, 3, S, S] f32 -> embeddings [B, D] f32
    image-int8-static.onnx the same, static int8 (activation scales fixed at export from calibration
                           images): batch-independent, so it runs batched; only where the guard accepted it
    image-int8.onnx        the same, dynamic int8 (one image per run); only where the guard accepted it
                           and refused static int8
    text-fp32.onnx         text tower + L2 norm: tokens [B, context] int64 -> embeddings [B, D] f32
    tokenizer/             open_clip's BPE merges file (bpe_simple_vocab_16e6.txt.gz), as open_clip ships it
    preprocess.json        size, mean, std, interpolation, resize mode (moderation/signals/clip/preprocess.py)

manifest.json records the source model, weights and a sha256 of every weight, the
package versions that exported it, each file's sha256 (checked when the folder is
loaded: a damaged or swapped file is refused, not served), the logit scale, and the
accuracy measured at export: the fp32 graphs against eager open_clip, the numpy
preprocessing against open_clip's transform, and int8 against fp32 (the int8 guard, for
each int8 kind tried). A folder holds at most one int8 image tower.

Serving from a folder (`moderation serve --model-dir DIR`, backend 'onnx-folder':
moderation/signals/clip/backends/onnx_folder.py) imports onnxruntime, numpy and PIL
only; this module imports neither torch nor open_clip.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moderation.signals.clip.loading import WeightsUnavailable
from moderation.signals.clip.preprocess import PreprocessParams

# 2: an int8 image tower may be static ('int8-static'). Format 1 folders (fp32 or dynamic int8) still load.
FOLDER_FORMAT = 2
READABLE_FORMATS = (1, 2)
MANIFEST = "manifest.json"
PREPROCESS = "preprocess.json"
IMAGE_FILES = {"fp32": "image-fp32.onnx", "int8-static": "image-int8-static.onnx", "int8": "image-int8.onnx"}
# Image towers whose activation scales are computed per run: an image's embedding would depend on
# the other images in its batch, so these run one image per session run.
PER_IMAGE_VARIANTS = frozenset({"int8"})
TEXT_FILE = "text-fp32.onnx"
MERGES_FILE = "tokenizer/bpe_simple_vocab_16e6.txt.gz"
IMAGE_INPUT, TEXT_INPUT, OUTPUT = "pixels", "tokens", "embeddings"
# The int8 guard's default: the largest change of any category score, int8 against fp32,
# on the export's probe set, at the model's own logit scale (the scores it serves). 0.02 is what the
# onnxruntime-int8 backend was already held to (onnx_runtime.SCORE_TOLERANCE); ViT-B-32
# (random weights) measured 0.0085 there. Setting: `moderation export --int8-tolerance`.
DEFAULT_INT8_TOLERANCE = 0.02


class ModelFolderError(WeightsUnavailable):
    """The folder is missing, incomplete or altered; one line saying what and how to fix it (serve exits 2)."""


@dataclass(frozen=True)
class ModelFolder:
    path: Path
    manifest: dict[str, Any]
    preprocess: PreprocessParams
    # Files whose sha256 matched the manifest in this process (`verified`).
    checked: set[str] = field(default_factory=set, compare=False, repr=False)

    @property
    def model_id(self) -> str:
        return str(self.manifest["model_id"])

    @property
    def random_weights(self) -> bool:
        return bool(self.manifest["random_weights"])

    @property
    def image_variant(self) -> str:
        """What serving runs: static or dynamic int8 where the guard accepted it, else fp32."""
        return str(self.manifest["image_variant"])

    @property
    def int8_verdict(self) -> str:
        return str(self.manifest.get("int8", {}).get("reason", "no int8 graph"))

    def file(self, name: str) -> Path:
        return self.path / name

    def verified(self, name: str) -> Path:
        """The path of `name` once its bytes match the manifest's sha256 (hashed once per process).

        Serving hashes only the files it opens, when it opens them: a restart with every
        policy text cached reads neither the text tower nor the fp32 image tower it does not
        run (~600 MB of ViT-B-32's 700 MB), and never serves an unchecked byte."""
        if name not in self.checked:
            expected = self.manifest.get("files", {}).get(name)
            if expected is None:
                raise ModelFolderError(f"model folder {self.path}: its manifest lists no {name}; {_fix(self.path)}")
            if file_sha256(self.path / name) != expected:
                raise ModelFolderError(f"model folder {self.path}: {name} does not match the sha256 in its manifest (damaged or replaced); {_fix(self.path)}")
            self.checked.add(name)
        return self.path / name


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fix(path: Path) -> str:
    return f"run `moderation export {path}` (with the model and weights to serve) to write it again"


def read_folder(path: Path, verify: bool = True) -> ModelFolder:
    """Read and check an exported folder: the manifest, its format, that every listed file is there,
    and (`verify`) every listed file's sha256; without `verify`, `ModelFolder.verified` checks a file when it is opened."""
    fix = _fix(path)
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelFolderError(f"model folder {path} has no {MANIFEST}: it is not a `moderation export` folder; {fix}") from None
    except (OSError, ValueError) as err:
        raise ModelFolderError(f"model folder {path}: cannot read {MANIFEST} ({err}); {fix}") from None
    if manifest.get("format") not in READABLE_FORMATS:
        formats = " and ".join(str(f) for f in READABLE_FORMATS)
        raise ModelFolderError(f"model folder {path} has format {manifest.get('format')!r}; this release reads formats {formats}; {fix}")
    for name, expected in manifest.get("files", {}).items():
        target = path / name
        if not target.is_file():
            raise ModelFolderError(f"model folder {path} lacks {name}, which its manifest lists; {fix}")
        # preprocess.json is read here, so it is checked here (a few hundred bytes) even without `verify`.
        if (verify or name == PREPROCESS) and file_sha256(target) != expected:
            raise ModelFolderError(f"model folder {path}: {name} does not match the sha256 in its manifest (damaged or replaced); {fix}")
    checked = set(manifest.get("files", {})) if verify else {PREPROCESS} & set(manifest.get("files", {}))
    try:
        params = PreprocessParams.from_dict(json.loads((path / PREPROCESS).read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ModelFolderError(f"model folder {path}: {PREPROCESS} is unusable ({err}); {fix}") from None
    return ModelFolder(path, manifest, params, checked)


def session_for(path: Path, threads: int | None = None, spin: bool = False, arena: bool = False) -> Any:
    """An ONNX Runtime CPU session. Intra-op threads do not busy-wait between runs (`spin`): the
    server's decode and gRPC threads share the cores. No CPU memory arena (`arena`): it keeps a
    batch's peak activations (~130 MB at batch 16 for ViT-B-32) for the life of the process.
    `threads` None: ONNX Runtime's default (one per physical core)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or 0
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    options.enable_cpu_mem_arena = arena
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
