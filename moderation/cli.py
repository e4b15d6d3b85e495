"""The `moderation` command: serve, moderate, policy ...

Errors a user can fix are printed as one line, without a traceback, with a
non-zero exit code.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from moderation.config import Device, LogFormat, load_settings

app = typer.Typer(help="Image moderation over gRPC: CLIP zero-shot scoring against YAML policies.", no_args_is_help=True)
policy_app = typer.Typer(help="Validate and inspect policy files.", no_args_is_help=True)
app.add_typer(policy_app, name="policy")

# soft_wrap: long lines stay whole so file:line prefixes can be grepped.
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def _fail(message: str, code: int = 2) -> typer.Exit:
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    return typer.Exit(code)


@app.command()
def serve(
    config: Annotated[Optional[Path], typer.Option(help="YAML settings file (flags and MODERATION_* env override it)")] = None,
    host: Annotated[Optional[str], typer.Option(help="gRPC bind address")] = None,
    port: Annotated[Optional[int], typer.Option(help="gRPC port")] = None,
    metrics_port: Annotated[Optional[int], typer.Option(help="Prometheus /metrics port, 0 to disable")] = None,
    policies: Annotated[Optional[Path], typer.Option(help="directory of policy YAML files")] = None,
    model: Annotated[Optional[str], typer.Option(help="open_clip name, hf-hub:org/repo or local-dir:/path")] = None,
    weights: Annotated[Optional[str], typer.Option(help="pretrained tag, checkpoint path, or 'random' (smoke tests only)")] = None,
    device: Annotated[Optional[Device], typer.Option(help="cpu, cuda or auto")] = None,
    log_format: Annotated[Optional[LogFormat], typer.Option(help="json or text")] = None,
) -> None:
    """Run the gRPC moderation server until SIGTERM."""
    import asyncio

    from moderation.clip import WeightsUnavailable
    from moderation.logs import configure_logging
    from moderation.policy import PolicyFileError
    from moderation.server.app import StartupError, serve as run_server
    from moderation.server.auth import TokenFileError

    try:
        settings = load_settings(
            config,
            host=host,
            port=port,
            metrics_port=metrics_port,
            policies=policies,
            clip_model=model,
            clip_weights=weights,
            device=device,
            log_format=log_format,
        )
    except (ValidationError, FileNotFoundError) as error:
        raise _fail(f"invalid settings: {error}") from None
    configure_logging(settings.log_level, settings.log_format.value)
    try:
        asyncio.run(run_server(settings))
    except (WeightsUnavailable, StartupError, TokenFileError) as error:
        logging.getLogger("moderation").error("%s", error)
        raise typer.Exit(2) from None
    except PolicyFileError as error:
        for problem in error.problems:
            logging.getLogger("moderation").error("invalid policy: %s", problem)
        raise typer.Exit(2) from None


@app.command()
def moderate(
    images: Annotated[list[Path], typer.Argument(help="image files to moderate", exists=True, dir_okay=False)],
    policy: Annotated[str, typer.Option(help="policy id; empty for the server's default")] = "",
    target: Annotated[str, typer.Option(help="server address HOST:PORT")] = "localhost:50051",
    as_json: Annotated[bool, typer.Option("--json", help="print the responses as JSON")] = False,
    timeout: Annotated[float, typer.Option(help="deadline per call, seconds")] = 30.0,
) -> None:
    """Send images to a running server and print its decisions."""
    import grpc
    from google.protobuf.json_format import MessageToDict

    from moderation.v1 import moderation_pb2 as pb
    from moderation.v1 import moderation_pb2_grpc as pb_grpc

    failures = 0
    documents = []
    with grpc.insecure_channel(target, options=[("grpc.max_send_message_length", 256 * 1024 * 1024)]) as channel:
        stub = pb_grpc.ModerationServiceStub(channel)
        for path in images:
            try:
                response = stub.Moderate(pb.ModerateRequest(image=path.read_bytes(), policy_id=policy), timeout=timeout)
            except grpc.RpcError as error:
                failures += 1
                err.print(escape(f"{path}: {error.code().name}: {error.details()}"), highlight=False)
                continue
            if as_json:
                documents.append({"image": str(path), **MessageToDict(response, preserving_proto_field_name=True)})
            else:
                _print_response(path, response)
    if as_json:
        print(json.dumps(documents, indent=2))
    if failures:
        raise typer.Exit(1)


def _print_response(path: Path, response) -> None:  # noqa: ANN001 - generated message type
    from moderation.v1 import moderation_pb2 as pb

    action = pb.Action.Name(response.action).removeprefix("ACTION_")
    colour = {"ALLOW": "green", "REVIEW": "yellow", "BLOCK": "red"}.get(action, "white")
    table = Table(
        title=f"{path}: [bold {colour}]{action}[/] under {response.policy_id}@{response.policy_version} ({response.model})",
        title_justify="left",
    )
    for column in ("category", "score", "review at", "block at", "band", "clause"):
        table.add_column(column, justify="right" if column in ("score", "review at", "block at") else "left")
    for c in response.categories:
        table.add_row(c.id, f"{c.score:.3f}", f"{c.review_threshold:.2f}", f"{c.block_threshold:.2f}", pb.Band.Name(c.band).removeprefix("BAND_"), c.clause_id)
    out.print(table)
    for reason in response.reasons:
        out.print(f"  {escape(reason)}", highlight=False)


@app.command()
def bench(
    device: Annotated[str, typer.Option(help="cpu or cuda")] = "cpu",
    model: Annotated[str, typer.Option(help="open_clip architecture (random weights)")] = "ViT-B-32",
    concurrency: Annotated[str, typer.Option(help="comma-separated client counts")] = "1,4,16",
    seconds: Annotated[float, typer.Option(help="load duration per concurrency level")] = 20.0,
    soak_seconds: Annotated[float, typer.Option(help="extra soak at the top concurrency, sampling memory; 600 for the 10-minute soak")] = 0.0,
    policies: Annotated[Path, typer.Option(help="policy directory the server loads")] = Path("policies"),
    results_dir: Annotated[Path, typer.Option("--out", help="where the JSON and PNG go")] = Path("bench/results"),
) -> None:
    """Benchmark the real server over gRPC against the model's own ceiling (random weights)."""
    from moderation.bench.clip import run_clip_bench

    levels = tuple(int(c) for c in concurrency.split(","))
    results = run_clip_bench(model, device, levels, seconds, soak_seconds, policies, results_dir, progress=lambda m: err.print(escape(m)))
    table = Table(title=f"{model} on {device}: server over gRPC", title_justify="left")
    for column in ("clients", "images/s", "p50 ms", "p95 ms", "p99 ms", "errors"):
        table.add_column(column, justify="right")
    for row in results["load"]:
        table.add_row(str(row["concurrency"]), f"{row['throughput_per_s']:.2f}", f"{row['p50_ms']:.0f}", f"{row['p95_ms']:.0f}", f"{row['p99_ms']:.0f}", str(sum(row["errors"].values())))
    out.print(table)
    for key in ("throughput_vs_forward", "speedup_vs_naive", "p50_latency_vs_single_forward", "peak_rss_mb"):
        out.print(f"{key}: {results[key]}  (target {results['targets'][key]})", highlight=False)


@policy_app.command("validate")
def policy_validate(files: Annotated[list[Path], typer.Argument(help="policy YAML files")]) -> None:
    """Check policy files; print every problem with file, line and field."""
    from moderation.policy import PolicyFileError, load_policy_file

    bad = 0
    for path in files:
        try:
            policy, _ = load_policy_file(path)
        except PolicyFileError as error:
            bad += 1
            for problem in error.problems:
                err.print(f"[red]✗[/] {escape(str(problem))}", highlight=False)
            continue
        out.print(f"[green]✓[/] {path}: policy {policy.id}@{policy.version}, {len(policy.categories)} categories", highlight=False)
    if bad:
        err.print(f"{bad} of {len(files)} policy files are invalid", highlight=False)
        raise typer.Exit(1)


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
