"""`moderation review ...`: work the review queue of a running server (ReviewService, docs/reviewing.md).

Every command calls the server over gRPC with the reviewer's own token (one of the
server's reviewer_tokens_file; its name is the reviewer in the audit). Give it as
`--token-file` or MODERATION_CLIENT_REVIEWER_TOKEN_FILE (a file holding the token;
never put a token on the command line); TLS options are `moderate`'s.

`review export OUT_DIR` writes the decided cases of one policy as the labelled folder
`moderation policy calibrate` reads (moderation/offline/labels.py): OUT_DIR/<category
or benign>/<case id>.jpg, the image being the case's thumbnail, plus OUT_DIR/cases.csv
(every decided case, with its label and whether it has an image). Without thumbnails
(keep_thumbnails off) the export holds cases.csv only, and says so.

Exit codes: 0 done, 1 the server refused or could not be reached (its sentence is
printed), 2 a usage error.
"""

from __future__ import annotations

import csv
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from moderation.cli.app import review_app
from moderation.cli.common import JsonOption, err, escape, fail, message_document, out, print_json
from moderation.cli.connect import (
    ClientSecurity,
    TlsCaOption,
    TlsClientCertOption,
    TlsClientKeyOption,
    ServiceConnection,
    TlsServerNameOption,
    called,
)
from moderation.cli.render import Column, print_rows

if TYPE_CHECKING:
    from moderation.v1 import review_pb2_grpc

STATUSES = ("open", "decided", "expired", "all")
BENIGN = "benign"
EXPORT_PAGE = 200

TargetOption = Annotated[str, typer.Option(help="server address HOST:PORT")]
TimeoutOption = Annotated[float, typer.Option(help="deadline of each call, seconds")]
ReviewerTokenFileOption = Annotated[
    Optional[Path],
    typer.Option(
        "--token-file",
        envvar="MODERATION_CLIENT_REVIEWER_TOKEN_FILE",
        help="file holding your reviewer token (one of the server's reviewer_tokens_file)",
    ),
]
CaseIdArgument = Annotated[str, typer.Argument(help="the case's id (from `review list` or `review lease`)")]


def connection(
    target: str, tls_ca: Path | None, tls_client_cert: Path | None, tls_client_key: Path | None, tls_server_name: str | None, token_file: Path | None
) -> ServiceConnection[review_pb2_grpc.ReviewServiceStub]:
    from moderation.v1 import review_pb2_grpc

    security = ClientSecurity(tls_ca, tls_client_cert, tls_client_key, tls_server_name, token_file)
    return ServiceConnection(target, security, review_pb2_grpc.ReviewServiceStub)


