"""The `moderation` command: serve, moderate, policy ...

Errors a user can fix are printed as one line, without a traceback, with a
non-zero exit code.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from moderation.config import Device, ExplainerMode, LogFormat, Settings, load_settings, unknown_environment_settings

if TYPE_CHECKING:  # imported lazily at run time: `moderation --help` must not load torch
    from moderation.clip import ClipModelSpec, ClipScorer
    from moderation.offline import CaseOutcome
    from moderation.policy import Policy
    from moderation.policy.golden import CasesFile
    from moderation.policy_calibration import PolicyCalibration
    from moderation.rescore import DecisionFlips

app = typer.Typer(help="Image moderation over gRPC: CLIP zero-shot scoring against YAML policies.", no_args_is_help=True)
policy_app = typer.Typer(help="Validate, test, calibrate and compare policy files.", no_args_is_help=True)
app.add_typer(policy_app, name="policy")

# soft_wrap: long lines stay whole so file:line prefixes can be grepped.
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def _fail(message: str, code: int = 2) -> typer.Exit:
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    return typer.Exit(code)


# The offline policy commands load the model in-process; flags and MODERATION_* env
# resolve as for `serve`, so they score with the model the server would run.
ConfigOption = Annotated[Optional[Path], typer.Option(help="YAML settings file (flags and MODERATION_* env override it)")]
HostOption = Annotated[Optional[str], typer.Option(help="gRPC bind address")]
PortOption = Annotated[Optional[int], typer.Option(help="gRPC port")]
MetricsPortOption = Annotated[Optional[int], typer.Option(help="Prometheus /metrics port, 0 to disable")]
PoliciesOption = Annotated[Optional[Path], typer.Option(help="directory of policy YAML files")]
LogFormatOption = Annotated[Optional[LogFormat], typer.Option(help="json or text")]
ExplainerModelOption = Annotated[Optional[str], typer.Option(help="SmolVLM2 Hugging Face id or local directory (default: as serve)")]
ExplainerWeightsOption = Annotated[Optional[str], typer.Option(help="'pretrained' or 'random' (smoke tests only)")]
ModelOption = Annotated[Optional[str], typer.Option("--model", help="open_clip name, hf-hub:org/repo or local-dir:/path (default: as serve)")]
WeightsOption = Annotated[Optional[str], typer.Option("--weights", help="pretrained tag, checkpoint path, or 'random' (default: as serve)")]
DeviceOption = Annotated[Optional[Device], typer.Option("--device", help="cpu, cuda or auto")]


@app.command()
def serve(
    config: ConfigOption = None,
    host: HostOption = None,
    port: PortOption = None,
    metrics_port: MetricsPortOption = None,
    policies: PoliciesOption = None,
    model: ModelOption = None,
    weights: WeightsOption = None,
    device: DeviceOption = None,
    log_format: LogFormatOption = None,
    explainer: Annotated[Optional[ExplainerMode], typer.Option(help="SmolVLM2 escalation: off, in-process or remote")] = None,
    explainer_model: ExplainerModelOption = None,
    explainer_weights: ExplainerWeightsOption = None,
    explainer_target: Annotated[Optional[str], typer.Option(help="host:port of explain-serve (remote mode)")] = None,
) -> None:
    """Run the gRPC moderation server until SIGTERM."""
    from moderation.server.app import serve as run_server

    settings = _settings_or_fail(
        config,
        host=host,
        port=port,
        metrics_port=metrics_port,
        policies=policies,
        clip_model=model,
        clip_weights=weights,
        device=device,
        log_format=log_format,
        explainer_mode=explainer,
        explainer_model=explainer_model,
        explainer_weights=explainer_weights,
        explainer_target=explainer_target,
    )
    _run_logged(settings, run_server)


@app.command("explain-serve")
def explain_serve(
    config: ConfigOption = None,
    host: HostOption = None,
    port: PortOption = None,
    metrics_port: MetricsPortOption = None,
    policies: PoliciesOption = None,
    explainer_model: ExplainerModelOption = None,
    explainer_weights: ExplainerWeightsOption = None,
    log_format: LogFormatOption = None,
) -> None:
    """Run the SmolVLM2 explainer as its own gRPC service (ExplainerService) until SIGTERM."""
    from moderation.server.explainer_app import serve_explainer

    settings = _settings_or_fail(
        config,
        host=host,
        port=port,
        metrics_port=metrics_port,
        policies=policies,
        explainer_model=explainer_model,
        explainer_weights=explainer_weights,
        log_format=log_format,
    )
    _run_logged(settings, serve_explainer)


def _policy_or_fail(path: Path) -> tuple[Policy, str]:
    """A valid policy and its text, or one line naming the first problem and how many more there are."""
    from moderation.policy import PolicyFileError, load_policy_file

    try:
        return load_policy_file(path)
    except PolicyFileError as error:
        more = len(error.problems) - 1
        raise _fail(f"invalid policy: {error.problems[0]}" + (f" (and {more} more problems)" if more else "")) from None


def _settings_or_fail(config: Path | None = None, **flags: object) -> Settings:
    """Settings from flags (None: not given), environment and config file; one line on error."""
    try:
        return load_settings(config, **flags)
    except (ValidationError, FileNotFoundError) as error:
        raise _fail(f"invalid settings: {error}") from None


def _run_logged(settings, run) -> None:  # noqa: ANN001 - Settings, async server entry
    """Run a server; configuration errors end it with one log line and exit code 2."""
    import asyncio

    from moderation.clip import WeightsUnavailable
    from moderation.escalation.loading import ExplainerWeightsUnavailable
    from moderation.logs import configure_logging
    from moderation.policy import PolicyFileError
    from moderation.server.app import StartupError
    from moderation.server.auth import TokenFileError

    configure_logging(settings.log_level, settings.log_format.value)
    for name in unknown_environment_settings():
        logging.getLogger("moderation").warning("%s is not a setting and is ignored; check its spelling in moderation/config.py", name)
    try:
        asyncio.run(run(settings))
    except (WeightsUnavailable, ExplainerWeightsUnavailable, StartupError, TokenFileError) as error:
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
        value = results[key] if results[key] is not None else "not measured (needs concurrency 1)"
        out.print(f"{key}: {value}  (target {results['targets'][key]})", highlight=False)


@policy_app.command("validate")
def policy_validate(
    paths: Annotated[
        list[Path],
        typer.Argument(help="policy directories or files; a file stands for its whole directory, which the server loads as one"),
    ],
    previous: Annotated[
        Optional[Path], typer.Option(help="a previous copy (file or directory, e.g. from git show): changed policies need a new version")
    ] = None,
    served: Annotated[
        Optional[str], typer.Option(help="HOST:PORT of a running server: check versions, and the model, against what it serves")
    ] = None,
    model_id: Annotated[
        Optional[str], typer.Option("--model-id", help="model the server runs, e.g. ViT-B-32/laion2b_s34b_b79k (default with --served: asked)")
    ] = None,
) -> None:
    """Check policy directories exactly as the server loads them; print every problem with file, line and field."""
    from moderation.policy import PolicyFileError
    from moderation.policy.directory import Baseline, ModelRule, check_policy_dir, directories_to_check, previous_versions

    model = ModelRule(model_id, random_weights=model_id.endswith("/random")) if model_id else None
    baselines = []
    if previous is not None:
        versions, unreadable = previous_versions(previous)
        for problem in unreadable:
            err.print(f"[yellow]![/] not compared, the previous copy does not validate: {escape(str(problem))}", highlight=False)
        baselines.append(Baseline(versions, f"as in {previous}"))
    if served is not None:
        versions, served_model = _served_policies(served)
        baselines.append(Baseline(versions, f"as served at {served}"))
        model = model or served_model
    directories, problems = directories_to_check(paths)
    for directory in directories:
        try:
            checked = check_policy_dir(directory, model=model, baselines=baselines)
        except PolicyFileError as error:
            problems += error.problems
            warnings = error.warnings
        else:
            warnings = checked.warnings
            for p in checked.policies:
                summary = f"{p.path}: policy {p.policy.id}@{p.policy.version}, {len(p.policy.categories)} categories, {p.policy.text_count} texts"
                out.print(f"[green]✓[/] {escape(summary)}", highlight=False)
        for warning in warnings:
            err.print(f"[yellow]![/] {escape(str(warning))}", highlight=False)
    for problem in problems:
        err.print(f"[red]✗[/] {escape(str(problem))}", highlight=False)
    if problems:
        err.print(f"{len(problems)} problem{'s' if len(problems) > 1 else ''}: the server would refuse this", highlight=False)
        raise typer.Exit(1)


def _served_policies(target: str):  # noqa: ANN202 - (versions by id, ModelRule), imported lazily
    """What the server at `target` serves: each policy's version and content hash, and its model."""
    import grpc

    from moderation.policy import PolicyFileError, load_policy_text
    from moderation.policy.directory import ModelRule, PolicyVersion
    from moderation.policy.schema import content_sha256
    from moderation.v1 import moderation_pb2 as pb
    from moderation.v1 import moderation_pb2_grpc as pb_grpc

    versions = {}
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.ModerationServiceStub(channel)
        try:
            listed = stub.ListPolicies(pb.ListPoliciesRequest(), timeout=10)
            for summary in listed.policies:
                sha = summary.content_sha256
                if not sha and summary.mode != "shadow":  # a server from before content_sha256: hash its source
                    try:
                        sha = content_sha256(load_policy_text(stub.GetPolicy(pb.GetPolicyRequest(policy_id=summary.id), timeout=10).source_yaml))
                    except PolicyFileError:
                        sha = ""
                if sha:
                    versions[summary.id] = PolicyVersion(summary.version, sha)
                else:
                    err.print(f"[yellow]![/] {escape(target)} does not say what policy {escape(summary.id)} contains: its version is not checked", highlight=False)
        except grpc.RpcError as error:
            raise _fail(f"cannot ask {target} what it serves: {error.code().name}: {error.details()}") from None
    return versions, (ModelRule(listed.model, listed.random_weights) if listed.model else None)


