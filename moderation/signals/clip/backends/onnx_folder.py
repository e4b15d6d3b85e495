"""Backend 'onnx-folder': serve an exported model folder with onnxruntime, numpy and PIL only.

Selected by the setting clip_model_dir (`moderation serve --model-dir DIR`). Nothing here
imports torch, open_clip or transformers (tests/integration/test_model_folder_server.py
checks the server process's sys.modules after a start and a policy edit): images are
preprocessed by moderation/signals/clip/preprocess.py, prompts tokenized by
moderation/signals/clip/tokenizer.py, and both towers run as ONNX graphs, so a policy
edit compiles its prompts without torch. Arrays cross the encoder seam as numpy float32
(`uses_numpy`; moderation/signals/clip/arrays.py).

The image graph is the int8 one where the export's guard accepted it (manifest
'image_variant'), else fp32; the start-up log line says which and why. Static int8
('int8-static': activation scales fixed at export) and fp32 run the micro-batcher's
batches in one session run. Dynamic int8 ('int8') takes one activation scale per run,
so it runs one image per run (a score never depends on the other images in a batch),
as the 'onnxruntime-int8' backend does.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from moderation.signals.clip.model_folder import (
    IMAGE_FILES,
    IMAGE_INPUT,
    MERGES_FILE,
    OUTPUT,
    PER_IMAGE_VARIANTS,
    TEXT_FILE,
    TEXT_INPUT,
    ModelFolder,
    ModelFolderError,
    read_folder,
    session_for,
)
from moderation.signals.clip.preprocess import ImagePreprocessor
from moderation.signals.clip.text_cache import TextEmbeddingCache, model_key
from moderation.signals.clip.tokenizer import ClipTokenizer

log = logging.getLogger(__name__)

# Texts per text-tower run (bounds memory when a policy has many prompts).
TEXT_BATCH = 64


@dataclass(frozen=True, slots=True)
class HostDevice:
    """Where an exported folder runs: the host CPU (what torch.device('cpu') says, without torch)."""

    type: str = "cpu"

    def __str__(self) -> str:
        return self.type


class OnnxFolderEncoder:
    backend = "onnx-folder"
    uses_numpy = True

    def __init__(self, folder: ModelFolder, variant: str | None = None, threads: int | None = None, text_cache: Path | None = None):
        manifest = folder.manifest
        self.folder = folder
        self.variant = variant or folder.image_variant
        if self.variant not in IMAGE_FILES or IMAGE_FILES[self.variant] not in manifest.get("files", {}):
            raise ModelFolderError(f"model folder {folder.path} has no {self.variant} image tower (its manifest: {folder.int8_verdict})")
        self.name = folder.model_id
        self.random_weights = folder.random_weights
        self.image_size = folder.preprocess.size
        self.device = HostDevice()
        self.dtype = "float32" if self.variant == "fp32" else "int8"
        self.logit_scale = float(manifest["logit_scale"])
        self._preprocess = ImagePreprocessor(folder.preprocess)
        self._tokenizer = ClipTokenizer(folder.verified(MERGES_FILE), int(manifest["context_length"]))
        self._image = session_for(folder.verified(IMAGE_FILES[self.variant]), threads)
        # Built on the first text the cache lacks: a restart with every prompt cached never loads it (~250 MB for ViT-B-32).
        self._text: object | None = None
        self._text_lock = threading.Lock()
        self._threads = threads
        self._per_image = self.variant in PER_IMAGE_VARIANTS
        # Text embeddings kept across starts (clip/text_cache.py), keyed by the text graph and tokenizer.
        files = manifest["files"]
        self._text_cache = (
            TextEmbeddingCache.open(
                text_cache, model_key(files[TEXT_FILE], files[MERGES_FILE], int(manifest["context_length"])), int(manifest["embed_dim"])
            )
            if text_cache is not None
            else None
        )

    def preprocess(self, image: Image.Image) -> np.ndarray:
        return self._preprocess(image)

    def encode_images(self, pixels: np.ndarray) -> np.ndarray:
        array = np.ascontiguousarray(pixels, dtype=np.float32)
        if not self._per_image:
            return self._image.run([OUTPUT], {IMAGE_INPUT: array})[0]
        return np.concatenate([self._image.run([OUTPUT], {IMAGE_INPUT: array[i : i + 1]})[0] for i in range(len(array))])

    def tokenize(self, texts: Sequence[str]) -> np.ndarray:
        return self._tokenizer(texts)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        cached = self._text_cache.get(texts) if self._text_cache is not None else {}
        missing = list(dict.fromkeys(t for t in texts if t not in cached))
        if missing:
            computed = self._run_text(missing)
            if self._text_cache is not None:
                self._text_cache.put(missing, computed)
            cached.update(zip(missing, computed, strict=True))
        return np.stack([cached[t] for t in texts]).astype(np.float32, copy=False) if texts else np.zeros((0, 0), np.float32)

    def _text_session(self) -> object:
        with self._text_lock:
            if self._text is None:
                self._text = session_for(self.folder.verified(TEXT_FILE), self._threads)
            return self._text

    def _run_text(self, texts: Sequence[str]) -> np.ndarray:
        session = self._text_session()
        chunks = [
            session.run([OUTPUT], {TEXT_INPUT: self._tokenizer(list(texts[start : start + TEXT_BATCH]))})[0]
            for start in range(0, len(texts), TEXT_BATCH)
        ]
        return np.concatenate(chunks).astype(np.float32, copy=False)


def load(spec) -> OnnxFolderEncoder:  # noqa: ANN001 - ClipModelSpec
    if spec.model_dir is None:
        raise ModelFolderError("backend 'onnx-folder' needs a model folder: set MODERATION_CLIP_MODEL_DIR (--model-dir)")
    if spec.device != "cpu":
        raise ModelFolderError(f"an exported model folder runs on the CPU only, not device {spec.device!r}; set MODERATION_DEVICE=cpu")
    # Each file's sha256 is checked when it is opened (ModelFolder.verified): a restart with its
    # policy texts cached hashes neither the text tower nor the image tower it does not run.
    folder = read_folder(spec.model_dir, verify=False)
    encoder = OnnxFolderEncoder(folder, text_cache=spec.export_dir)
    log.info(
        "CLIP model folder %s: %s, image tower %s (%s)", folder.path, folder.model_id, encoder.variant, folder.int8_verdict,
        extra={"fields": {"clip_image_variant": encoder.variant}},
    )  # fmt: skip
    if folder.random_weights:
        log.warning("CLIP model folder %s holds RANDOM WEIGHTS: its scores and decisions mean nothing", folder.path)
    return encoder
