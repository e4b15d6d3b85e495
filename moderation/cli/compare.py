"""`moderation compare`: both model tiers on images, in-process, side by side, with an agreement count."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from moderation.cli.app import app
from moderation.cli.common import (
    ConfigOption,
    escape,
    DeviceOption,
    ExplainerModelOption,
    ExplainerWeightsOption,
    JsonOption,
    ModelOption,
    WeightsOption,
    err,
    load_offline_core,
    offline_settings,
    out,
    policy_or_fail,
    print_json,
    settings_or_fail,
)
from moderation.cli.render import print_comparison


@app.command()
def compare(
    images: Annotated[list[Path], typer.Argument(help="image files", exists=True, dir_okay=False)],
    policy: Annotated[Path, typer.Option(help="policy YAML file")] = Path("policies/default.yaml"),
    model: ModelOption = None,
    weights: WeightsOption = None,
    device: DeviceOption = None,
    config: ConfigOption = None,
    explainer_model: ExplainerModelOption = None,
    explainer_weights: ExplainerWeightsOption = None,
    no_explainer: Annotated[bool, typer.Option("--no-explainer", help="CLIP tier only")] = False,
    as_json: JsonOption = False,
) -> None:
    """Run every model tier on images, in-process, and print their outputs side by side per category.

    The CLIP tier judges each image through the server's judging core with the same
    settings (every sampled frame of an animation, the most severe kept); the explainer
    sees the frame that decided each category. Ends with how many category verdicts the
    two tiers agree on.
    """
    from moderation.core.decision import clip_leans_violating
    from moderation.core.decode import ImageRejected
    from moderation.offline.scoring import offline_policy
    from moderation.runtime import load_explainer, resolve_device

    loaded_policy, _ = policy_or_fail(policy)
    settings = offline_settings(model, weights, device, config)
    core, scorer = load_offline_core(settings)
    served = offline_policy(scorer, loaded_policy, policy)
    explainer = None
    explainer_id = "off"
    if not no_explainer:
        explainer_settings = settings_or_fail(
            explainer_model=explainer_model, explainer_weights=explainer_weights, device=settings.device
        )
        explainer = load_explainer(explainer_settings, resolve_device(settings.device))
        explainer_id = explainer.info.model_id

    if not as_json:  # once, not per image: the models are the same for all
        out.print(f"CLIP {escape(scorer.model_id)}; explainer {escape(explainer_id)}", highlight=False)
    documents = []
    agree = compared = 0
    failures = 0
    for image in images:
        (judged,) = core.judge_images([image.read_bytes()], served)
        if isinstance(judged, ImageRejected):
            failures += 1
            err.print(escape(f"{image}: {judged}"), highlight=False)
            continue
        decision, decoded = judged.decision, judged.frames.decoded
        verdicts = {}
        if explainer is not None:
            # One verdict per category, so every row has the explainer's view of it.
            for category in loaded_policy.categories:
                frame = decoded.frames[decoded.frame_indices.index(judged.deciding[category.id])]
                result = explainer.explain(frame, loaded_policy, [category.id], loaded_policy.escalation.instruction)
                verdicts[category.id] = result.verdict
        for c in decision.categories:
            verdict = verdicts.get(c.category_id)
            if verdict is not None:
                compared += 1
                agree += verdict.violates == clip_leans_violating(c)
        if as_json:
            documents.append(comparison_document(image, decision, verdicts))
        else:
            print_comparison(image, decision, verdicts)
    random = scorer.random_weights or explainer_id.endswith("/random")
    if as_json:
        print_json(
            {
                "policy_id": loaded_policy.id,
                "version": loaded_policy.version,
                "clip_model": scorer.model_id,
                "explainer": explainer_id,
                "random_weights": random,
                "images": documents,
                "agreement": {"agree": agree, "compared": compared},
            }
        )
    else:
        if explainer is None:
            out.print("explainer off (--no-explainer): no agreement to count", highlight=False)
        else:
            out.print(f"[bold]{agree} of {compared} categories agree[/] over {len(images) - failures} images", highlight=False)
        if random:
            out.print("[bold yellow]random weights: these outputs mean nothing[/]")
    if failures:
        raise typer.Exit(1)


def comparison_document(image: Path, decision, verdicts: dict) -> dict:  # noqa: ANN001 - Decision, ExplainerVerdict
    from moderation.core.decision import clip_leans_violating

    categories = []
    for c in decision.categories:
        verdict = verdicts.get(c.category_id)
        categories.append(
            {
                "id": c.category_id,
                "clause": c.clause_id,
                "clip_score": c.score,
                "band": c.band.value,
                "clip_leans_violating": clip_leans_violating(c),
                "explainer_violates": verdict.violates if verdict else None,
                "confidence": verdict.confidence if verdict else None,
                "agree": (verdict.violates == clip_leans_violating(c)) if verdict else None,
                "rationale": verdict.rationale if verdict else None,
            }
        )
    return {"image": str(image), "action": decision.action.value, "categories": categories}
