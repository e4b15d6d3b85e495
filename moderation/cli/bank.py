"""`moderation bank ...`: curate the banks of known content on a running server (BankService, docs/banks.md).

Every command calls the server over gRPC with a *curation* token: the server's
curation_tokens_file holds them, and a token that may moderate cannot curate. Give it
as `--token-file` or MODERATION_CLIENT_CURATION_TOKEN_FILE (a file holding the token;
never put a token on the command line); TLS options are `moderate`'s.

Exit codes: 0 done, 1 the server refused or could not be reached (its sentence is
printed), 2 a usage error.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from moderation.cli.app import bank_app
from moderation.cli.common import JsonOption, err, escape, fail, message_document, out, print_json
from moderation.cli.connect import (
    ClientSecurity,
    TlsCaOption,
    TlsClientCertOption,
    TlsClientKeyOption,
    ServiceConnection,
    TlsServerNameOption,
    called,
    refused,
)
from moderation.cli.render import Column, print_rows

if TYPE_CHECKING:
    import grpc

    from moderation.v1 import banks_pb2_grpc

SIGNALS = ("pdq", "md5", "sha256", "embedding")
IMPORT_CHUNK_BYTES = 64 * 1024

TargetOption = Annotated[str, typer.Option(help="server address HOST:PORT")]
TimeoutOption = Annotated[float, typer.Option(help="deadline of the call, seconds")]
CurationTokenFileOption = Annotated[
    Optional[Path],
    typer.Option(
        "--token-file",
        envvar="MODERATION_CLIENT_CURATION_TOKEN_FILE",
        help="file holding a curation token (one of the server's curation_tokens_file; a moderation token is refused)",
    ),
]


def connection(
    target: str,
    tls_ca: Path | None,
    tls_client_cert: Path | None,
    tls_client_key: Path | None,
    tls_server_name: str | None,
    token_file: Path | None,
) -> ServiceConnection[banks_pb2_grpc.BankServiceStub]:
    from moderation.v1 import banks_pb2_grpc

    security = ClientSecurity(tls_ca, tls_client_cert, tls_client_key, tls_server_name, token_file)
    # Images for add and lookup travel whole: as large as `moderate` sends.
    return ServiceConnection(target, security, banks_pb2_grpc.BankServiceStub, (("grpc.max_send_message_length", 256 * 1024 * 1024),))


def signal_pb(name: str | None) -> int:
    from moderation.v1 import moderation_pb2 as pb

    if name is None:
        return pb.BANK_SIGNAL_TYPE_UNSPECIFIED
    if name not in SIGNALS:
        raise fail(f"--signal is one of {', '.join(SIGNALS)}; got {name!r}")
    return getattr(pb, f"BANK_SIGNAL_TYPE_{name.upper()}")


def signal_name(value: int) -> str:
    from moderation.v1 import moderation_pb2 as pb

    return pb.BankSignalType.Name(value).removeprefix("BANK_SIGNAL_TYPE_").lower()


def one_content(image: Path | None, pdq: str | None, md5: str | None, sha256: str | None, quality: int | None) -> dict[str, Any]:
    """The `content` oneof of AddContent and Lookup from exactly one of --image, --pdq, --md5, --sha256."""
    from moderation.v1 import banks_pb2 as bpb
    from moderation.v1 import moderation_pb2 as pb

    given = [name for name, value in (("--image", image), ("--pdq", pdq), ("--md5", md5), ("--sha256", sha256)) if value is not None]
    if len(given) != 1:
        raise fail("give exactly one of --image PATH, --pdq HEX, --md5 HEX, --sha256 HEX" + (f" (got {', '.join(given)})" if given else ""))
    if quality is not None and pdq is None:
        raise fail("--quality goes with --pdq (the PDQ hash's quality)")
    if image is not None:
        try:
            return {"image": image.read_bytes()}
        except OSError as error:
            raise fail(f"cannot read {image}: {error.strerror}") from None
    kind, value = next((k, v) for k, v in (("PDQ", pdq), ("MD5", md5), ("SHA256", sha256)) if v is not None)
    return {"hash": bpb.BankHash(signal_type=getattr(pb, f"BANK_SIGNAL_TYPE_{kind}"), value=value, quality=quality)}


def when(unix: float) -> str:
    return datetime.fromtimestamp(unix, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def hash_rows(hashes: Any) -> list[list[str]]:
    return [[signal_name(h.signal_type), escape(h.value), str(h.quality) if h.HasField("quality") else ""] for h in hashes]


# --- commands --------------------------------------------------------------------------------


@bank_app.command("create")
def create(
    name: Annotated[str, typer.Argument(help="the bank's name, as policies' `banks:` rules name it")],
    note: Annotated[str, typer.Option(help="what the bank holds, for the next curator")] = "",
    pdq_max_distance: Annotated[Optional[int], typer.Option(help="PDQ match threshold in bits of 256 (default 31)")] = None,
    pdq_min_quality: Annotated[Optional[int], typer.Option(help="PDQ hashes below this quality are ignored (default 50)")] = None,
    embedding_min_cosine: Annotated[
        Optional[float], typer.Option(help="cosine an embedding match needs; measure it on the server's model (default: none, embeddings refused)")
    ] = None,
    matching_ratio: Annotated[Optional[float], typer.Option(help="share of uploads matched, 0 to 1 (default 1)")] = None,
    disabled: Annotated[bool, typer.Option("--disabled", help="create it disabled (matches nothing until enabled)")] = False,
    target: TargetOption = "localhost:50051",
    timeout: TimeoutOption = 30.0,
    tls_ca: TlsCaOption = None,
    tls_client_cert: TlsClientCertOption = None,
    tls_client_key: TlsClientKeyOption = None,
    tls_server_name: TlsServerNameOption = None,
    token_file: CurationTokenFileOption = None,
) -> None:
    """Create an empty bank."""
    from moderation.v1 import banks_pb2 as bpb

    request = bpb.CreateBankRequest(
        name=name, note=note, pdq_max_distance=pdq_max_distance, pdq_min_quality=pdq_min_quality,
        embedding_min_cosine=embedding_min_cosine, matching_ratio=matching_ratio, enabled=False if disabled else None,
    )  # fmt: skip
    with connection(target, tls_ca, tls_client_cert, tls_client_key, tls_server_name, token_file).stub() as (stub, metadata):
        bank = called(lambda: stub.CreateBank(request, timeout=timeout, metadata=metadata)).bank
    out.print(f"created bank {escape(bank.name)} ({'enabled' if bank.enabled else 'disabled'})", highlight=False)


@bank_app.command("list")
def list_banks(
    as_json: JsonOption = False,
    target: TargetOption = "localhost:50051",
    timeout: TimeoutOption = 30.0,
    tls_ca: TlsCaOption = None,
    tls_client_cert: TlsClientCertOption = None,
    tls_client_key: TlsClientKeyOption = None,
    tls_server_name: TlsServerNameOption = None,
    token_file: CurationTokenFileOption = None,
) -> None:
    """List every bank: settings and entries per signal."""

    from moderation.v1 import banks_pb2 as bpb

    with connection(target, tls_ca, tls_client_cert, tls_client_key, tls_server_name, token_file).stub() as (stub, metadata):
        response = called(lambda: stub.ListBanks(bpb.ListBanksRequest(), timeout=timeout, metadata=metadata))
    if as_json:
        print_json(message_document(response, always_print_fields_with_no_presence=True))
        return
    rows = [
        [
            escape(b.name),
            "yes" if b.enabled else "no",
            *(str(b.entries.get(kind, 0)) for kind in SIGNALS),
            str(b.pdq_max_distance),
            str(b.pdq_min_quality),
            f"{b.embedding_min_cosine:g}" if b.HasField("embedding_min_cosine") else "-",
            f"{b.matching_ratio:g}",
            escape(b.note),
        ]
        for b in response.banks
    ]
    columns = [
        "bank", "enabled", Column("pdq", "right"), Column("md5", "right"), Column("sha256", "right"), Column("embedding", "right"),
        Column("pdq max distance", "right"), Column("pdq min quality", "right"), Column("min cosine", "right"),
        Column("ratio", "right"), "note",
    ]  # fmt: skip
    print_rows(f"{len(rows)} bank{'s' if len(rows) != 1 else ''} at version {response.version}", columns, rows)


def _set_enabled(name: str, enabled: bool, reason: str, conn: ServiceConnection[banks_pb2_grpc.BankServiceStub], timeout: float) -> None:
    from moderation.v1 import banks_pb2 as bpb

    with conn.stub() as (stub, metadata):
        bank = called(lambda: stub.UpdateBank(bpb.UpdateBankRequest(name=name, enabled=enabled, reason=reason), timeout=timeout, metadata=metadata)).bank
    out.print(f"bank {escape(bank.name)} is {'enabled' if bank.enabled else 'disabled'}", highlight=False)


@bank_app.command("enable")
def enable(
    name: Annotated[str, typer.Argument(help="the bank")],
    reason: Annotated[str, typer.Option(help="why, for the audit trail")] = "",
    target: TargetOption = "localhost:50051",
    timeout: TimeoutOption = 30.0,
    tls_ca: TlsCaOption = None,
    tls_client_cert: TlsClientCertOption = None,
    tls_client_key: TlsClientKeyOption = None,
    tls_server_name: TlsServerNameOption = None,
    token_file: CurationTokenFileOption = None,
) -> None:
    """Turn a bank's matching on again."""
    _set_enabled(name, True, reason, connection(target, tls_ca, tls_client_cert, tls_client_key, tls_server_name, token_file), timeout)