@policy_app.command("test")
def policy_test(
    files: Annotated[list[Path], typer.Argument(help="policy YAML files; each one's cases are read from tests/NAME.tests.yaml beside it")],
    cases: Annotated[Optional[Path], typer.Option(help="cases file to use instead (only with one policy file)")] = None,
    model: ModelOption = None,
    weights: WeightsOption = None,
    device: DeviceOption = None,
    check_only: Annotated[
        bool,
        typer.Option(
            "--check-only",
            help="check cases, images and category ids and score every image, without comparing actions; on by itself with random weights",
        ),
    ] = False,
) -> None:
    """Score each policy's golden cases in-process and compare expected with actual decisions."""
    from moderation.offline import check_golden_cases
    from moderation.policy import PolicyFileError, load_policy_file
    from moderation.policy.golden import cases_path_for, load_cases_file, problems_against_policy
    from moderation.policy.schema import normalise_model_id

    if cases is not None and len(files) != 1:
        raise _fail("--cases names the cases of one policy; give exactly one policy file with it")
    suites = []
    failed = 0
    for path in files:
        try:
            policy, _ = load_policy_file(path)
            cases_file = load_cases_file(cases or cases_path_for(path))
            problems = problems_against_policy(cases_file, policy)
            if problems:
                raise PolicyFileError(problems)
        except PolicyFileError as error:
            failed += 1
            for problem in error.problems:
                err.print(f"[red]✗[/] {escape(str(problem))}", highlight=False)
            continue
        suites.append((path, policy, cases_file))
    if suites:
        scorer = _load_offline_scorer(model, weights, device)
        if scorer.random_weights:
            check_only = True
        if check_only:
            why = f"model {scorer.model_id} has random weights" if scorer.random_weights else "--check-only"
            out.print(
                f"[bold yellow]CHECK-ONLY[/] ({escape(why)}): cases, images and category ids are checked and every image is "
                "scored, but expected actions are [bold]not compared[/].",
                highlight=False,
            )
    for path, policy, cases_file in suites:
        if not check_only and policy.model and normalise_model_id(policy.model) != normalise_model_id(scorer.model_id):
            failed += 1
            err.print(
                f"[red]✗[/] {escape(str(path))}: thresholds were calibrated for model {escape(policy.model)!r} but this run uses "
                f"{escape(scorer.model_id)!r}; pass --model/--weights for it, or --check-only",
                highlight=False,
            )
            continue
        outcomes = check_golden_cases(scorer, policy, cases_file, compare=not check_only)
        _print_case_outcomes(path, policy, cases_file, outcomes, check_only)
        failed += any(not outcome.passed for outcome in outcomes)
    if failed:
        err.print(f"{failed} of {len(files)} policies failed their tests", highlight=False)
        raise typer.Exit(1)


