"""`moderation bench`: the CLIP tier's benchmark harness (moderation/bench/clip.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from moderation.cli.app import app
from moderation.cli.common import err
from moderation.cli.render import print_bench


@app.command()
def bench(
    device: Annotated[str, typer.Option(help="cpu or cuda")] = "cpu",
    model: Annotated[str, typer.Option(help="open_clip architecture (random weights)")] = "ViT-B-32",
    concurrency: Annotated[str, typer.Option(help="comma-separated client counts (default: 1,4,16 on cpu, 1,16,64,256 on cuda)")] = "",
    seconds: Annotated[float, typer.Option(help="load duration per concurrency level")] = 20.0,
    soak_seconds: Annotated[float, typer.Option(help="extra soak at the top concurrency, sampling memory; 600 for the 10-minute soak")] = 0.0,
    policies: Annotated[Path, typer.Option(help="policy directory the server loads")] = Path("policies"),
    results_dir: Annotated[Path, typer.Option("--out", help="where the JSON and PNG go")] = Path("bench/results"),
    client_processes: Annotated[int, typer.Option(help="load-generator processes (default: 1 on cpu, 4 on cuda)")] = 0,
    host_seconds: Annotated[float, typer.Option(help="duration of the host decode + preprocess ceiling")] = 10.0,
    backend: Annotated[str, typer.Option(help="CLIP backend the server runs (default: what clip_backend auto picks for the device)")] = "",
) -> None:
    """Benchmark the real server over gRPC against the model's own ceiling (random weights)."""
    from moderation.bench.clip import run_clip_bench

    levels = tuple(int(c) for c in concurrency.split(",")) if concurrency else None
    results = run_clip_bench(
        model, device, levels, seconds, soak_seconds, policies, results_dir, progress=lambda m: err.print(escape(m)),
        client_processes=client_processes or None, host_seconds=host_seconds, backend=backend or None,
    )  # fmt: skip
    print_bench(results, model, device)