@bank_app.command("disable")
def disable(
    name: Annotated[str, typer.Argument(help="the bank")],
    reason: Annotated[str, typer.Option(help="why, for the audit trail")] = "",
    target: TargetOption = "localhost:50051",
    timeout: TimeoutOption = 30.0,
    tls_ca: TlsCaOption = None,
    tls_client_cert: TlsClientCertOption = None,
    tls_client_key: TlsClientKeyOption = None,
    tls_server_name: TlsServerNameOption = None,
    token_file: CurationTokenFileOption = None,
) -> None:
    """Stop a bank matching, keeping its entries."""
    _set_enabled(name, False, reason, connection(target, tls_ca, tls_client_cert, tls_client_key, tls_server_name, token_file), timeout)


@bank_app.command("set")
def set_settings(
    name: Annotated[str, typer.Argument(help="the bank")],
    pdq_max_distance: Annotated[Optional[int], typer.Option(help="PDQ match threshold in bits of 256")] = None,
    pdq_min_quality: Annotated[Optional[int], typer.Option(help="PDQ hashes below this quality are ignored")] = None,
    embedding_min_cosine: Annotated[Optional[float], typer.Option(help="cosine an embedding match needs (measured on the server's model)")] = None,
    matching_ratio: Annotated[Optional[float], typer.Option(help="share of uploads matched, 0 to 1 (a gradual rollout)")] = None,
    reason: Annotated[str, typer.Option(help="why, for the audit trail")] = "",
    target: TargetOption = "localhost:50051",
    timeout: TimeoutOption = 30.0,
    tls_ca: TlsCaOption = None,
    tls_client_cert: TlsClientCertOption = None,
    tls_client_key: TlsClientKeyOption = None,
    tls_server_name: TlsServerNameOption = None,
    token_file: CurationTokenFileOption = None,
) -> None:
    """Change a bank's thresholds or rollout ratio (only the options given)."""
    from moderation.v1 import banks_pb2 as bpb

    if all(v is None for v in (pdq_max_distance, pdq_min_quality, embedding_min_cosine, matching_ratio)):
        raise fail("give at least one of --pdq-max-distance, --pdq-min-quality, --embedding-min-cosine, --matching-ratio")
    request = bpb.UpdateBankRequest(
        name=name, pdq_max_distance=pdq_max_distance, pdq_min_quality=pdq_min_quality, embedding_min_cosine=embedding_min_cosine,
        matching_ratio=matching_ratio, reason=reason,
    )  # fmt: skip
    with connection(target, tls_ca, tls_client_cert, tls_client_key, tls_server_name, token_file).stub() as (stub, metadata):
        b = called(lambda: stub.UpdateBank(request, timeout=timeout, metadata=metadata)).bank
    cosine = f"{b.embedding_min_cosine:g}" if b.HasField("embedding_min_cosine") else "none"
    out.print(
        f"bank {escape(b.name)}: pdq_max_distance {b.pdq_max_distance}, pdq_min_quality {b.pdq_min_quality}, "
        f"embedding_min_cosine {cosine}, matching_ratio {b.matching_ratio:g}",
        highlight=False,
    )