def _print_case_outcomes(policy_path: Path, policy: Policy, cases_file: CasesFile, outcomes: list[CaseOutcome], check_only: bool) -> None:
    from moderation.decision import Band

    title = f"{policy_path}: {policy.id}@{policy.version}, cases from {cases_file.path}"
    table = Table(title=escape(title), title_justify="left")
    for column in ("image", "expected", "actual", "categories at or above review (score)", "result"):
        table.add_column(column, overflow="fold")
    for outcome in outcomes:
        case, decision = outcome.case, outcome.decision
        expected = case.expect.value + (f" flagged={sorted(case.flagged)}" if case.flagged is not None else "")
        expected += "".join(f" {cid}={band.value}" for cid, band in case.bands.items())
        if decision is None:
            actual, categories = "-", "-"
        else:
            actual = decision.action.value
            flagged = [c for c in decision.categories if c.band is not Band.BELOW]
            top = max(decision.categories, key=lambda c: c.score)
            categories = ", ".join(f"{c.category_id} {c.band.value} ({c.score:.3f})" for c in flagged) or f"none (top: {top.category_id} {top.score:.3f})"
        if not outcome.passed:
            result = "[red]✗ fail[/]"
        else:
            result = "[yellow]checked[/]" if check_only else "[green]✓ pass[/]"
        table.add_row(escape(case.image), escape(expected), actual, escape(categories), result)
    out.print(table)
    for outcome in outcomes:
        for problem in outcome.problems:
            out.print(f"[red]✗[/] {escape(str(cases_file.problem(cases_file.case_loc(outcome.case), problem)))}", highlight=False)
    passed = sum(outcome.passed for outcome in outcomes)
    verdict = "checked, actions not compared" if check_only else "passed"
    out.print(f"{policy.id}: {passed} of {len(outcomes)} cases {verdict}", highlight=False)


