"""Zero-shot scoring of images against a policy's label sets.

The score of category c for image x is

    score_c(x) = sum_{p in P_c} softmax_{t in P_c ∪ C_c ∪ B}( s · cos(x, t) )_p

where P_c are c's positive prompts, C_c its contrast prompts, B the policy's
benign prompts, and s CLIP's learned logit scale. Each prompt's text embedding
is the normalised mean over the policy's templates (open_clip's zero-shot
recipe). The score is a probability in [0, 1] and every category competes
against the same benign set, so thresholds are comparable across categories.

A category with a `probe` (learnt from labelled examples by `moderation policy train`)
scores sigmoid(w . x + b) instead, on the same normalised image embedding x: also a
probability in [0, 1], thresholded the same way.

Text embeddings are computed once per policy version (`PolicyTextIndex`), never
per request. Every caller (server, offline commands, compare, bench) goes
decode -> `prepare` -> embed -> `score_frames`; only the embed step differs
(the server shares forward passes through the micro-batcher).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from typing import TYPE_CHECKING, Any

import numpy as np

from moderation.signals.clip import arrays
from moderation.signals.clip.encoder import ImageTextEncoder, host_batch_buffer
from moderation.core.decode import DecodedImage
from moderation.policy.compile import CompileCancelled
from moderation.policy.loader import PolicyFileError, PolicyProblem
from moderation.policy.schema import Policy

if TYPE_CHECKING:  # torch backends hand over torch tensors; an exported model folder, numpy arrays (arrays.py)
    import torch

# Texts per encoder call while compiling a policy; between chunks a compile can be cancelled.
TEXT_CHUNK = 64
# Images per forward pass when scoring many files in-process.
OFFLINE_BATCH = 16


@dataclass(frozen=True)
class PolicyTextIndex:
    """A policy version's prompt embeddings and, per category, which rows compete."""

    policy_id: str
    policy_version: str
    embeddings: torch.Tensor | np.ndarray  # [prompts, dim], float32 CPU, L2-normalised (the encoder's array kind)
    # Per category: (row indices of positive + contrast + benign prompts, number of positives first).
    competitions: tuple[tuple[str, Any, int], ...]
    # Categories learnt from labelled examples (`policy train`): (id, weights [dim], bias); these
    # replace the category's zero-shot score with sigmoid(weights . x + bias).
    probes: tuple[tuple[str, Any, float], ...] = ()


@dataclass(frozen=True, slots=True)
class FrameScores:
    """An image's category scores: per category the most severe sampled frame, and which frame that was."""

    scores: dict[str, float]
    deciding: dict[str, int]  # category id -> frame index in the animation (0 for still images)