@bank_app.command("add")
def add(
    bank: Annotated[str, typer.Argument(help="the bank")],
    content_id: Annotated[str, typer.Argument(help="what the content is called: your case or list id (a match names it)")],
    image: Annotated[Optional[Path], typer.Option(help="an image file: the server adds its MD5, SHA-256, PDQ per frame (and embeddings where the bank has a cosine)", dir_okay=False)] = None,
    pdq: Annotated[Optional[str], typer.Option(help="a PDQ hash: 64 hex characters")] = None,
    quality: Annotated[Optional[int], typer.Option(help="the PDQ hash's quality, 0 to 100")] = None,
    md5: Annotated[Optional[str], typer.Option(help="an MD5 of the file: 32 hex characters")] = None,
    sha256: Annotated[Optional[str], typer.Option(help="a SHA-256 of the file: 64 hex characters")] = None,
    note: Annotated[str, typer.Option(help="why it is banked, for the next curator")] = "",
    target: TargetOption = "localhost:50051",
    timeout: TimeoutOption = 30.0,
    tls_ca: TlsCaOption = None,
    tls_client_cert: TlsClientCertOption = None,
    tls_client_key: TlsClientKeyOption = None,
    tls_server_name: TlsServerNameOption = None,
    token_file: CurationTokenFileOption = None,
) -> None:
    """Add one piece of content: an image, or one hash."""
    from moderation.v1 import banks_pb2 as bpb

    request = bpb.AddContentRequest(bank=bank, content_id=content_id, note=note, **one_content(image, pdq, md5, sha256, quality))
    with connection(target, tls_ca, tls_client_cert, tls_client_key, tls_server_name, token_file).stub() as (stub, metadata):
        response = called(lambda: stub.AddContent(request, timeout=timeout, metadata=metadata))
    out.print(
        f"bank {escape(bank)}: {response.added} added, {response.skipped} already there (version {response.version})", highlight=False
    )
    print_rows(None, ["signal", "value", Column("quality", "right")], hash_rows(response.hashes))


