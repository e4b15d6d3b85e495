"""`moderation case show`: from a request id in a diff, a shadow log line or the audit log back to the case.

Reads the state store (what was decided, when, under which version, by which
model: a PostgreSQL database every replica shares, or a SQLite file) and, when
thumbnails are on, the small JPEG kept of a flagged case: a row of the same database,
or a file (mode 0600 in a 0700 directory: run this as the server's user).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from moderation.cli.app import case_app
from moderation.cli.common import (
    escape,
    ConfigOption,
    JsonOption,
    fail,
    out,
    print_json,
    settings_or_fail,
)
from moderation.cli.render import Column, age, print_rows


@case_app.command("show")
def case_show(
    request_id: Annotated[str, typer.Argument(help="the request id, as in the audit log, a shadow line or `policy diff`")],
    store: Annotated[
        Optional[str],
        typer.Option(help="state store: postgresql://..., sqlite:///path or a SQLite file; "
                     "default MODERATION_DATABASE_URL, else MODERATION_EMBEDDING_STORE"),
    ] = None,
    thumbnails: Annotated[
        Optional[Path], typer.Option(help="thumbnail directory (stores without database_url); default MODERATION_THUMBNAIL_STORE")
    ] = None,
    copy_to: Annotated[Optional[Path], typer.Option("--out", help="copy the thumbnail to this file (mode 0600)", dir_okay=False)] = None,
    caller: Annotated[
        Optional[str],
        typer.Option(help="whose case: token:NAME, mtls:SUBJECT or anonymous (as in the audit log); without it, "
                     "every caller's who used this request id (--out then needs it when there are several)"),
    ] = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Print what the server stored about one request: its decisions and, if kept, its thumbnail."""
    from datetime import datetime, timezone

    from moderation.state.records import StoreError
    from moderation.state.store import is_database_url, open_store, redact_url
    from moderation.state.thumbnails import thumbnail_path, thumbnail_paths

    settings = settings_or_fail(config)
    store = store or settings.database_url or (str(settings.embedding_store) if settings.embedding_store else None)
    # A database store keeps thumbnails as rows; a directory is only for stores without database_url.
    in_database = is_database_url(store)
    thumbnails = thumbnails or (None if in_database else settings.thumbnail_store)
    if store is None and thumbnails is None:
        raise fail(
            "nothing to look in: pass --store and/or --thumbnails, or set MODERATION_DATABASE_URL "
            "(or MODERATION_EMBEDDING_STORE / MODERATION_THUMBNAIL_STORE)"
        )

    decisions = None
    # A case is a caller's request id. With --caller, that caller's case; without, every
    # caller's who used this request id (usually one): (caller, where it is kept, the JPEG).
    kept: list[tuple[str | None, str, bytes]] = []
    if store is not None:
        try:
            with open_store(store, read_only=True) as opened:
                decisions = opened.find_decisions(request_id, caller)
                if in_database:
                    for owner in [caller] if caller is not None else opened.thumbnail_callers(request_id):
                        if (row := opened.load_thumbnail(request_id, owner)) is not None:
                            kept.append((owner, f"{len(row)} bytes in {redact_url(store)}", row))
        except StoreError as error:
            raise fail(str(error)) from None
    if thumbnails is not None and not in_database:
        # File names are digests: a file's caller is known by matching the callers stored with decisions.
        known = {c: c for c in (decisions.callers if decisions is not None else ())} | {"anonymous": "anonymous"}
        owners = {thumbnail_path(thumbnails, request_id, c): c for c in ([caller] if caller is not None else known)}
        paths = list(owners) if caller is not None else thumbnail_paths(thumbnails, request_id)
        for path in paths:
            try:
                kept.append((owners.get(path), str(path), path.read_bytes()))
            except FileNotFoundError:
                continue
            except PermissionError:
                raise fail(f"{path} is readable only by the server's user (mode 0600); run this as that user") from None
    jpeg = kept[0][2] if len(kept) == 1 else None
    if len(kept) == 1:
        thumbnail_note = kept[0][1]
    elif kept:
        thumbnail_note = f"{len(kept)} callers used this request id, one thumbnail each: pick one with --caller"
    elif thumbnails is not None or in_database:
        thumbnail_note = (
            "none (only flagged cases get one, only while the server keeps thumbnails: keep_thumbnails / "
            "MODERATION_KEEP_THUMBNAILS with a database_url, or thumbnail_store, and only within thumbnail_retention_days)"
        )
    else:
        thumbnail_note = (
            "off: no thumbnail store. To keep a small JPEG of each flagged case, set keep_thumbnails: true "
            "(MODERATION_KEEP_THUMBNAILS=true) on a server with database_url, or thumbnail_store: DIR "
            "(MODERATION_THUMBNAIL_STORE) on one with a SQLite file; here, pass --thumbnails DIR for a directory"
        )
    if copy_to is not None and len(kept) > 1:
        raise fail(f"{len(kept)} callers used request id {request_id!r}: pass --caller to say whose thumbnail --out copies")

    now = time.time()
    rows = []
    if decisions is not None:
        for i in range(len(decisions)):
            decided = datetime.fromtimestamp(float(decisions.timestamps[i]), timezone.utc)
            rows.append(
                {
                    "request_id": request_id,
                    "caller": decisions.callers[i] if decisions.callers else "",
                    "decided_at": decided.isoformat(),
                    "age_s": now - float(decisions.timestamps[i]),
                    "policy_id": decisions.policy_ids[i],
                    "policy_version": decisions.policy_versions[i],
                    "action": decisions.actions[i].value,
                    "model": decisions.model_ids[i],
                    # What decided it: categories (score, thresholds, band, clause, action), reasons, the
                    # explainer's answer, each shadow policy's action; {} for decisions stored before these were kept.
                    "details": decisions.details[i] if decisions.details else {},
                }
            )
    if jpeg is not None and copy_to is not None:
        descriptor = os.open(copy_to, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "wb") as target:
            target.write(jpeg)

    if as_json:
        # "thumbnail": the file's path, or where in the database; null when none is kept, or when several
        # callers each have one ("thumbnails" lists every caller's; a caller is null when no decision names it).
        print_json(
            {
                "request_id": request_id,
                "decisions": rows,
                "thumbnail": thumbnail_note if jpeg is not None else None,
                "thumbnails": [{"caller": owner, "thumbnail": where} for owner, where, _ in kept],
            }
        )
    else:
        if store is not None and not rows:
            out.print(escape(f"{request_id}: no stored decision in {redact_url(store)} (not stored, or older than its retention)"), highlight=False)
        if rows:
            print_rows(
                escape(f"{request_id}: {len(rows)} stored decision{'s' if len(rows) > 1 else ''}"),
                ["caller", "decided (UTC)", "age", "policy", "action", "model"],
                [
                    [
                        escape(r["caller"] or "(not recorded)"), escape(r["decided_at"][:19]), age(r["age_s"]),
                        escape(f"{r['policy_id']}@{r['policy_version']}"), r["action"], escape(r["model"]),
                    ]  # fmt: skip
                    for r in rows
                ],
            )
        for r in rows:
            _print_details(r, several=len(rows) > 1)
        out.print(f"thumbnail: {escape(thumbnail_note)}", highlight=False)
        if len(kept) > 1:
            for owner, where, _ in kept:
                out.print(f"  {escape(owner if owner is not None else '(caller not recorded)')}: {escape(where)}", highlight=False)
        if jpeg is not None and copy_to is not None:
            out.print(f"copied to {escape(str(copy_to))}", highlight=False)
    if not rows and not kept:
        raise typer.Exit(1)


