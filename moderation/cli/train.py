"""`moderation policy train`: teach a category from labelled examples (a linear probe on CLIP embeddings)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from moderation.cli.app import policy_app
from moderation.cli.common import (
    ConfigOption,
    DeviceOption,
    JsonOption,
    ModelOption,
    WeightsOption,
    err,
    escape,
    fail,
    load_offline_core,
    offline_settings,
    out,
    policy_or_fail,
    print_json,
)


@policy_app.command("train")
def policy_train(
    policy_file: Annotated[Path, typer.Argument(help="the policy YAML file whose category to train", dir_okay=False)],
    category: Annotated[str, typer.Option(help="the category id to learn from the examples")],
    labels: Annotated[
        Path,
        typer.Option(help="labelled images, as `policy calibrate` reads them: LABELS/<category id or benign>/<image>, or a CSV path,label"),
    ],
    held_out: Annotated[
        float, typer.Option(min=0.0, max=0.9, help="share of each side kept apart to measure the probe (0 to skip)")
    ] = 0.25,
    out_dir: Annotated[
        Optional[Path], typer.Option("--out", help="folder for the proposed policy (default training-POLICY_ID)")
    ] = None,
    version: Annotated[Optional[str], typer.Option(help="version of the proposed policy (default: the next one)")] = None,
    model: ModelOption = None,
    weights: WeightsOption = None,
    device: DeviceOption = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Fit a probe for one category on labelled images and write the next policy version with it.

    Images labelled with the category are the positives; every other labelled image
    (benign or another category) a negative. The held-out share measures the probe
    and, on the same images, the category's prompts, so you see which scores better.
    """
    import difflib
    from datetime import date

    import numpy as np
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from moderation.offline.labels import LabelsError, read_labels
    from moderation.offline.probe_training import TrainingError, train_probe
    from moderation.offline.scoring import offline_policy, score_image_files
    from moderation.policy import PolicyFileError
    from moderation.policy.rewrite import RewriteError, next_version, rewrite_policy_probe

    policy, policy_text = policy_or_fail(policy_file)
    ids = [c.id for c in policy.categories]
    if category not in ids:
        raise fail(f"{policy_file}: no category {category!r}; its categories: {', '.join(ids)}")
    try:
        images = read_labels(labels, ids)
    except LabelsError as error:
        raise fail(str(error)) from None
    core, scorer = load_offline_core(offline_settings(model, weights, device, config))
    if scorer.random_weights:
        err.print(f"[bold yellow]warning:[/] model {escape(scorer.model_id)} has random weights: the probe means nothing", highlight=False)

    # Zero-shot scores for the comparison: the category's prompts, without any probe it has now.
    zero_shot = policy.model_copy(
        update={"categories": [c.model_copy(update={"probe": None}) if c.id == category else c for c in policy.categories]}
    )
    served = offline_policy(scorer, zero_shot, policy_file)
    columns = (TextColumn("embedding"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err.current()) as progress:
        task = progress.add_task("embedding", total=len(images))
        scored = score_image_files(core, served, [image.path for image in images], on_scored=lambda n: progress.advance(task, n))
    for result in scored:
        if result.scores is None:
            err.print(f"[yellow]skipped[/] {escape(f'{result.path}: {result.error}')}", highlight=False)
    kept = [(image, result) for image, result in zip(images, scored, strict=True) if result.scores is not None]
    if not kept:
        raise fail(f"none of the {len(images)} labelled images could be read")

    try:
        trained = train_probe(
            np.stack([result.embedding for _, result in kept]),
            np.array([category in image.labels for image, _ in kept]),
            np.array([result.scores[category] for _, result in kept]),
            scorer.model_id,
            held_out_fraction=held_out,
            labels_source=str(labels),
        )
        new_version = version or next_version(policy.version, date.today())
        proposed = rewrite_policy_probe(
            policy_text, version=new_version, category_id=category, probe=trained.probe, model=scorer.model_id, source=str(policy_file)
        )
    except (TrainingError, RewriteError, PolicyFileError) as error:
        raise fail(str(error).splitlines()[0]) from None

    out_dir = out_dir or Path(f"training-{policy.id}")
    out_dir.mkdir(parents=True, exist_ok=True)
    proposed_path = out_dir / policy_file.name
    proposed_path.write_text(proposed, encoding="utf-8")
    training = trained.probe.training
    assert training is not None  # train_probe always records it
    if as_json:
        print_json(
            {
                "policy": policy.id,
                "version": new_version,
                "category": category,
                "model": scorer.model_id,
                "examples": training.examples,
                "positives": training.positives,
                "held_out": training.held_out,
                "held_out_auc": trained.held_out_auc,
                "zero_shot_auc": trained.zero_shot_auc,
                "regularisation_c": trained.regularisation_c,
                "proposed": str(proposed_path),
            }
        )
        return
    out.print(
        f"{category}: a probe fitted on {training.examples} images ({training.positives} show it), "
        f"{training.held_out} kept apart to measure it",
        highlight=False,
    )
    if trained.held_out_auc is None:
        out.print("held-out: none (--held-out 0), so nothing says how well it generalises", highlight=False)
    else:
        better = "better" if trained.held_out_auc > (trained.zero_shot_auc or 0.0) else "no better"
        out.print(
            f"on the kept-apart images it ranks a violating image above a non-violating one {trained.held_out_auc:.0%} of the "
            f"time (the prompts: {trained.zero_shot_auc:.0%}): the examples teach {better} than the words",
            highlight=False,
        )
    out.print(
        "thresholds are unchanged: run `moderation policy calibrate` on the proposed file to place them for the probe's scores",
        highlight=False,
    )
    diff = difflib.unified_diff(policy_text.splitlines(), proposed.splitlines(), str(policy_file), str(proposed_path), lineterm="")
    for line in diff:
        shown = line if len(line) <= 120 else line[:117] + "..."  # the weights are one long base64 line
        style = "bold" if line.startswith(("---", "+++")) else {"+": "green", "-": "red", "@": "cyan"}.get(line[:1], "")
        out.print(escape(shown), style=style, highlight=False, soft_wrap=True)
    out.print(f"wrote {proposed_path}", highlight=False)