@bank_app.command("remove")
def remove(
    bank: Annotated[str, typer.Argument(help="the bank")],
    content_id: Annotated[str, typer.Argument(help="the content id whose entries go")],
    signal: Annotated[Optional[str], typer.Option(help="only this signal's entries: pdq, md5, sha256 or embedding (default: all)")] = None,
    target: TargetOption = "localhost:50051",
    timeout: TimeoutOption = 30.0,
    tls_ca: TlsCaOption = None,
    tls_client_cert: TlsClientCertOption = None,
    tls_client_key: TlsClientKeyOption = None,
    tls_server_name: TlsServerNameOption = None,
    token_file: CurationTokenFileOption = None,
) -> None:
    """Remove a content id's entries from a bank."""
    from moderation.v1 import banks_pb2 as bpb

    request = bpb.RemoveContentRequest(bank=bank, content_id=content_id, signal_type=signal_pb(signal))
    with connection(target, tls_ca, tls_client_cert, tls_client_key, tls_server_name, token_file).stub() as (stub, metadata):
        response = called(lambda: stub.RemoveContent(request, timeout=timeout, metadata=metadata))
    if response.removed == 0:
        out.print(f"bank {escape(bank)} holds no {escape(signal or '')}{' ' if signal else ''}entries of {escape(content_id)}: nothing removed", highlight=False)
    else:
        out.print(f"bank {escape(bank)}: {response.removed} entries of {escape(content_id)} removed (version {response.version})", highlight=False)