def _print_details(row: dict, several: bool) -> None:
    """Scores against thresholds, reasons, the explainer's rationale and the shadows' actions of one stored decision."""
    details = row["details"]
    whose = f" ({escape(row['caller'] or 'caller not recorded')})" if several else ""
    if not details.get("categories"):
        why = details.get("omitted") or "decided before this release kept scores, thresholds and rationales"
        out.print(f"scores{whose}: not stored ({escape(why)})", highlight=False)
        return
    columns = ["category (clause)", Column("score", "right"), Column("review at", "right"), Column("block at", "right"), "band", "action"]
    cells = [
        [
            escape(f"{c['id']} ({c['clause']})"), f"{c['score']:.3f}", f"{c['review']:.6g}", f"{c['block']:.6g}", escape(c["band"]),
            escape(c["action"] + (f" (by {c['forced_by']})" if c.get("forced_by") else "")),
        ]  # fmt: skip
        for c in details["categories"]
    ]
    print_rows(f"scores against thresholds{whose}", columns, cells)
    for reason in details.get("reasons", []):
        out.print(f"  {escape(reason)}", highlight=False)
    escalation = details.get("escalation")
    if escalation is not None:
        if "rationale" in escalation:
            said = "violates" if escalation.get("violates") else "does not violate"
            out.print(
                f"explainer ({escape(escalation.get('model', ''))}, {escape(escalation.get('category', ''))}): {said}, "
                f"confidence {float(escalation.get('confidence', 0)):.2f}; rationale: {escape(escalation['rationale'])}",
                highlight=False,
            )
        else:
            out.print(f"explainer: {escape(escalation['status'])}{': ' + escape(escalation['reason']) if escalation.get('reason') else ''}", highlight=False)
    else:
        out.print("explainer: not asked (no category was borderline)", highlight=False)
    shadows = details.get("shadows", [])
    for shadow in shadows:
        disagree = shadow.get("disagree") or []
        verdict = f"disagrees on {', '.join(disagree)}" if disagree else "agrees on every category"
        out.print(
            escape(f"shadow {shadow['policy_id']}@{shadow['version']}: {shadow['action']}, {verdict}"),
            highlight=False,
        )
    if not shadows:
        out.print("shadow: none served beside this policy then", highlight=False)
