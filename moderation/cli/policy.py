"""`moderation policy validate|test|calibrate|diff`: what trust-and-safety staff run, without Python."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from moderation.cli.app import policy_app
from moderation.cli.connect import (
    ClientSecurity,
    TlsCaOption,
    TlsClientCertOption,
    TlsClientKeyOption,
    TlsServerNameOption,
    TokenFileOption,
)
from moderation.cli.common import (
    ConfigOption,
    escape,
    DeviceOption,
    JsonOption,
    ModelOption,
    WeightsOption,
    err,
    fail,
    load_offline_core,
    load_scorer_or_fail,
    model_spec,
    offline_settings,
    out,
    policy_or_fail,
    print_json,
)
from moderation.cli.render import print_calibration, print_case_outcomes, print_flips, print_store_freshness

if TYPE_CHECKING:
    from moderation.offline.policy_calibration import PolicyCalibration


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
    tls_ca: TlsCaOption = None,
    tls_client_cert: TlsClientCertOption = None,
    tls_client_key: TlsClientKeyOption = None,
    tls_server_name: TlsServerNameOption = None,
    token_file: TokenFileOption = None,
) -> None:
    """Check policy directories exactly as the server loads them; print every problem with file, line and field."""
    from moderation.policy import PolicyFileError
    from moderation.policy.directory import Baseline, ModelRule, check_policy_dir, directories_to_check, policy_files, previous_versions
    from moderation.policy.kustomization import configmap_problems

    model = ModelRule(model_id, random_weights=model_id.endswith("/random")) if model_id else None
    baselines = []
    if previous is not None:
        versions, unreadable = previous_versions(previous)
        for problem in unreadable:
            err.print(f"[yellow]![/] not compared, the previous copy does not validate: {escape(str(problem))}", highlight=False)
        baselines.append(Baseline(versions, f"as in {previous}"))
    if served is not None:
        security = ClientSecurity(tls_ca, tls_client_cert, tls_client_key, tls_server_name, token_file)
        versions, served_model = _served_policies(served, security)
        baselines.append(Baseline(versions, f"as served at {served}"))
        model = model or served_model
    directories, problems = directories_to_check(paths)
    for directory in directories:
        try:
            problems += configmap_problems(directory, [path.name for path in policy_files(directory)])
        except PolicyFileError:
            pass  # the directory's own problems are reported by check_policy_dir below
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


def _served_policies(target: str, security: ClientSecurity):  # noqa: ANN202 - (versions by id, ModelRule), imported lazily
    """What the server at `target` serves: each policy's version and content hash, and its model."""
    import grpc

    from moderation.policy import PolicyFileError, load_policy_text
    from moderation.policy.directory import ModelRule, PolicyVersion
    from moderation.policy.schema import content_sha256
    from moderation.v1 import moderation_pb2 as pb
    from moderation.v1 import moderation_pb2_grpc as pb_grpc

    versions = {}
    metadata = security.metadata()
    with security.channel(target) as channel:
        stub = pb_grpc.ModerationServiceStub(channel)
        try:
            listed = stub.ListPolicies(pb.ListPoliciesRequest(), timeout=10, metadata=metadata)
            for summary in listed.policies:
                sha = summary.content_sha256
                if not sha and summary.mode != "shadow":  # a server from before content_sha256: hash its source
                    try:
                        sha = content_sha256(load_policy_text(stub.GetPolicy(pb.GetPolicyRequest(policy_id=summary.id), timeout=10, metadata=metadata).source_yaml))
                    except PolicyFileError:
                        sha = ""
                if sha:
                    versions[summary.id] = PolicyVersion(summary.version, sha)
                else:
                    err.print(f"[yellow]![/] {escape(target)} does not say what policy {escape(summary.id)} contains: its version is not checked", highlight=False)
        except grpc.RpcError as error:
            raise fail(f"cannot ask {target} what it serves: {error.code().name}: {error.details()}") from None
    return versions, (ModelRule(listed.model, listed.random_weights) if listed.model else None)


