"""Zero-shot scoring of images against a policy's label sets.

The score of category c for image x is

    score_c(x) = sum_{p in P_c} softmax_{t in P_c ∪ C_c ∪ B}( s · cos(x, t) )_p

where P_c are c's positive prompts, C_c its contrast prompts, B the policy's
benign prompts, and s CLIP's learned logit scale. Each prompt's text embedding
is the normalised mean over the policy's templates (open_clip's zero-shot
recipe). The score is a probability in [0, 1] and every category competes
against the same benign set, so thresholds are comparable across categories.

Text embeddings are computed once per policy version (`PolicyTextIndex`), never
per request.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from moderation.clip.loading import LoadedClip
from moderation.policy.compile import CompileCancelled
from moderation.policy.schema import Policy

TEXT_BATCH = 64


@dataclass(frozen=True)
class PolicyTextIndex:
    """A policy version's prompt embeddings and, per category, which rows compete."""

    policy_id: str
    policy_version: str
    embeddings: torch.Tensor  # [prompts, dim], L2-normalised
    # Per category: (row indices of positive + contrast + benign prompts, number of positives first).
    competitions: tuple[tuple[str, torch.Tensor, int], ...]


class ClipScorer:
    def __init__(self, clip: LoadedClip):
        self.clip = clip
        first_parameter = next(clip.model.parameters())
        self.device, self.dtype = first_parameter.device, first_parameter.dtype
        self.model_id = clip.spec.model_id
        self.random_weights = clip.spec.random

    @property
    def logit_scale(self) -> float:
        return float(self.clip.model.logit_scale.detach().exp())

    @torch.inference_mode()
    def encode_prompts(
        self, prompts: Sequence[str], templates: Sequence[str], should_stop: Callable[[], bool] | None = None
    ) -> torch.Tensor:
        """[len(prompts), dim]: each prompt averaged over templates, normalised.

        `should_stop` is checked before each chunk of TEXT_BATCH texts; CompileCancelled when it says so.
        """
        texts = [template.format(prompt) for prompt in prompts for template in templates]
        chunks = []
        for start in range(0, len(texts), TEXT_BATCH):
            if should_stop is not None and should_stop():
                raise CompileCancelled(f"stopped after {start} of {len(texts)} texts")
            tokens = self.clip.tokenizer(texts[start : start + TEXT_BATCH]).to(self.device)
            chunks.append(self.clip.model.encode_text(tokens, normalize=True).float())
        per_text = torch.cat(chunks).reshape(len(prompts), len(templates), -1)
        return F.normalize(per_text.mean(dim=1), dim=-1)

    def index_policy(self, policy: Policy, should_stop: Callable[[], bool] | None = None) -> PolicyTextIndex:
        prompts: list[str] = list(policy.benign)
        benign_rows = list(range(len(prompts)))
        competitions = []
        for category in policy.categories:
            positive_rows = list(range(len(prompts), len(prompts) + len(category.positive)))
            prompts.extend(category.positive)
            contrast_rows = list(range(len(prompts), len(prompts) + len(category.contrast)))
            prompts.extend(category.contrast)
            rows = torch.tensor(positive_rows + contrast_rows + benign_rows, device=self.device)
            competitions.append((category.id, rows, len(positive_rows)))
        embeddings = self.encode_prompts(prompts, policy.templates, should_stop)
        return PolicyTextIndex(policy.id, policy.version, embeddings, tuple(competitions))

    @torch.inference_mode()
    def embed_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """[batch, 3, H, W] preprocessed pixels -> [batch, dim] normalised embeddings."""
        return self.clip.model.encode_image(pixels.to(self.device, self.dtype), normalize=True).float()

    @torch.inference_mode()
    def score(self, image_embeddings: torch.Tensor, index: PolicyTextIndex) -> list[dict[str, float]]:
        """Per image, {category id: score in [0, 1]}."""
        logits = self.logit_scale * image_embeddings @ index.embeddings.T  # [batch, prompts]
        per_category = {}
        for category_id, rows, positives in index.competitions:
            probabilities = logits[:, rows].softmax(dim=-1)
            per_category[category_id] = probabilities[:, :positives].sum(dim=-1).clamp(0.0, 1.0).tolist()
        return [{cid: values[i] for cid, values in per_category.items()} for i in range(image_embeddings.shape[0])]


def most_severe_frame(per_frame: list[dict[str, float]], indices: tuple[int, ...]) -> tuple[dict[str, float], dict[str, int]]:
    """Per category, the highest score over the frames and the frame it came from."""
    scores, deciding = {}, {}
    for category_id in per_frame[0]:
        best = max(range(len(per_frame)), key=lambda i: per_frame[i][category_id])
        scores[category_id] = per_frame[best][category_id]
        deciding[category_id] = indices[best]
    return scores, deciding
