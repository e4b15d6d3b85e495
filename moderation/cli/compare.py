"""`moderation compare`: both model tiers on one image, in-process, side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from moderation.cli.app import app
from moderation.cli.common import (
    DeviceOption,
    ExplainerModelOption,
    ExplainerWeightsOption,
    ModelOption,
    WeightsOption,
    fail,
    load_scorer_or_fail,
    model_spec,
    offline_settings,
    policy_or_fail,
    settings_or_fail,
)
from moderation.cli.render import print_comparison


@app.command()
def compare(
    image: Annotated[Path, typer.Argument(help="image file", exists=True, dir_okay=False)],
    policy: Annotated[Path, typer.Option(help="policy YAML file")] = Path("policies/default.yaml"),
    model: ModelOption = None,
    weights: WeightsOption = None,
    device: DeviceOption = None,
    explainer_model: ExplainerModelOption = None,
    explainer_weights: ExplainerWeightsOption = None,
    no_explainer: Annotated[bool, typer.Option("--no-explainer", help="CLIP tier only")] = False,
) -> None:
    """Run every model tier on one image, in-process, and print their outputs side by side per category.

    The CLIP tier scores the image as the server does (every sampled frame of an
    animation, the most severe kept); the explainer sees the frame that decided each category.
    """
    from moderation.decision import decide
    from moderation.imaging import ImageRejected, decode_frames
    from moderation.runtime import decode_limits, load_explainer

    loaded_policy, _ = policy_or_fail(policy)
    settings = offline_settings(model, weights, device)
    spec = model_spec(settings)
    scorer = load_scorer_or_fail(spec)
    try:
        decoded = decode_frames(image.read_bytes(), decode_limits(settings, scorer.image_size))
    except ImageRejected as error:
        raise fail(f"{image}: {error}") from None
    (frame_scores,) = scorer.score_decoded([decoded], scorer.index_policy(loaded_policy))
    decision = decide(frame_scores.scores, loaded_policy)

    verdicts = {}
    explainer_id = "off"
    if not no_explainer:
        explainer_settings = settings_or_fail(
            explainer_model=explainer_model, explainer_weights=explainer_weights, device=settings.device
        )
        explainer = load_explainer(explainer_settings, spec.device)
        explainer_id = explainer.info.model_id
        # One verdict per category, so every row has the explainer's view of it.
        for category in loaded_policy.categories:
            frame = decoded.frames[decoded.frame_indices.index(frame_scores.deciding[category.id])]
            result = explainer.explain(frame, loaded_policy, [category.id], loaded_policy.escalation.instruction)
            verdicts[category.id] = result.verdict
    print_comparison(image, scorer.model_id, explainer_id, decision, verdicts, scorer.random_weights)