@policy_app.command("test")
def policy_test(
    files: Annotated[list[Path], typer.Argument(help="policy YAML files; each one's cases are read from tests/NAME.tests.yaml beside it")],
    cases: Annotated[Optional[Path], typer.Option(help="cases file to use instead (only with one policy file)")] = None,
    model: ModelOption = None,
    weights: WeightsOption = None,
    device: DeviceOption = None,
    config: ConfigOption = None,
    check_only: Annotated[
        bool,
        typer.Option(
            "--check-only",
            help="check cases, images and category ids and score every image, without comparing actions; on by itself with random weights",
        ),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Score each policy's golden cases in-process and compare expected with actual decisions.

    Images are judged as `serve` would judge them with the same settings (--config, MODERATION_* env).
    """
    from moderation.offline.scoring import check_golden_cases, offline_policy
    from moderation.policy import PolicyFileError, load_policy_file
    from moderation.policy.loader import PolicyProblem
    from moderation.runtime import ConfigurationError, clip_spec
    from moderation.policy.golden import cases_path_for, load_cases_file, problems_against_policy
    from moderation.policy.schema import normalise_model_id

    if cases is not None and len(files) != 1:
        raise fail("--cases names the cases of one policy; give exactly one policy file with it")
    # Everything that can be checked without the model is checked first, for every file, and
    # reported at once: policy YAML and schema, cases YAML and schema, cases against their policy,
    # the policy's `model:` against this run's. A model loads (tens of seconds) only after, and
    # only for files worth scoring (issue 22: 3 mistakes took 3 runs).
    settings = offline_settings(model, weights, device, config)
    try:
        spec = clip_spec(settings)
    except ConfigurationError:
        spec = None  # said when the model loads, after the files' problems
    check_only = check_only or (spec is not None and spec.random)
    suites = []
    documents: list[dict] = []
    problems: list[PolicyProblem] = []
    failed_files: set[Path] = set()
    for path in files:
        policy = cases_file = None
        try:
            policy, _ = load_policy_file(path)
        except PolicyFileError as error:
            problems.extend(error.problems)
        try:
            cases_file = load_cases_file(cases or cases_path_for(path))
        except PolicyFileError as error:
            problems.extend(error.problems)
        if policy is None or cases_file is None:
            failed_files.add(path)
            continue
        against = problems_against_policy(cases_file, policy)
        if spec is not None and not check_only and policy.model and normalise_model_id(policy.model) != normalise_model_id(spec.model_id):
            against.append(
                PolicyProblem(
                    str(path), None, "model",
                    f"thresholds were calibrated for model {policy.model!r} but this run uses {spec.model_id!r}; "
                    "pass --model/--weights for it, or --check-only",
                )  # fmt: skip
            )
        if against:
            problems.extend(against)
            failed_files.add(path)
            continue
        suites.append((path, policy, cases_file))
    for problem in problems:
        err.print(f"[red]✗[/] {escape(str(problem))}", highlight=False)
    if problems and suites and not as_json:
        err.print(
            f"{len(problems)} problems in {len(failed_files)} of {len(files)} files, found before loading the model; "
            f"scoring the cases of the other {len(suites)}",
            highlight=False,
        )
    failed = len(failed_files)
    scorer = None
    if suites:
        core, scorer = load_offline_core(settings)
        if scorer.random_weights:
            check_only = True
        if check_only and not as_json:
            why = f"model {scorer.model_id} has random weights" if scorer.random_weights else "--check-only"
            out.print(
                f"[bold yellow]CHECK-ONLY[/] ({escape(why)}): cases, images and category ids are checked and every image is "
                "scored, but expected actions are [bold]not compared[/].",
                highlight=False,
            )
    for path, policy, cases_file in suites:
        outcomes = check_golden_cases(core, offline_policy(scorer, policy, path), cases_file, compare=not check_only)
        if as_json:
            documents.append(_cases_document(path, policy, cases_file, outcomes))
        else:
            print_case_outcomes(path, policy, cases_file, outcomes, check_only)
        failed += any(not outcome.passed for outcome in outcomes)
    if as_json:
        print_json(
            {
                "check_only": check_only,
                "model": scorer.model_id if scorer is not None else None,
                "policies": documents,
                "problems": [str(problem) for problem in problems],
                "failed": failed,
            }
        )
    if failed:
        err.print(f"{failed} of {len(files)} policies failed their tests", highlight=False)
        raise typer.Exit(1)



def _cases_document(path: Path, policy, cases_file, outcomes) -> dict:  # noqa: ANN001 - Policy, CasesFile, CaseOutcome
    return {
        "file": str(path),
        "policy_id": policy.id,
        "version": policy.version,
        "cases_file": str(cases_file.path),
        "cases": [
            {
                "image": outcome.case.image,
                "expect": outcome.case.expect.value,
                "action": outcome.decision.action.value if outcome.decision else None,
                "categories": {c.category_id: {"score": c.score, "band": c.band.value} for c in outcome.decision.categories}
                if outcome.decision
                else {},
                "passed": outcome.passed,
                "problems": [str(problem) for problem in outcome.problems],
            }
            for outcome in outcomes
        ],
    }


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
    config: ConfigOption = None,
    open_report: Annotated[bool, typer.Option("--open", help="open the report in a web browser")] = False,
    allow_collapse: Annotated[
        bool,
        typer.Option(
            "--allow-collapse",
            help="take a proposal that empties a REVIEW band (review = block: no human review or escalation below block); "
            "without it such a category keeps its current review threshold",
        ),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Score labelled images, propose review/block thresholds per category, write the next policy version and a report."""
    import difflib
    from datetime import date

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from moderation.offline.calibration import CalibrationTargets
    from moderation.offline.report import render_report
    from moderation.offline.labels import LabelsError, read_labels
    from moderation.offline.scoring import offline_policy, score_image_files
    from moderation.policy import PolicyFileError
    from moderation.policy.rewrite import RewriteError
    from moderation.offline.policy_calibration import calibrate_policy, calibration_document

    policy, policy_text = policy_or_fail(policy_file)
    try:
        targets = CalibrationTargets(
            precision=target_precision, recall=target_recall, max_review_rate=max_review_rate, allow_collapse=allow_collapse
        )
        images = read_labels(labels, [c.id for c in policy.categories])
    except (ValueError, LabelsError) as error:
        raise fail(str(error)) from None
    core, scorer = load_offline_core(offline_settings(model, weights, device, config))
    if scorer.random_weights:
        err.print(f"[bold yellow]warning:[/] model {escape(scorer.model_id)} has random weights: the proposed thresholds mean nothing", highlight=False)

    served = offline_policy(scorer, policy, policy_file)
    columns = (TextColumn("scoring"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err.current()) as progress:
        task = progress.add_task("scoring", total=len(images))
        scored = score_image_files(core, served, [image.path for image in images], on_scored=lambda n: progress.advance(task, n))
    unreadable = [f"{result.path}: {result.error}" for result in scored if result.scores is None]
    for line in unreadable:
        err.print(f"[yellow]skipped[/] {escape(line)}", highlight=False)
    kept = [(image, result.scores) for image, result in zip(images, scored, strict=True) if result.scores is not None]
    if not kept:
        raise fail(f"none of the {len(images)} labelled images could be scored")

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
        raise fail(str(error).splitlines()[0]) from None

    out_dir = out_dir or Path(f"calibration-{policy.id}")
    out_dir.mkdir(parents=True, exist_ok=True)
    proposed_path = out_dir / policy_file.name
    proposed_path.write_text(result.proposed_text, encoding="utf-8")
    _write_scores_csv(out_dir / "scores.csv", [image.path for image, _ in kept], result)
    report_path = out_dir / "report.html"
    import shlex

    command = f"moderation policy calibrate {shlex.quote(str(policy_file))} --labels {shlex.quote(str(labels))}"
    report_path.write_text(render_report(result, str(labels), scorer.random_weights, unreadable, str(proposed_path), command), encoding="utf-8")

    diff = list(difflib.unified_diff(policy_text.splitlines(), result.proposed_text.splitlines(), str(policy_file), str(proposed_path), lineterm=""))
    if as_json:
        document = calibration_document(result)
        document["skipped"] = unreadable
        document["files"] = {"proposed": str(proposed_path), "report": str(report_path), "scores": str(out_dir / "scores.csv")}
        document["diff"] = "\n".join(diff)
        print_json(document)
    else:
        print_calibration(result, command)
        for line in diff:
            style = "bold" if line.startswith(("---", "+++")) else {"+": "green", "-": "red", "@": "cyan"}.get(line[:1], "")
            out.print(escape(line), style=style, highlight=False)
        out.print(f"wrote {proposed_path}, {report_path} and {out_dir / 'scores.csv'}", highlight=False)
    if open_report:
        import webbrowser

        webbrowser.open(report_path.resolve().as_uri())



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
    store: Annotated[
        Optional[str],
        typer.Option(help="state store the servers write: postgresql://..., sqlite:///path or a SQLite file; "
                     "default MODERATION_DATABASE_URL, else MODERATION_EMBEDDING_STORE"),
    ] = None,
    since: Annotated[str, typer.Option(help="re-score decisions newer than this age: 90m, 12h, 7d, 2w")] = "7d",
    until: Annotated[Optional[str], typer.Option(help="and older than this age (default: up to now)")] = None,
    stored_policy: Annotated[Optional[str], typer.Option(help="re-score decisions made under this policy id (default: OLD's id)")] = None,
    examples: Annotated[int, typer.Option(min=0, help="example request ids shown per kind of change")] = 3,
    thumbnails: Annotated[
        Optional[Path], typer.Option(help="thumbnail store to point examples at; default MODERATION_THUMBNAIL_STORE")
    ] = None,
    model: ModelOption = None,
    weights: WeightsOption = None,
    device: DeviceOption = None,
    as_json: JsonOption = False,
) -> None:
    """Re-score stored traffic under OLD and NEW (text embeddings only) and report which decisions flip."""
    import dataclasses
    from datetime import datetime, timezone

    from moderation.offline.rescore import CannotRescore, check_stored_models, flips_document, rescore_stored_decisions
    from moderation.state.embeddings import StoreError, store_freshness
    from moderation.state.store import is_database_url, redact_url

    old, new = (policy_or_fail(path)[0] for path in (old_file, new_file))
    settings = offline_settings(model, weights, device)
    store = store or settings.database_url or settings.embedding_store
    if store is None:
        raise fail("no state store: pass --store URL|PATH or set MODERATION_DATABASE_URL (or MODERATION_EMBEDDING_STORE)")
    shown_store = redact_url(str(store))
    now = datetime.now(timezone.utc)
    window_start = now - _parse_age(since, "--since")
    window_end = now - _parse_age(until, "--until") if until else None
    policy_id = stored_policy or old.id
    # Re-scoring needs the text tower only, and every backend runs it on torch: the torch backend
    # gives the same text embeddings without exporting or loading an ONNX image tower (time, memory).
    spec = dataclasses.replace(model_spec(settings), backend="torch")
    try:
        freshness = store_freshness(store, window_start, window_end, policy_id)
        if not as_json:
            print_store_freshness(freshness, now.timestamp())
        # Checked before the model loads: a wrong --model is refused in a second, not after a minute.
        check_stored_models(store, spec.model_id, window_start, window_end, policy_id)
    except (CannotRescore, StoreError) as error:
        raise fail(str(error)) from None
    scorer = load_scorer_or_fail(spec)
    if scorer.random_weights:
        err.print(
            f"[bold yellow]warning:[/] model {escape(scorer.model_id)} has random weights: its text embeddings differ from "
            "those of the model that stored the image embeddings, so these flips mean nothing",
            highlight=False,
        )
    try:
        flips = rescore_stored_decisions(store, scorer, old, new, window_start, window_end, policy_id, examples)
    except (CannotRescore, StoreError) as error:
        raise fail(str(error)) from None
    window = f"the last {since}" + (f" up to {until} ago" if until else "")
    # Thumbnails kept as rows of a database store are shown by `case show REQUEST_ID`; a directory is pointed at here.
    thumbnails = thumbnails or (None if is_database_url(store) else settings.thumbnail_store)
    if as_json:
        document = {
            "old": {"policy_id": old.id, "version": old.version},
            "new": {"policy_id": new.id, "version": new.version},
            "store": shown_store,
            "stored_policy": policy_id,
            "window": {"since": window_start.isoformat(), "until": (window_end or now).isoformat()},
            "freshness": {
                "in_window": freshness.in_window,
                "newest_in_window_age_s": None if freshness.newest_in_window is None else now.timestamp() - freshness.newest_in_window,
                "newest_age_s": None if freshness.newest is None else now.timestamp() - freshness.newest,
            },
            "model": scorer.model_id,
            "random_weights": scorer.random_weights,
            **flips_document(flips),
        }
        if thumbnails is not None:
            from moderation.state.thumbnails import thumbnail_paths

            # Any caller's: `case show --caller` tells them apart when a request id was reused.
            document["thumbnails"] = {r: [str(p) for p in paths] for r in flips.example_details if (paths := thumbnail_paths(thumbnails, r))}
        print_json(document)
        return
    print_flips(flips, old, new, f"{policy_id!r} decisions of {window} in {shown_store}", thumbnails)



def _parse_age(text: str, option: str) -> timedelta:
    import re

    # At most five digits: 99999 weeks still subtracts from now without overflowing.
    age = re.fullmatch(r"(\d{1,5})([smhdw])", text.strip())
    if age is None or int(age.group(1)) == 0:
        raise fail(f"{option} {text!r} is not an age such as 90m, 12h, 7d or 2w")
    seconds_per_unit = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
    return timedelta(seconds=int(age.group(1)) * seconds_per_unit[age.group(2)])

