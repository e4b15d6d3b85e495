"""Teach a category from labelled examples: a linear probe on CLIP image embeddings.

Some categories are easier to show than to describe: a house style of counterfeit
label, a pattern a prompt has no words for. `moderation policy train` fits an
L2-regularised logistic regression (scikit-learn) on the normalised image embeddings of
images labelled with the category (positives) and every other labelled image
(negatives), keeping a stratified share of them apart to measure it. The held-out ROC
AUC of the probe is reported beside that of the category's prompts on the same images,
so staff see whether the examples teach more than the words did.

The probe goes into the policy text (schema.Probe), in a new policy version: validate,
golden tests, shadowing and `policy diff` treat it like a threshold change.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np

from moderation.policy.schema import Probe, ProbeTraining, encode_probe_weights

# Fewer examples of either side than this and neither the fit nor its held-out figure means much.
MIN_EXAMPLES_PER_SIDE = 8
# Regularisation strengths tried by cross-validation on the training share (inverse of the L2 penalty).
C_GRID = (0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0, 100000.0)
SEED = 0


class TrainingError(ValueError):
    """The labelled examples cannot train a probe; the message says why and what to add."""


@dataclass(frozen=True)
class TrainedProbe:
    probe: Probe
    held_out_auc: float | None
    zero_shot_auc: float | None
    regularisation_c: float


def held_out_split(positive: np.ndarray, fraction: float, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, held-out rows): `fraction` of each side held out, at least one of each when fraction > 0."""
    rng = np.random.default_rng(seed)
    train, held = [], []
    for side in (np.flatnonzero(positive), np.flatnonzero(~positive)):
        shuffled = rng.permutation(side)
        count = 0 if fraction <= 0 else max(1, int(round(fraction * len(shuffled))))
        held.append(shuffled[:count])
        train.append(shuffled[count:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(held))


def train_probe(
    embeddings: np.ndarray,
    positive: np.ndarray,
    zero_shot_scores: np.ndarray,
    model_id: str,
    held_out_fraction: float = 0.25,
    labels_source: str = "",
) -> TrainedProbe:
    """Fit the probe on the training share; the held-out figures describe exactly the probe returned.

    `embeddings` [n, dim] normalised float32; `positive` [n] bool; `zero_shot_scores` [n] the
    category's prompt scores on the same images (for the comparison only).
    """
    try:
        from sklearn.linear_model import LogisticRegressionCV
        from sklearn.metrics import roc_auc_score
    except ImportError:
        raise TrainingError("training a probe needs scikit-learn: pip install 'moderation[train]'") from None

    if not 0.0 <= held_out_fraction < 1.0:
        raise TrainingError(f"the held-out share must be at least 0 and below 1, not {held_out_fraction}")
    positive = np.asarray(positive, dtype=bool)
    positives, negatives = int(positive.sum()), int((~positive).sum())
    if positives < MIN_EXAMPLES_PER_SIDE or negatives < MIN_EXAMPLES_PER_SIDE:
        raise TrainingError(
            f"{positives} images show the category and {negatives} do not; a probe needs at least "
            f"{MIN_EXAMPLES_PER_SIDE} of each (20-50 of each is better): add labelled images"
        )
    train, held = held_out_split(positive, held_out_fraction)
    folds = int(min(5, positive[train].sum(), (~positive[train]).sum()))
    if folds < 2:
        raise TrainingError("too few images left to train on after holding some out: add labelled images or lower --held-out")
    with warnings.catch_warnings():
        # scikit-learn 1.9 announces changes of defaults and fitted attributes this code does not use.
        warnings.simplefilter("ignore", FutureWarning)
        fitted = LogisticRegressionCV(
            Cs=list(C_GRID), cv=folds, class_weight="balanced", scoring="roc_auc", max_iter=5000, random_state=SEED
        ).fit(np.asarray(embeddings[train], dtype=np.float64), positive[train])
    weights = fitted.coef_[0].astype(np.float32)
    bias = float(fitted.intercept_[0])

    held_out_auc = zero_shot_auc = None
    if len(held) and positive[held].any() and (~positive[held]).any():
        probe_scores = embeddings[held].astype(np.float64) @ weights.astype(np.float64) + bias
        held_out_auc = float(roc_auc_score(positive[held], probe_scores))
        zero_shot_auc = float(roc_auc_score(positive[held], np.asarray(zero_shot_scores)[held]))
    probe = Probe(
        model=model_id,
        weights=encode_probe_weights(weights),
        bias=bias,
        training=ProbeTraining(
            examples=len(train),
            positives=int(positive[train].sum()),
            held_out=len(held),
            held_out_auc=None if held_out_auc is None else round(held_out_auc, 4),
            zero_shot_auc=None if zero_shot_auc is None else round(zero_shot_auc, 4),
            labels=labels_source[:500],
            trained_at=datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
        ),
    )
    return TrainedProbe(probe, held_out_auc, zero_shot_auc, float(np.ravel(fitted.C_)[0]))