@policy_app.command("calibrate")
def policy_calibrate(
    policy_file: Annotated[Path, typer.Argument(help="the policy YAML file to calibrate", dir_okay=False)],
    labels: Annotated[Path, typer.Option(help="labelled images: a folder LABELS/<category id or benign>/<image>, or a CSV with path,label")],
    target_precision: Annotated[float, typer.Option(help="block threshold: lowest score threshold with at least this precision")] = 0.95,
    target_recall: Annotated[
        Optional[float], typer.Option(help="review threshold: highest score threshold with at least this recall (0.90 when no --max-review-rate)")
    ] = None,
    max_review_rate: Annotated[
        Optional[float], typer.Option(help="review budget: share of labelled images one category may send to REVIEW; raises the review threshold")
    ] = None,
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="folder for the proposed policy, report.html and scores.csv (default calibration-POLICY_ID)")] = None,
    version: Annotated[Optional[str], typer.Option(help="version of the proposed policy (default: the next one, e.g. today's date .1)")] = None,
    model: ModelOption = None,
    weights: WeightsOption = None,
    device: DeviceOption = None,
    open_report: Annotated[bool, typer.Option("--open", help="open the report in a web browser")] = False,
) -> None:
    """Score labelled images, propose review/block thresholds per category, write the next policy version and a report."""
    import difflib
    from datetime import date

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from moderation.calibration import CalibrationTargets
    from moderation.calibration_report import render_report
    from moderation.labels import LabelsError, read_labels
    from moderation.offline import score_image_files
    from moderation.policy import PolicyFileError
    from moderation.policy.rewrite import RewriteError
    from moderation.policy_calibration import calibrate_policy

    policy, policy_text = _policy_or_fail(policy_file)
    try:
        targets = CalibrationTargets(precision=target_precision, recall=target_recall, max_review_rate=max_review_rate)
        images = read_labels(labels, [c.id for c in policy.categories])
    except (ValueError, LabelsError) as error:
        raise _fail(str(error)) from None
    scorer = _load_offline_scorer(model, weights, device)
    if scorer.random_weights:
        err.print(f"[bold yellow]warning:[/] model {escape(scorer.model_id)} has random weights: the proposed thresholds mean nothing", highlight=False)

    index = scorer.index_policy(policy)
    columns = (TextColumn("scoring"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err) as progress:
        task = progress.add_task("scoring", total=len(images))
        scored = score_image_files(scorer, index, [image.path for image in images], on_scored=lambda n: progress.advance(task, n))
    unreadable = [f"{result.path}: {result.error}" for result in scored if result.scores is None]
    for line in unreadable:
        err.print(f"[yellow]skipped[/] {escape(line)}", highlight=False)
    kept = [(image, result.scores) for image, result in zip(images, scored, strict=True) if result.scores is not None]
    if not kept:
        raise _fail(f"none of the {len(images)} labelled images could be scored")

    try:
        result = calibrate_policy(
            policy,
            policy_text,
            [image.labels for image, _ in kept],
            [scores for _, scores in kept],
            targets,
            scorer.model_id,
            date.today(),
            version=version,
            source=str(policy_file),
        )
    except (RewriteError, PolicyFileError) as error:
        raise _fail(str(error).splitlines()[0]) from None

    out_dir = out_dir or Path(f"calibration-{policy.id}")
    out_dir.mkdir(parents=True, exist_ok=True)
    proposed_path = out_dir / policy_file.name
    proposed_path.write_text(result.proposed_text, encoding="utf-8")
    _write_scores_csv(out_dir / "scores.csv", [image.path for image, _ in kept], result)
    report_path = out_dir / "report.html"
    report_path.write_text(render_report(result, str(labels), scorer.random_weights, unreadable, str(proposed_path)), encoding="utf-8")

    _print_calibration(result)
    for line in difflib.unified_diff(policy_text.splitlines(), result.proposed_text.splitlines(), str(policy_file), str(proposed_path), lineterm=""):
        style = "bold" if line.startswith(("---", "+++")) else {"+": "green", "-": "red", "@": "cyan"}.get(line[:1], "")
        out.print(escape(line), style=style, highlight=False)
    out.print(f"wrote {proposed_path}, {report_path} and {out_dir / 'scores.csv'}", highlight=False)
    if open_report:
        import webbrowser

        webbrowser.open(report_path.resolve().as_uri())


def _print_calibration(result: PolicyCalibration) -> None:
    table = Table(
        title=escape(f"{result.policy.id}: {result.policy.version} -> {result.proposed.version} ({len(result.labels)} labelled images, model {result.model_id})"),
        title_justify="left",
    )
    for column in ("category", "positives", "review", "block", "precision at block", "recall at review", "review load"):
        table.add_column(column, overflow="fold", justify="left" if column == "category" else "right")
    for c in result.categories:
        table.add_row(
            c.category_id,
            str(c.positives),
            f"{c.current.review:g} -> {c.proposed.review:g}",
            f"{c.current.block:g} -> {c.proposed.block:g}",
            "-" if c.proposed.precision_at_block is None else f"{c.proposed.precision_at_block:.3f}",
            "-" if c.proposed.recall_at_review is None else f"{c.proposed.recall_at_review:.3f}",
            f"{c.current.review_load:.1%} -> {c.proposed.review_load:.1%}",
        )
    out.print(table)
    for c in result.categories:
        for note in c.notes:
            out.print(f"[yellow]![/] {escape(f'{c.category_id}: {note}')}", highlight=False)
    shares = ", ".join(f"{a.value} {result.current_actions[a]:.1%} -> {result.proposed_actions[a]:.1%}" for a in result.current_actions)
    out.print(f"image actions on the labelled set: {shares}", highlight=False)


def _write_scores_csv(path: Path, images: list[Path], result: PolicyCalibration) -> None:
    """Every scored image with its labels and category scores, to audit or re-plot the calibration."""
    import csv

    category_ids = list(result.scores)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "labels", *category_ids])
        for row, (image, labels) in enumerate(zip(images, result.labels, strict=True)):
            writer.writerow([str(image), " ".join(sorted(labels)), *(f"{result.scores[cid][row]:.6f}" for cid in category_ids)])