def when(unix: float) -> str:
    return datetime.fromtimestamp(unix, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC") if unix else "-"


def status_name(value: int) -> str:
    from moderation.v1 import review_pb2 as rpb

    return rpb.CaseStatus.Name(value).removeprefix("CASE_STATUS_").lower()


def as_dict(message: Any) -> dict[str, Any]:
    """Every `--json` document speaks one vocabulary (CASE_STATUS_OPEN is OPEN): common.message_document."""
    return message_document(message, always_print_fields_with_no_presence=True)


def case_label(case: Any) -> str | None:
    """A decided case as a calibration label: its clause's category when it violates, else 'benign'."""
    if not case.HasField("decision"):
        return None
    if not case.decision.violates:
        return BENIGN
    return next((c.category_id for c in case.categories if c.clause_id == case.decision.clause_id), case.category_id)


def print_case(case: Any) -> None:
    from moderation.v1 import moderation_pb2 as pb

    top = next((c for c in case.categories if c.category_id == case.category_id), None)
    lines = [
        f"case {escape(case.case_id)} ({status_name(case.status)}), opened {when(case.opened_at)}",
        f"request {escape(case.request_id)} from {escape(case.caller)}",
        f"policy {escape(case.policy_id)} version {escape(case.policy_version)}, model {escape(case.model_id)}",
        f"up for review by {escape(case.reason)}: {escape(case.category_id)}"
        + (f" (clause {escape(top.clause_id)})" if top is not None else "")
        + (f", deciding frame {case.deciding_frame}" if case.deciding_frame else ""),
    ]
    if case.rationale:
        lines.append(f"explainer's rationale: {escape(case.rationale)}")
    for match in case.bank_matches:
        lines.append(f"bank match: {escape(match.bank)} / {escape(match.content_id)}")
    if case.lease_holder:
        lines.append(f"leased by {escape(case.lease_holder)} until {when(case.lease_expires_at)}")
    if case.HasField("decision"):
        d = case.decision
        lines.append(
            f"decided by {escape(d.decided_by)} at {when(d.decided_at)}: {'violates' if d.violates else 'does not violate'}"
            + (f" clause {escape(d.clause_id)}" if d.clause_id else "")
        )
        if d.note:
            lines.append(f"note: {escape(d.note)}")
    if case.reopened:
        lines.append(f"reopened {case.reopened} time{'s' if case.reopened != 1 else ''}")
    for asked in case.questions:
        lines.append(f"asked by {escape(asked.asked_by)} at {when(asked.asked_at)}: {escape(asked.question)}")
        lines.append(f"  answer (advisory, {escape(asked.model)}): {escape(asked.answer)}")
    for line in lines:
        out.print(line, highlight=False)
    rows = [
        [
            escape(c.category_id), f"{c.score:.4f}", f"{c.review_threshold:g}", f"{c.block_threshold:g}",
            pb.Band.Name(c.band).removeprefix("BAND_"), pb.Action.Name(c.action).removeprefix("ACTION_"), escape(c.clause_id),
        ]
        for c in case.categories
    ]  # fmt: skip
    columns = ["category", Column("score", "right"), Column("review at", "right"), Column("block at", "right"), "band", "action", "clause"]
    print_rows(None, columns, rows)


# --- commands --------------------------------------------------------------------------------


@review_app.command("list")
def list_cases(
    status: Annotated[str, typer.Option(help="open, decided, expired or all")] = "open",
    policy: Annotated[Optional[str], typer.Option(help="only cases of this policy id")] = None,
    limit: Annotated[int, typer.Option(help="cases to show, oldest first (1 to 500)")] = 50,
    as_json: JsonOption = False,
    target: TargetOption = "localhost:50051",
    timeout: TimeoutOption = 30.0,
    tls_ca: TlsCaOption = None,
    tls_client_cert: TlsClientCertOption = None,
    tls_client_key: TlsClientKeyOption = None,
    tls_server_name: TlsServerNameOption = None,
    token_file: ReviewerTokenFileOption = None,
) -> None:
    """List cases, oldest first: open ones by default."""
    from moderation.v1 import review_pb2 as rpb

    if status not in STATUSES:
        raise fail(f"--status is one of {', '.join(STATUSES)}; got {status!r}")
    if not 1 <= limit <= 500:
        raise fail(f"--limit is between 1 and 500; got {limit}")
    wanted = rpb.CASE_STATUS_UNSPECIFIED if status == "all" else getattr(rpb, f"CASE_STATUS_{status.upper()}")
    request = rpb.ListCasesRequest(status=wanted, policy_id=policy or "", page_size=limit)
    with connection(target, tls_ca, tls_client_cert, tls_client_key, tls_server_name, token_file).stub() as (stub, metadata):
        response = called(lambda: stub.ListCases(request, timeout=timeout, metadata=metadata))
    if as_json:
        print_json(as_dict(response))
        return
    rows = [
        [
            escape(c.case_id), status_name(c.status), when(c.opened_at), escape(c.policy_id), escape(c.category_id), escape(c.reason),
            escape(c.lease_holder or "-"), escape(c.decision.decided_by) if c.HasField("decision") else "-",
        ]
        for c in response.cases
    ]  # fmt: skip
    columns = ["case", "status", "opened", "policy", "category", "reason", "leased by", "decided by"]
    more = " (more: raise --limit)" if response.next_page_token else ""
    print_rows(f"{len(rows)} case{'s' if len(rows) != 1 else ''}{more}; {response.open_cases} open in the queue", columns, rows)


@review_app.command("lease")
def lease(
    case_id: Annotated[Optional[str], typer.Argument(help="the case to lease; omitted: the oldest open case nobody holds")] = None,
    policy: Annotated[Optional[str], typer.Option(help="with no case id: only cases of this policy id")] = None,
    as_json: JsonOption = False,
    target: TargetOption = "localhost:50051",
    timeout: TimeoutOption = 30.0,
    tls_ca: TlsCaOption = None,
    tls_client_cert: TlsClientCertOption = None,
    tls_client_key: TlsClientKeyOption = None,
    tls_server_name: TlsServerNameOption = None,
    token_file: ReviewerTokenFileOption = None,
) -> None:
    """Lease a case (the next one, or the one named) so that only you may decide it until the lease ends."""
    from moderation.v1 import review_pb2 as rpb

    with connection(target, tls_ca, tls_client_cert, tls_client_key, tls_server_name, token_file).stub() as (stub, metadata):
        if case_id is None:
            case = called(lambda: stub.LeaseNext(rpb.LeaseNextRequest(policy_id=policy or ""), timeout=timeout, metadata=metadata))
            if not case.HasField("case"):
                if as_json:
                    print_json({})
                else:
                    out.print("no open case is free to lease", highlight=False)
                return
            leased = case.case
        else:
            leased = called(lambda: stub.LeaseCase(rpb.LeaseCaseRequest(case_id=case_id), timeout=timeout, metadata=metadata)).case
    if as_json:
        print_json(as_dict(leased))
        return
    out.print(f"leased until {when(leased.lease_expires_at)}", highlight=False)
    print_case(leased)


@review_app.command("show")
def show(
    case_id: CaseIdArgument,
    thumbnail_out: Annotated[Optional[Path], typer.Option(help="write the case's thumbnail (JPEG) here, when one was kept")] = None,
    as_json: JsonOption = False,
    target: TargetOption = "localhost:50051",
    timeout: TimeoutOption = 30.0,
    tls_ca: TlsCaOption = None,
    tls_client_cert: TlsClientCertOption = None,
    tls_client_key: TlsClientKeyOption = None,
    tls_server_name: TlsServerNameOption = None,
    token_file: ReviewerTokenFileOption = None,
) -> None:
    """One case: the request, policy, scores against thresholds, rationale, lease and decision."""
    from moderation.v1 import review_pb2 as rpb

    request = rpb.GetCaseRequest(case_id=case_id, include_thumbnail=thumbnail_out is not None)
    with connection(target, tls_ca, tls_client_cert, tls_client_key, tls_server_name, token_file).stub() as (stub, metadata):
        response = called(lambda: stub.GetCase(request, timeout=timeout, metadata=metadata))
    if thumbnail_out is not None:
        if response.thumbnail_jpeg:
            thumbnail_out.write_bytes(response.thumbnail_jpeg)
        elif not response.thumbnails_kept:
            err.print("this server keeps no thumbnails (set keep_thumbnails with a database, or thumbnail_store): nothing written", highlight=False)
        else:
            err.print("no thumbnail for this case (past its retention, or evicted): nothing written", highlight=False)
    if as_json:
        print_json(as_dict(response.case))
        return
    print_case(response.case)
    if thumbnail_out is not None and response.thumbnail_jpeg:
        out.print(f"thumbnail written to {escape(str(thumbnail_out))}", highlight=False)


@review_app.command("ask")
def ask(
    case_id: CaseIdArgument,
    question: Annotated[str, typer.Argument(help="a short question about the case's image, one line, at most 300 characters")],
    as_json: JsonOption = False,
    target: TargetOption = "localhost:50051",
    timeout: TimeoutOption = 60.0,
    tls_ca: TlsCaOption = None,
    tls_client_cert: TlsClientCertOption = None,
    tls_client_key: TlsClientKeyOption = None,
    tls_server_name: TlsServerNameOption = None,
    token_file: ReviewerTokenFileOption = None,
) -> None:
    """Ask SmolVLM2 about a case you hold the lease on; the answer is advisory and kept with the case."""
    from moderation.v1 import review_pb2 as rpb

    request = rpb.AskCaseRequest(case_id=case_id, question=question)
    with connection(target, tls_ca, tls_client_cert, tls_client_key, tls_server_name, token_file).stub() as (stub, metadata):
        response = called(lambda: stub.AskCase(request, timeout=timeout, metadata=metadata))
    if as_json:
        print_json(as_dict(response))
        return
    out.print(f"answer (advisory: it decides nothing): {escape(response.question.answer)}", highlight=False)


@review_app.command("decide")
def decide(
    case_id: CaseIdArgument,
    violates: Annotated[
        Optional[bool], typer.Option("--violates/--benign", help="whether the case violates the policy (one of the two is required)")
    ] = None,
    clause: Annotated[Optional[str], typer.Option(help="the clause violated (default: the clause of the case's category)")] = None,
    note: Annotated[str, typer.Option(help="a note for the audit and the next reviewer, plain text (at most 2000 characters)")] = "",
    as_json: JsonOption = False,
    target: TargetOption = "localhost:50051",
    timeout: TimeoutOption = 30.0,
    tls_ca: TlsCaOption = None,
    tls_client_cert: TlsClientCertOption = None,
    tls_client_key: TlsClientKeyOption = None,
    tls_server_name: TlsServerNameOption = None,
    token_file: ReviewerTokenFileOption = None,
) -> None:
    """Decide a case you hold the lease on: --violates [--clause ID] or --benign."""
    from moderation.v1 import review_pb2 as rpb

    if violates is None:
        raise fail("say --violates or --benign")
    request = rpb.DecideCaseRequest(case_id=case_id, violates=violates, clause_id=clause or "", note=note)
    with connection(target, tls_ca, tls_client_cert, tls_client_key, tls_server_name, token_file).stub() as (stub, metadata):
        case = called(lambda: stub.DecideCase(request, timeout=timeout, metadata=metadata)).case
    if as_json:
        print_json(as_dict(case))
        return
    verdict = f"violates clause {escape(case.decision.clause_id)}" if case.decision.violates else "does not violate"
    out.print(f"case {escape(case.case_id)} decided: {verdict}", highlight=False)


@review_app.command("reopen")
def reopen(
    case_id: CaseIdArgument,
    note: Annotated[str, typer.Option(help="why (the appeal), plain text (at most 2000 characters)")] = "",
    target: TargetOption = "localhost:50051",
    timeout: TimeoutOption = 30.0,
    tls_ca: TlsCaOption = None,
    tls_client_cert: TlsClientCertOption = None,
    tls_client_key: TlsClientKeyOption = None,
    tls_server_name: TlsServerNameOption = None,
    token_file: ReviewerTokenFileOption = None,
) -> None:
    """Put a decided (or expired) case back in the queue, on appeal; its earlier decision stays in the audit."""
    from moderation.v1 import review_pb2 as rpb

    with connection(target, tls_ca, tls_client_cert, tls_client_key, tls_server_name, token_file).stub() as (stub, metadata):
        case = called(lambda: stub.ReopenCase(rpb.ReopenCaseRequest(case_id=case_id, note=note), timeout=timeout, metadata=metadata)).case
    out.print(f"case {escape(case.case_id)} is open again (reopened {case.reopened} time{'s' if case.reopened != 1 else ''})", highlight=False)


@review_app.command("audit")
def audit(
    case_id: CaseIdArgument,
    as_json: JsonOption = False,
    target: TargetOption = "localhost:50051",
    timeout: TimeoutOption = 30.0,
    tls_ca: TlsCaOption = None,
    tls_client_cert: TlsClientCertOption = None,
    tls_client_key: TlsClientKeyOption = None,
    tls_server_name: TlsServerNameOption = None,
    token_file: ReviewerTokenFileOption = None,
) -> None:
    """Every action on a case, oldest first: who, when, under which policy version."""
    from moderation.v1 import review_pb2 as rpb

    with connection(target, tls_ca, tls_client_cert, tls_client_key, tls_server_name, token_file).stub() as (stub, metadata):
        response = called(lambda: stub.GetCaseAudit(rpb.GetCaseAuditRequest(case_id=case_id), timeout=timeout, metadata=metadata))
    if as_json:
        print_json(as_dict(response))
        return
    rows = [[when(e.at), escape(e.who), escape(e.action), escape(f"{e.policy_id}@{e.policy_version}"), escape(e.detail)] for e in response.entries]
    print_rows(f"{len(rows)} action{'s' if len(rows) != 1 else ''} on case {escape(case_id)}", ["when", "who", "action", "policy", "detail"], rows)


@review_app.command("export")
def export(
    out_dir: Annotated[Path, typer.Argument(help="folder to write: <category or benign>/<case id>.jpg and cases.csv", file_okay=False)],
    policy: Annotated[Optional[str], typer.Option(help="the policy id whose decided cases to export (needed when there are several)")] = None,
    target: TargetOption = "localhost:50051",
    timeout: TimeoutOption = 30.0,
    tls_ca: TlsCaOption = None,
    tls_client_cert: TlsClientCertOption = None,
    tls_client_key: TlsClientKeyOption = None,
    tls_server_name: TlsServerNameOption = None,
    token_file: ReviewerTokenFileOption = None,
) -> None:
    """Decided cases as a labelled folder for `moderation policy calibrate POLICY --labels OUT_DIR`."""
    from moderation.v1 import review_pb2 as rpb

    with connection(target, tls_ca, tls_client_cert, tls_client_key, tls_server_name, token_file).stub() as (stub, metadata):
        cases: list[Any] = []
        token = ""
        while True:
            request = rpb.ListCasesRequest(status=rpb.CASE_STATUS_DECIDED, policy_id=policy or "", page_size=EXPORT_PAGE, page_token=token)
            page = called(lambda: stub.ListCases(request, timeout=timeout, metadata=metadata))
            cases.extend(page.cases)
            token = page.next_page_token
            if not token:
                break
        policies = sorted({c.policy_id for c in cases})
        if len(policies) > 1:
            raise fail(f"decided cases of {len(policies)} policies ({', '.join(policies)}): pass --policy ID (calibration reads one policy's labels)")
        if not cases:
            out.print("no decided cases" + (f" of policy {escape(policy)}" if policy else "") + ": nothing to export", highlight=False)
            return
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise fail(f"cannot create {out_dir}: {error.strerror}") from None
        rows: list[list[str]] = []
        images = 0
        thumbnails_kept = True
        for case in cases:
            response = called(lambda: stub.GetCase(rpb.GetCaseRequest(case_id=case.case_id, include_thumbnail=True), timeout=timeout, metadata=metadata))
            thumbnails_kept = response.thumbnails_kept
            label = case_label(case) or BENIGN
            image = ""
            if response.thumbnail_jpeg:
                folder = out_dir / label
                folder.mkdir(exist_ok=True)
                (folder / f"{case.case_id}.jpg").write_bytes(response.thumbnail_jpeg)
                image = f"{label}/{case.case_id}.jpg"
                images += 1
            rows.append([
                case.case_id, case.request_id, case.policy_id, case.policy_version, label, case.decision.clause_id, case.decision.decided_by,
                when(case.decision.decided_at), image,
            ])  # fmt: skip
    with (out_dir / "cases.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["case_id", "request_id", "policy_id", "policy_version", "label", "clause_id", "decided_by", "decided_at", "image"])
        writer.writerows(rows)
    labels = sorted({r[4] for r in rows if r[8]})
    where = f"{images} image{'s' if images != 1 else ''} in {', '.join(labels)}" if images else "no images"
    out.print(
        f"exported {_cases(len(rows))} of policy {escape(policies[0])} to {escape(str(out_dir))}: {where}; every case is listed in cases.csv",
        highlight=False,
    )
    if images < len(rows):
        missing = len(rows) - images
        if not thumbnails_kept:
            err.print(
                f"[yellow]warning:[/] this server keeps no thumbnails, so {_cases(missing)} {'have' if missing != 1 else 'has'} a label but no "
                "image and calibration cannot use them; "
                "turn thumbnails on (keep_thumbnails with database_url, or thumbnail_store)",
                highlight=False,
            )
        else:
            err.print(
                f"[yellow]warning:[/] {_cases(missing)} {'have' if missing != 1 else 'has'} no thumbnail any more (past the retention, or "
                "evicted): listed in cases.csv only",
                highlight=False,
            )
    if images:
        out.print(f"next: moderation policy calibrate policies/{escape(policies[0])}.yaml --labels {escape(str(out_dir))}", highlight=False)


def _cases(count: int) -> str:
    return f"{count} case{'s' if count != 1 else ''}"