class ClipScorer:
    def __init__(self, encoder: ImageTextEncoder):
        self.encoder = encoder

    @property
    def model_id(self) -> str:
        return self.encoder.name

    @property
    def random_weights(self) -> bool:
        return self.encoder.random_weights

    @property
    def image_size(self) -> int:
        return self.encoder.image_size

    @property
    def logit_scale(self) -> float:
        return self.encoder.logit_scale

    def prepare(self, decoded: DecodedImage) -> torch.Tensor:
        """[frames, 3, S, S] model inputs for a decoded image's sampled frames (host work, any thread)."""
        return arrays.stack([self.encoder.preprocess(frame) for frame in decoded.frames])

    def encode_prompts(
        self, prompts: Sequence[str], templates: Sequence[str], should_stop: Callable[[], bool] | None = None
    ) -> torch.Tensor:
        """[len(prompts), dim]: each prompt averaged over templates, normalised.

        `should_stop` is asked between chunks; when it answers True, CompileCancelled is raised
        (a newer edit, shutdown, or the compile budget: moderation/policy/compile.py).
        """
        texts = [template.format(prompt) for prompt in prompts for template in templates]
        chunks = []
        for start in range(0, len(texts), TEXT_CHUNK):
            if should_stop is not None and should_stop():
                raise CompileCancelled(f"stopped after {start} of {len(texts)} texts")
            chunks.append(self.encoder.encode_texts(texts[start : start + TEXT_CHUNK]))
        per_text = arrays.concat(chunks).reshape(len(prompts), len(templates), -1)
        return arrays.normalize(per_text.mean(1))

    def index_policy(self, policy: Policy, should_stop: Callable[[], bool] | None = None) -> PolicyTextIndex:
        prompts: list[str] = list(policy.benign)
        benign_rows = list(range(len(prompts)))
        competitions = []
        for category in policy.categories:
            positive_rows = list(range(len(prompts), len(prompts) + len(category.positive)))
            prompts.extend(category.positive)
            contrast_rows = list(range(len(prompts), len(prompts) + len(category.contrast)))
            prompts.extend(category.contrast)
            competitions.append((category.id, positive_rows + contrast_rows + benign_rows, len(positive_rows)))
        embeddings = self.encode_prompts(prompts, policy.templates, should_stop)
        competitions = [(cid, arrays.like(embeddings, rows, "int64"), positives) for cid, rows, positives in competitions]
        return PolicyTextIndex(policy.id, policy.version, embeddings, tuple(competitions), self._probes(policy, embeddings))

    def _probes(self, policy: Policy, embeddings: Any) -> tuple[tuple[str, Any, float], ...]:
        dim = embeddings.shape[1]
        probes = []
        for category in policy.categories:
            if category.probe is None:
                continue
            if category.probe.dim != dim:
                # Only reachable with random weights (the model rule refuses another named model):
                # a probe of another architecture cannot score these embeddings at all.
                raise PolicyFileError(
                    [
                        PolicyProblem(
                            f"policy {policy.id}@{policy.version}", None, f"categories.{category.id}.probe",
                            f"the probe has {category.probe.dim} weights but model {self.model_id}'s embeddings have {dim} "
                            "dimensions: retrain it with `moderation policy train` on this model",
                        )  # fmt: skip
                    ]
                )
            probes.append((category.id, arrays.like(embeddings, category.probe.vector()), category.probe.bias))
        return tuple(probes)

    def batch_buffer(self, shape: tuple[int, ...], dtype: Any = None) -> Any:
        """Where the micro-batcher stacks a batch: page-locked when the encoder runs on CUDA."""
        return host_batch_buffer(self.encoder, shape, dtype)

    def embed_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """[batch, 3, S, S] prepared pixels -> [batch, dim] float32 CPU normalised embeddings."""
        return self.encoder.encode_images(pixels)

    def score(self, image_embeddings: torch.Tensor, index: PolicyTextIndex) -> list[dict[str, float]]:
        """Per embedding row, {category id: score in [0, 1]}."""
        per_category = {cid: values.tolist() for cid, values in self.score_columns(image_embeddings, index).items()}
        return [{cid: values[i] for cid, values in per_category.items()} for i in range(image_embeddings.shape[0])]

    def score_columns(self, image_embeddings: torch.Tensor, index: PolicyTextIndex) -> dict[str, np.ndarray]:
        """Per category id, every row's score (float32, in [0, 1]): `score` without a dict per row, for bulk re-scoring."""
        if arrays.is_numpy(index.embeddings):
            return self._score_columns_numpy(arrays.to_numpy(image_embeddings), index)
        import torch

        with torch.inference_mode():
            return self._score_columns_torch(image_embeddings, index)

    def _score_columns_numpy(self, image_embeddings: np.ndarray, index: PolicyTextIndex) -> dict[str, np.ndarray]:
        logits = np.float32(self.logit_scale) * image_embeddings @ index.embeddings.T  # [batch, prompts]
        columns = {}
        for category_id, rows, positives in index.competitions:
            probabilities = arrays.softmax(logits[:, rows])
            columns[category_id] = np.clip(probabilities[:, :positives].sum(axis=-1), 0.0, 1.0).astype(np.float32)
        for category_id, weights, bias in index.probes:
            columns[category_id] = arrays.sigmoid(image_embeddings @ weights + np.float32(bias))
        return columns

    def _score_columns_torch(self, image_embeddings: torch.Tensor, index: PolicyTextIndex) -> dict[str, np.ndarray]:
        import torch

        if arrays.is_numpy(image_embeddings):  # e.g. stored embeddings re-scored against a torch encoder's index
            image_embeddings = torch.from_numpy(image_embeddings)
        logits = self.logit_scale * image_embeddings.float().cpu() @ index.embeddings.T  # [batch, prompts]
        columns = {}
        for category_id, rows, positives in index.competitions:
            probabilities = logits[:, rows].softmax(dim=-1)
            columns[category_id] = probabilities[:, :positives].sum(dim=-1).clamp(0.0, 1.0).numpy()
        for category_id, weights, bias in index.probes:
            columns[category_id] = torch.sigmoid(image_embeddings.float().cpu() @ weights + bias).numpy()
        return columns

    def score_frames(self, embeddings: torch.Tensor, frame_indices: Sequence[int], index: PolicyTextIndex) -> FrameScores:
        """One image's scores from the embeddings of its sampled frames (rows in frame order)."""
        return most_severe_frame(self.score(embeddings, index), tuple(frame_indices))

    def embed_prepared(self, pixels: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Embeddings of several images' prepared frames, in-process, OFFLINE_BATCH frames per forward pass.

        What the micro-batcher does for the server, without the batcher: one embedding
        tensor per input, rows in frame order.
        """
        if not pixels:
            return []
        stacked = arrays.concat(list(pixels))
        embeddings = arrays.concat([self.embed_images(stacked[i : i + OFFLINE_BATCH]) for i in range(0, stacked.shape[0], OFFLINE_BATCH)])
        return arrays.split(embeddings, [frames.shape[0] for frames in pixels])

    def score_decoded(self, images: Sequence[DecodedImage], index: PolicyTextIndex) -> list[FrameScores]:
        """Score decoded images in-process, sharing forward passes (tests and benchmarks of the scorer alone)."""
        embeddings = self.embed_prepared([self.prepare(image) for image in images])
        return [self.score_frames(rows, image.frame_indices, index) for image, rows in zip(images, embeddings, strict=True)]


def most_severe_frame(per_frame: list[dict[str, float]], indices: tuple[int, ...]) -> FrameScores:
    """Per category, the highest score over the frames and the frame it came from."""
    scores, deciding = {}, {}
    for category_id in per_frame[0]:
        best = max(range(len(per_frame)), key=lambda i: per_frame[i][category_id])
        scores[category_id] = per_frame[best][category_id]
        deciding[category_id] = indices[best]
    return FrameScores(scores, deciding)