@bank_app.command("lookup")
def lookup(
    image: Annotated[Optional[Path], typer.Option(help="an image file, hashed and embedded as the server does for requests", dir_okay=False)] = None,
    pdq: Annotated[Optional[str], typer.Option(help="a PDQ hash: 64 hex characters")] = None,
    quality: Annotated[Optional[int], typer.Option(help="the PDQ hash's quality (default 100)")] = None,
    md5: Annotated[Optional[str], typer.Option(help="an MD5: 32 hex characters")] = None,
    sha256: Annotated[Optional[str], typer.Option(help="a SHA-256: 64 hex characters")] = None,
    banks: Annotated[Optional[list[str]], typer.Option("--bank", help="only this bank (repeat for more; default: every enabled bank)")] = None,
    as_json: JsonOption = False,
    target: TargetOption = "localhost:50051",
    timeout: TimeoutOption = 30.0,
    tls_ca: TlsCaOption = None,
    tls_client_cert: TlsClientCertOption = None,
    tls_client_key: TlsClientKeyOption = None,
    tls_server_name: TlsServerNameOption = None,
    token_file: CurationTokenFileOption = None,
) -> None:
    """Which bank entries an image or a hash matches, as this server's requests would see them."""

    from moderation.v1 import banks_pb2 as bpb

    request = bpb.LookupRequest(banks=banks or [], **one_content(image, pdq, md5, sha256, quality))
    with connection(target, tls_ca, tls_client_cert, tls_client_key, tls_server_name, token_file).stub() as (stub, metadata):
        response = called(lambda: stub.Lookup(request, timeout=timeout, metadata=metadata))
    if as_json:
        print_json(message_document(response))
        return
    rows = [
        [escape(m.bank), escape(m.content_id), signal_name(m.signal_type), f"{m.distance:g}", f"{m.threshold:g}", str(m.frame_index)]
        for m in response.matches
    ]
    if not rows:
        out.print("no match", highlight=False)
    else:
        columns = ["bank", "content id", "signal", Column("distance", "right"), Column("threshold", "right"), Column("frame", "right")]
        print_rows(f"{len(rows)} match{'es' if len(rows) != 1 else ''}", columns, rows)
    if image is not None:
        print_rows("hashes of the image", ["signal", "value", Column("quality", "right")], hash_rows(response.hashes))


@bank_app.command("import")
def import_entries(
    bank: Annotated[str, typer.Argument(help="the bank")],
    file: Annotated[Path, typer.Argument(help="CSV lines content_id,signal_type,value[,quality[,note]] (UTF-8)", exists=True, dir_okay=False)],
    target: TargetOption = "localhost:50051",
    timeout: TimeoutOption = 3600.0,
    tls_ca: TlsCaOption = None,
    tls_client_cert: TlsClientCertOption = None,
    tls_client_key: TlsClientKeyOption = None,
    tls_server_name: TlsServerNameOption = None,
    token_file: CurationTokenFileOption = None,
) -> None:
    """Import a file of entries, all or nothing: a bad line is reported by number and nothing is applied."""
    import grpc
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    from moderation.v1 import banks_pb2 as bpb

    size = file.stat().st_size
    conn = connection(target, tls_ca, tls_client_cert, tls_client_key, tls_server_name, token_file)
    progress = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), console=err.current(), transient=True)

    def chunks(task: Any) -> Iterator[bpb.ImportEntriesRequest]:
        # Runs in gRPC's sending thread: rich's progress is thread-safe.
        with file.open("rb") as source:
            first = True
            while data := source.read(IMPORT_CHUNK_BYTES):
                yield bpb.ImportEntriesRequest(bank=bank, source=file.name, data=data) if first else bpb.ImportEntriesRequest(data=data)
                first = False
                progress.advance(task, len(data))
            if first:  # an empty file: one message naming the bank, so the server answers for it
                yield bpb.ImportEntriesRequest(bank=bank, source=file.name)

    with conn.stub() as (stub, metadata), progress:
        task = progress.add_task(f"importing {escape(file.name)}", total=size)
        try:
            response = stub.ImportEntries(chunks(task), timeout=timeout, metadata=metadata)
        except grpc.RpcError as error:
            progress.stop()
            bad = re.findall(r"\bline (\d+):", error.details() or "")
            exit_ = refused(error)
            if bad:
                err.print(f"bad lines: {', '.join(bad)}" + (" (the first ones; the message says how many in all)" if len(bad) >= 10 else ""), highlight=False)
            raise exit_ from None
    out.print(
        f"bank {escape(bank)}: {response.lines} lines, {response.added} added, {response.skipped} skipped as already there "
        f"(version {response.version})",
        highlight=False,
    )