@policy_app.command("diff")
def policy_diff(
    old_file: Annotated[Path, typer.Argument(help="the policy version that served the stored decisions")],
    new_file: Annotated[Path, typer.Argument(help="the proposed policy version")],
    store: Annotated[Optional[Path], typer.Option(help="embedding store (SQLite) the server writes; default MODERATION_EMBEDDING_STORE")] = None,
    since: Annotated[str, typer.Option(help="re-score decisions newer than this age: 90m, 12h, 7d, 2w")] = "7d",
    until: Annotated[Optional[str], typer.Option(help="and older than this age (default: up to now)")] = None,
    stored_policy: Annotated[Optional[str], typer.Option(help="re-score decisions made under this policy id (default: OLD's id)")] = None,
    examples: Annotated[int, typer.Option(min=0, help="example request ids shown per kind of change")] = 3,
    model: ModelOption = None,
    weights: WeightsOption = None,
    device: DeviceOption = None,
) -> None:
    """Re-score stored traffic under OLD and NEW (text embeddings only) and report which decisions flip."""
    from datetime import datetime, timezone

    from moderation.rescore import CannotRescore, check_stored_models, rescore_stored_decisions
    from moderation.store import StoreError

    old, new = (_policy_or_fail(path)[0] for path in (old_file, new_file))
    settings = _offline_settings(model, weights, device)
    store = store or settings.embedding_store
    if store is None:
        raise _fail("no embedding store: pass --store PATH or set MODERATION_EMBEDDING_STORE")
    now = datetime.now(timezone.utc)
    window_start = now - _parse_age(since, "--since")
    window_end = now - _parse_age(until, "--until") if until else None
    policy_id = stored_policy or old.id
    spec = _model_spec(settings)
    try:
        # Checked before the model loads: a wrong --model is refused in a second, not after a minute.
        check_stored_models(store, spec.model_id, window_start, window_end, policy_id)
    except (CannotRescore, StoreError) as error:
        raise _fail(str(error)) from None
    scorer = _load_scorer(spec)
    if scorer.random_weights:
        err.print(
            f"[bold yellow]warning:[/] model {escape(scorer.model_id)} has random weights: its text embeddings differ from "
            "those of the model that stored the image embeddings, so these flips mean nothing",
            highlight=False,
        )
    try:
        flips = rescore_stored_decisions(store, scorer, old, new, window_start, window_end, policy_id, examples)
    except (CannotRescore, StoreError) as error:
        raise _fail(str(error)) from None
    window = f"the last {since}" + (f" up to {until} ago" if until else "")
    _print_flips(flips, old, new, f"{policy_id!r} decisions of {window} in {store}")


