"""`moderation case show`: from a request id in a diff, a shadow log line or the audit log back to the case.

Reads the embedding store (what was decided, when, under which version, by which
model) and, when the opt-in thumbnail store is on, the small JPEG kept of a flagged
case. Thumbnails are mode 0600 in a 0700 directory: run this as the server's user.
"""

from __future__ import annotations

import os
import shutil
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
from moderation.cli.render import age, print_rows


@case_app.command("show")
def case_show(
    request_id: Annotated[str, typer.Argument(help="the request id, as in the audit log, a shadow line or `policy diff`")],
    store: Annotated[Optional[Path], typer.Option(help="embedding store; default MODERATION_EMBEDDING_STORE")] = None,
    thumbnails: Annotated[Optional[Path], typer.Option(help="thumbnail store; default MODERATION_THUMBNAIL_STORE")] = None,
    copy_to: Annotated[Optional[Path], typer.Option("--out", help="copy the thumbnail to this file (mode 0600)", dir_okay=False)] = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Print what the server stored about one request: its decisions and, if kept, its thumbnail."""
    from datetime import datetime, timezone

    from moderation.state.embeddings import StoreError, find_decisions
    from moderation.state.thumbnails import thumbnail_path

    settings = settings_or_fail(config)
    store = store or settings.embedding_store
    thumbnails = thumbnails or settings.thumbnail_store
    if store is None and thumbnails is None:
        raise fail("nothing to look in: pass --store and/or --thumbnails, or set MODERATION_EMBEDDING_STORE / MODERATION_THUMBNAIL_STORE")

    decisions = None
    if store is not None:
        try:
            decisions = find_decisions(store, request_id)
        except StoreError as error:
            raise fail(str(error)) from None
    thumbnail = thumbnail_path(thumbnails, request_id) if thumbnails is not None else None
    try:
        has_thumbnail = thumbnail is not None and thumbnail.is_file()
        if has_thumbnail:
            with thumbnail.open("rb"):  # readable by this user? A permission error becomes one line
                pass
    except PermissionError:
        raise fail(f"{thumbnail} is readable only by the server's user (mode 0600); run this as that user") from None

    now = time.time()
    rows = []
    if decisions is not None:
        for i in range(len(decisions)):
            decided = datetime.fromtimestamp(float(decisions.timestamps[i]), timezone.utc)
            rows.append(
                {
                    "request_id": request_id,
                    "decided_at": decided.isoformat(),
                    "age_s": now - float(decisions.timestamps[i]),
                    "policy_id": decisions.policy_ids[i],
                    "policy_version": decisions.policy_versions[i],
                    "action": decisions.actions[i].value,
                    "model": decisions.model_ids[i],
                }
            )
    if has_thumbnail and copy_to is not None:
        descriptor = os.open(copy_to, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "wb") as target, thumbnail.open("rb") as source:
            shutil.copyfileobj(source, target)
    if thumbnails is None:
        thumbnail_note = "thumbnail store not given"
    elif has_thumbnail:
        thumbnail_note = str(thumbnail)
    else:
        thumbnail_note = "none (only flagged cases get one, and only while the thumbnail store is on and within its retention)"

    if as_json:
        print_json({"request_id": request_id, "decisions": rows, "thumbnail": str(thumbnail) if has_thumbnail else None})
    else:
        if store is not None and not rows:
            out.print(escape(f"{request_id}: no stored decision in {store} (not stored, or older than its retention)"), highlight=False)
        if rows:
            print_rows(
                escape(f"{request_id}: {len(rows)} stored decision{'s' if len(rows) > 1 else ''}"),
                ["decided (UTC)", "age", "policy", "action", "model"],
                [
                    [escape(r["decided_at"][:19]), age(r["age_s"]), escape(f"{r['policy_id']}@{r['policy_version']}"), r["action"], escape(r["model"])]
                    for r in rows
                ],
            )
        out.print(f"thumbnail: {escape(thumbnail_note)}", highlight=False)
        if has_thumbnail and copy_to is not None:
            out.print(f"copied to {escape(str(copy_to))}", highlight=False)
    if not rows and not has_thumbnail:
        raise typer.Exit(1)
