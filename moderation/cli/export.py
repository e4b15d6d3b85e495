"""`moderation export OUT_DIR`: an exported CLIP model folder that `serve --model-dir` runs without torch."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from moderation.cli.app import app
from moderation.cli.common import (
    ConfigOption,
    JsonOption,
    ModelOption,
    PoliciesOption,
    WeightsOption,
    err,
    fail,
    out,
    print_json,
    require_torch_extra,
    settings_or_fail,
)
from moderation.signals.clip.model_folder import DEFAULT_INT8_TOLERANCE


@app.command("export")
def export(
    out_dir: Annotated[Path, typer.Argument(help="the folder to write (must not exist or be empty, unless --force)")],
    config: ConfigOption = None,
    model: ModelOption = None,
    weights: WeightsOption = None,
    policies: PoliciesOption = None,
    int8_tolerance: Annotated[
        float,
        typer.Option(
            min=0.0,
            help="int8 guard: the largest change of any category score, int8 against fp32, on the probe set (the policies' "
            "prompts and generated images, at the model's logit scale); beyond it the folder keeps fp32 only",
        ),
    ] = DEFAULT_INT8_TOLERANCE,
    int8: Annotated[bool, typer.Option("--int8/--no-int8", help="try int8 image towers (kept only where the guard accepts one)")] = True,
    static_int8: Annotated[
        bool,
        typer.Option(
            "--static-int8/--no-static-int8",
            help="try static int8 first (activation scales fixed from calibration images: runs batched); "
            "dynamic int8 (one image per run) is kept where the guard refuses static",
        ),
    ] = True,
    force: Annotated[bool, typer.Option(help="replace OUT_DIR if it exists")] = False,
    offline: Annotated[Optional[bool], typer.Option("--offline", help="use cached weights only (no downloads)")] = None,
    json_output: JsonOption = False,
) -> None:
    """Export the CLIP model to a self-contained folder (ONNX towers, tokenizer, preprocessing, manifest).

    Run once per model and weights: in an image build stage, an init container or by hand. `moderation serve
    --model-dir OUT_DIR` then serves it with onnxruntime, numpy and PIL only. Needs torch and open_clip.
    """
    require_torch_extra("export")
    from moderation.ops.logs import configure_logging
    from moderation.runtime import clip_spec
    from moderation.signals.clip import WeightsUnavailable
    from moderation.signals.clip.backends.onnx_export import ExportFailed

    settings = settings_or_fail(
        config, clip_model=model, clip_weights=weights, policies=policies, allow_downloads=False if offline else None
    )
    configure_logging(settings.log_level, "text", native_stderr=True)
    spec = clip_spec(settings.model_copy(update={"clip_model_dir": None, "clip_backend": "torch"}), device="cpu")
    from moderation.signals.clip.backends.folder_export import export_model_folder

    try:
        report = export_model_folder(
            spec, out_dir, settings.policies, int8_tolerance=int8_tolerance, int8=int8, force=force, static_int8=static_int8
        )
    except (ExportFailed, WeightsUnavailable) as error:
        raise fail(str(error)) from None
    manifest = report.manifest
    if json_output:
        print_json(manifest)
        return
    accuracy = manifest["accuracy"]
    out.print(f"exported {manifest['model_id']} to {report.path} in {manifest['export_seconds']} s")
    out.print(f"  image tower served: {manifest['image_variant']} ({manifest['int8']['reason']})")
    out.print(
        f"  fp32 vs open_clip: scores within {accuracy['fp32_max_score_diff_vs_torch']:.2g}, "
        f"pixels within {accuracy['preprocess_max_abs_diff']:.2g}, tokens identical on {accuracy['probe']['texts']} texts"
    )
    if manifest["random_weights"]:
        err.print("[bold yellow]warning:[/] RANDOM WEIGHTS: this folder's scores and decisions mean nothing (smoke tests and benchmarks only)")