def _print_flips(flips: DecisionFlips, old: Policy, new: Policy, what: str) -> None:
    share = flips.changed / flips.decisions if flips.decisions else 0.0
    out.print(
        f"re-scored {flips.decisions} {escape(what)} under {old.id}@{escape(old.version)} and {new.id}@{escape(new.version)}: "
        f"[bold]{flips.changed} change action ({share:.1%})[/]",
        highlight=False,
    )
    if not flips.changed and not flips.category_changes:
        out.print("no decision changes", highlight=False)
    if flips.action_changes:
        table = Table(title="image action changes", title_justify="left")
        for column in ("from", "to", "decisions", "share", "example request ids"):
            table.add_column(column, overflow="fold", justify="right" if column in ("decisions", "share") else "left")
        for (before, after), count in flips.action_changes.most_common():
            table.add_row(before.value, after.value, str(count), f"{count / flips.decisions:.1%}", escape(", ".join(flips.action_examples[(before, after)])))
        out.print(table)
    if flips.category_changes:
        table = Table(title="category action changes", title_justify="left")
        for column in ("category", "from", "to", "decisions", "example request ids"):
            table.add_column(column, overflow="fold", justify="right" if column == "decisions" else "left")
        for category_id, changes in flips.category_changes.items():
            for (before, after), count in changes.most_common():
                table.add_row(category_id, before.value, after.value, str(count), escape(", ".join(flips.category_examples[(category_id, (before, after))])))
        out.print(table)
    other_versions = {v: n for v, n in flips.stored_versions.items() if v != old.version}
    if other_versions:
        listed = ", ".join(f"{v} ({n})" for v, n in sorted(other_versions.items()))
        out.print(f"[yellow]![/] {sum(other_versions.values())} decisions were made under other versions than {escape(old.version)}: {escape(listed)}", highlight=False)
    if flips.not_reproduced:
        out.print(
            f"[yellow]![/] {flips.not_reproduced} decisions made under {escape(old.version)} get another action from it now "
            f"(e.g. {escape(', '.join(flips.not_reproduced_examples))}): OLD may differ from the file that served them",
            highlight=False,
        )


