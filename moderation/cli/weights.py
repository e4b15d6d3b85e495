"""`moderation weights list|prefetch`: the weight files a configuration needs, fetched once for air-gapped pods."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from moderation.cli.app import weights_app
from moderation.cli.common import (
    ConfigOption,
    ExplainerModelOption,
    ExplainerWeightsOption,
    JsonOption,
    ModelOption,
    WeightsOption,
    err,
    escape,
    fail,
    out,
    print_json,
    require_torch_extra,
    settings_or_fail,
)

CacheOption = Annotated[
    Optional[Path], typer.Option("--cache", help="the weights cache to look in (default: MODERATION_WEIGHTS_CACHE, else Hugging Face's)")
]
OnlyOption = Annotated[Optional[str], typer.Option("--only", help="clip or explainer (default: both)")]


def _components(only: str | None) -> tuple[str, ...]:
    if only is None:
        return ("clip", "explainer")
    if only not in ("clip", "explainer"):
        raise fail(f"--only must be clip or explainer, not {only!r}")
    return (only,)


def _settings(config, model, weights, explainer_model, explainer_weights, cache):  # noqa: ANN001, ANN202 - typer's values
    return settings_or_fail(
        config,
        clip_model=model,
        clip_weights=weights,
        explainer_model=explainer_model,
        explainer_weights=explainer_weights,
        weights_cache=cache,
    )


def _state_document(state) -> dict:  # noqa: ANN001 - a CacheState
    source = state.source
    return {
        "component": source.component,
        "configured": source.description,
        "kind": source.kind,
        "repo": source.repo,
        "files": list(source.files),
        "url": source.url,
        "note": source.note,
        "complete": state.complete,
        "missing": state.missing or None,
        "cached_files": [str(p) for p in state.files],
        "cached_bytes": state.size_bytes,
    }


def _print_states(states, cache: Path | None) -> None:  # noqa: ANN001 - CacheStates
    out.print(f"weights cache: {escape(cache) if cache else 'the default Hugging Face cache'}")
    for state in states:
        source = state.source
        out.print(f"\n[bold]{source.component}[/]: {escape(source.description)}")
        if source.kind == "nothing":
            out.print(f"  nothing to fetch: {escape(source.note)}")
            continue
        if source.kind == "url":
            out.print(f"  download {escape(source.url)}")
        else:
            what = "one of" if source.kind == "hub-file" and len(source.files) > 1 else "files"
            out.print(f"  hub repository {escape(source.repo)}, {what}: {escape(', '.join(source.files))}")
        if source.note and source.kind != "url":
            out.print(f"  note: {escape(source.note)}")
        if state.complete:
            out.print(f"  [green]cached[/]: {len(state.files)} files, {state.size_bytes / 1e6:,.1f} MB")
            for path in state.files:
                out.print(f"    {escape(path)}")
        else:
            out.print(f"  [red]missing[/]: {escape(state.missing)}")


@weights_app.command("list")
def list_weights(
    config: ConfigOption = None,
    model: ModelOption = None,
    weights: WeightsOption = None,
    explainer_model: ExplainerModelOption = None,
    explainer_weights: ExplainerWeightsOption = None,
    cache: CacheOption = None,
    only: OnlyOption = None,
    check: Annotated[bool, typer.Option("--check", help="exit 1 when the cache lacks a file serve needs")] = False,
    json_output: JsonOption = False,
) -> None:
    """Name every weight file `serve` would load with these settings, and whether the cache holds it.

    Looked up exactly as `serve` does with downloads off (MODERATION_ALLOW_DOWNLOADS=false), so
    a cache this calls complete is one an air-gapped pod starts from.
    """
    require_torch_extra("weights")  # open_clip names a tag's files, huggingface_hub finds them
    from moderation.ops.model_weights import PrefetchFailed, check_offline, required_sources

    settings = _settings(config, model, weights, explainer_model, explainer_weights, cache)
    try:
        sources = required_sources(settings, _components(only))
    except PrefetchFailed as error:
        raise fail(str(error)) from None
    states = [check_offline(source, settings, settings.weights_cache) for source in sources]
    if json_output:
        print_json({"cache": str(settings.weights_cache) if settings.weights_cache else None, "sources": [_state_document(s) for s in states]})
    else:
        _print_states(states, settings.weights_cache)
    if check and not all(state.complete for state in states):
        raise typer.Exit(1)


@weights_app.command("prefetch")
def prefetch_weights(
    cache: Annotated[Path, typer.Argument(help="the folder to fill (Hugging Face cache layout); mount it as MODERATION_WEIGHTS_CACHE")],
    config: ConfigOption = None,
    model: ModelOption = None,
    weights: WeightsOption = None,
    explainer_model: ExplainerModelOption = None,
    explainer_weights: ExplainerWeightsOption = None,
    only: OnlyOption = None,
    json_output: JsonOption = False,
) -> None:
    """Download the weights `serve` needs into CACHE, then check CACHE with downloads off, as an air-gapped pod reads it.

    Run it where the model hub is reachable (HF_ENDPOINT names a mirror), then copy CACHE to the volume
    the pods mount read-only. Files already in CACHE are not downloaded again.
    """
    require_torch_extra("weights")
    from moderation.ops.model_weights import PrefetchFailed, check_offline, prefetch, required_sources

    settings = _settings(config, model, weights, explainer_model, explainer_weights, cache)
    try:
        sources = required_sources(settings, _components(only))
        for source in sources:
            if source.kind == "nothing":
                continue
            err.print(f"fetching the {source.component} weights: {escape(source.repo or source.url)}", highlight=False)
            prefetch(source, cache)
    except PrefetchFailed as error:
        raise fail(str(error)) from None
    states = [check_offline(source, settings, cache) for source in sources]
    if json_output:
        print_json({"cache": str(cache), "sources": [_state_document(s) for s in states]})
    else:
        _print_states(states, cache)
    incomplete = [state for state in states if not state.complete]
    if incomplete:
        raise fail(f"{incomplete[0].source.component}: fetched, but serve would not find it: {incomplete[0].missing}")
    if not json_output:
        out.print(f"\n[green]ready[/]: serve with MODERATION_WEIGHTS_CACHE={escape(cache)} MODERATION_ALLOW_DOWNLOADS=false")