@bank_app.command("export")
def export_entries(
    bank: Annotated[str, typer.Argument(help="the bank")],
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="file to write (default: stdout)", dir_okay=False)] = None,
    signal: Annotated[Optional[str], typer.Option(help="only this signal's entries: pdq, md5, sha256 or embedding")] = None,
    target: TargetOption = "localhost:50051",
    timeout: TimeoutOption = 3600.0,
    tls_ca: TlsCaOption = None,
    tls_client_cert: TlsClientCertOption = None,
    tls_client_key: TlsClientKeyOption = None,
    tls_server_name: TlsServerNameOption = None,
    token_file: CurationTokenFileOption = None,
) -> None:
    """Write a bank's entries as the lines `import` reads (content_id,signal_type,value,quality,note)."""
    import grpc

    from moderation.v1 import banks_pb2 as bpb

    request = bpb.ExportEntriesRequest(bank=bank, signal_type=signal_pb(signal))
    # A file is written beside its name and renamed when complete: a failed export leaves no half file behind.
    partial = output.with_name(output.name + ".partial") if output is not None else None
    with connection(target, tls_ca, tls_client_cert, tls_client_key, tls_server_name, token_file).stub() as (stub, metadata):
        try:
            sink = partial.open("wb") if partial is not None else sys.stdout.buffer
        except OSError as error:
            raise fail(f"cannot write {output}: {error.strerror}") from None
        try:
            for chunk in stub.ExportEntries(request, timeout=timeout, metadata=metadata):
                sink.write(chunk.data)
            sink.flush()
        except grpc.RpcError as error:
            if partial is not None:
                sink.close()
                partial.unlink(missing_ok=True)
            raise refused(error) from None
        if partial is not None and output is not None:
            sink.close()
            partial.replace(output)
            err.print(f"wrote {escape(output)}", highlight=False)


@bank_app.command("audit")
def audit(
    bank: Annotated[Optional[str], typer.Argument(help="only this bank (default: every bank)")] = None,
    limit: Annotated[int, typer.Option(help="newest rows, 1 to 1000")] = 100,
    as_json: JsonOption = False,
    target: TargetOption = "localhost:50051",
    timeout: TimeoutOption = 30.0,
    tls_ca: TlsCaOption = None,
    tls_client_cert: TlsClientCertOption = None,
    tls_client_key: TlsClientKeyOption = None,
    tls_server_name: TlsServerNameOption = None,
    token_file: CurationTokenFileOption = None,
) -> None:
    """Who changed which bank, when, and how many entries: newest first."""

    from moderation.v1 import banks_pb2 as bpb

    request = bpb.GetAuditRequest(bank=bank or "", limit=limit)
    with connection(target, tls_ca, tls_client_cert, tls_client_key, tls_server_name, token_file).stub() as (stub, metadata):
        response = called(lambda: stub.GetAudit(request, timeout=timeout, metadata=metadata))
    if as_json:
        print_json(message_document(response))
        return
    rows = [
        [when(e.at_unix), escape(e.who), escape(e.action), escape(e.bank), escape(e.content_id), str(e.count), escape(e.detail), str(e.version)]
        for e in response.entries
    ]
    columns = ["when", "who", "action", "bank", "content id", Column("count", "right"), "detail", Column("version", "right")]
    print_rows(f"{len(rows)} audit row{'s' if len(rows) != 1 else ''}, newest first", columns, rows)