def _parse_age(text: str, option: str) -> timedelta:
    import re

    # At most five digits: 99999 weeks still subtracts from now without overflowing.
    age = re.fullmatch(r"(\d{1,5})([smhdw])", text.strip())
    if age is None or int(age.group(1)) == 0:
        raise _fail(f"{option} {text!r} is not an age such as 90m, 12h, 7d or 2w")
    seconds_per_unit = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
    return timedelta(seconds=int(age.group(1)) * seconds_per_unit[age.group(2)])


def _offline_settings(model: str | None, weights: str | None, device: Device | None) -> Settings:
    return _settings_or_fail(clip_model=model, clip_weights=weights, device=device)


def _model_spec(settings: Settings) -> ClipModelSpec:
    """The model the server would load with these settings."""
    from moderation.clip import ClipModelSpec
    from moderation.server.app import StartupError, resolve_device

    try:
        device = resolve_device(settings.device)
    except StartupError as error:
        raise _fail(str(error)) from None
    return ClipModelSpec(
        model=settings.clip_model,
        weights=settings.clip_weights,
        cache_dir=settings.weights_cache,
        device=device,
        allow_downloads=settings.allow_downloads,
    )


def _load_scorer(spec: ClipModelSpec) -> ClipScorer:
    import torch

    from moderation.clip import ClipScorer, WeightsUnavailable, load_clip

    if spec.random:
        # Meaningless weights, but the same ones on every run: CI output is reproducible.
        torch.manual_seed(0)
    try:
        return ClipScorer(load_clip(spec))
    except WeightsUnavailable as error:
        raise _fail(str(error)) from None


def _load_offline_scorer(model: str | None, weights: str | None, device: Device | None) -> ClipScorer:
    """The CLIP scorer the server would build from these flags and the environment, in-process."""
    return _load_scorer(_model_spec(_offline_settings(model, weights, device)))


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
    """Run every model tier on one image, in-process, and print their outputs side by side per category."""
    from moderation.decision import clip_leans_violating, decide
    from moderation.imaging import DecodeLimits, ImageRejected, decode_image
    from moderation.server.app import load_explainer_for, resolve_device

    loaded_policy, _ = _policy_or_fail(policy)
    settings = _offline_settings(model, weights, device)
    scorer = _load_scorer(_model_spec(settings))
    try:
        frame = decode_image(image.read_bytes(), DecodeLimits(draft_size=scorer.clip.image_size))
    except ImageRejected as error:
        raise _fail(f"{image}: {error}") from None
    scores = scorer.score(scorer.embed_images(scorer.clip.preprocess(frame).unsqueeze(0)), scorer.index_policy(loaded_policy))[0]
    decision = decide(scores, loaded_policy)

    verdicts = {}
    explainer_id = "off"
    if not no_explainer:
        explainer_settings = _settings_or_fail(
            explainer_model=explainer_model, explainer_weights=explainer_weights, device=settings.device
        )
        explainer = load_explainer_for(explainer_settings, resolve_device(settings.device))
        explainer_id = explainer.info.model_id
        # One verdict per category, so every row has the explainer's view of it.
        for category in loaded_policy.categories:
            result = explainer.explain(frame, loaded_policy, [category.id], loaded_policy.escalation.instruction)
            verdicts[category.id] = result.verdict

    table = Table(
        title=f"{image}: CLIP {escape(scorer.model_id)} -> {decision.action.value}; explainer {escape(explainer_id)}",
        title_justify="left",
    )
    for column in ("category", "clause", "CLIP score", "band", "CLIP leans", "explainer", "confidence", "agree", "rationale"):
        table.add_column(column)
    for c in decision.categories:
        leans = "violates" if clip_leans_violating(c) else "ok"
        verdict = verdicts.get(c.category_id)
        said = ("violates" if verdict.violates else "ok") if verdict else "-"
        agree = ("yes" if (verdict.violates == (leans == "violates")) else "no") if verdict else "-"
        table.add_row(
            c.category_id, c.clause_id, f"{c.score:.3f}", c.band.value, leans, said,
            f"{verdict.confidence:.2f}" if verdict else "-", agree, escape(verdict.rationale) if verdict else "",
        )  # fmt: skip
    out.print(table)
    if scorer.random_weights or explainer_id.endswith("/random"):
        out.print("[bold yellow]random weights: these outputs mean nothing[/]")


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
