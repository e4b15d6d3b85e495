"""Which weight files a configuration needs, whether a cache holds them, and fetching them once.

For air-gapped clusters: `moderation weights list` names every file the configured CLIP
model and SmolVLM2 explainer load, and where each sits in the Hugging Face cache layout;
`moderation weights prefetch DIR` downloads them into DIR on a machine that can reach the
hub, then checks DIR the way `serve` reads it with downloads off. DIR is then copied to
the read-only volume mounted as MODERATION_WEIGHTS_CACHE (docs/deploy.md).

The files are found exactly as the loaders find them (moderation/signals/clip/loading.py,
moderation/escalation/loading.py), so a cache that passes `check_offline` is one the server
starts from without a network.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from moderation.escalation.availability import SHIPPED_ARCHITECTURES, explainer_available
from moderation.ops.config import RANDOM_WEIGHTS, ExplainerMode, Settings
from moderation.signals.clip.loading import (
    HUB_MODEL_FILES,
    ClipModelSpec,
    WeightsUnavailable,
    hub_file_candidates,
    looks_like_path,
    resolve_sources,
)

# What AutoProcessor + AutoModelForImageTextToText read from an explainer repository:
# config, generation config, processor, tokenizer and chat template files, and the
# safetensors weights (sharded or not). Left out: other formats (onnx/, *.bin, gguf).
EXPLAINER_FILES = ["*.json", "*.jinja", "*.txt", "*.model", "model.safetensors", "model-*.safetensors"]

Component = Literal["clip", "explainer"]
Kind = Literal["hub-file", "hub-repo", "url", "nothing"]


class PrefetchFailed(RuntimeError):
    """A file could not be fetched or is not where `serve` looks. One line, says what to change."""


@dataclass(frozen=True, slots=True)
class WeightsSource:
    """Where one component's weights come from under the given settings."""

    component: Component
    description: str  # the setting that names it, e.g. "ViT-B-32 / laion2b_s34b_b79k"
    kind: Kind
    repo: str | None = None  # hub repository (hub-file, hub-repo)
    files: tuple[str, ...] = ()  # hub-file: file names, the first one found is used; hub-repo: patterns
    url: str | None = None  # url: published only as a plain download
    note: str = ""  # why nothing is fetched, or what else to set


@dataclass(slots=True)
class CacheState:
    """What a cache holds of one source: the local files found, or why it falls short."""

    source: WeightsSource
    files: list[Path] = field(default_factory=list)
    missing: str = ""  # empty: complete

    @property
    def complete(self) -> bool:
        return not self.missing

    @property
    def size_bytes(self) -> int:
        return sum(path.stat().st_size for path in self.files if path.is_file())


def required_sources(settings: Settings, components: tuple[Component, ...] = ("clip", "explainer")) -> list[WeightsSource]:
    """The weights `serve` (and `explain-serve`) would load with these settings."""
    sources: list[WeightsSource] = []
    if "clip" in components:
        sources.append(_clip_source(settings))
    if "explainer" in components:
        sources.append(_explainer_source(settings))
    return sources


def _clip_source(settings: Settings) -> WeightsSource:
    model, weights = settings.clip_model, settings.clip_weights
    described = f"{model} / {weights}"
    if settings.clip_model_dir is not None:
        return WeightsSource("clip", f"exported folder {settings.clip_model_dir}", "nothing", note="an exported model folder holds its own towers")
    if weights == RANDOM_WEIGHTS:
        return WeightsSource("clip", described, "nothing", note="random weights: nothing to fetch (meaningless scores)")
    if model.startswith("local-dir:"):
        return WeightsSource("clip", described, "nothing", note="a local folder: copy it beside the cache yourself")
    if model.startswith("hf-hub:"):
        return WeightsSource("clip", model, "hub-repo", repo=model.removeprefix("hf-hub:"), files=tuple(HUB_MODEL_FILES))
    if looks_like_path(weights):
        return WeightsSource("clip", described, "nothing", note="a local checkpoint file: copy it where the pods can read it")
    import open_clip

    cfg = open_clip.get_pretrained_cfg(model, weights)
    if not cfg:
        tags = ", ".join(t for m, t in open_clip.list_pretrained() if m == model) or "none"
        raise PrefetchFailed(f"open_clip has no pretrained tag {weights!r} for {model} (its tags: {tags})")
    if cfg.get("hf_hub"):
        repo, names = hub_file_candidates(cfg["hf_hub"])
        return WeightsSource("clip", described, "hub-file", repo=repo, files=tuple(names))
    return WeightsSource(
        "clip",
        described,
        "url",
        url=cfg.get("url"),
        note="published only as a URL: download it and set MODERATION_CLIP_WEIGHTS to the file's path",
    )


def _explainer_source(settings: Settings) -> WeightsSource:
    model, weights = settings.explainer_model, settings.explainer_weights
    described = f"{model} / {weights}"
    if settings.explainer_mode == ExplainerMode.OFF:
        return WeightsSource("explainer", described, "nothing", note="explainer_mode is off")
    if weights == RANDOM_WEIGHTS:
        shipped = "shipped architecture" if model in SHIPPED_ARCHITECTURES else "architecture config"
        return WeightsSource("explainer", described, "nothing", note=f"random weights from the {shipped}: nothing to fetch")
    if Path(model).is_dir():
        return WeightsSource("explainer", described, "nothing", note="a local folder: copy it where the pods can read it")
    note = "" if settings.explainer_mode != ExplainerMode.REMOTE else "needed by the explain-serve pods, not by the scorer"
    return WeightsSource("explainer", described, "hub-repo", repo=model, files=tuple(EXPLAINER_FILES), note=note)


def check_offline(source: WeightsSource, settings: Settings, cache_dir: Path | None) -> CacheState:
    """Whether `cache_dir` holds what `serve` needs, looked up as `serve` does with downloads off."""
    state = CacheState(source)
    if source.kind == "nothing":
        return state
    if source.kind == "url":
        state.missing = f"{source.url} is not fetched into a cache; {source.note}"
        return state
    if source.component == "clip":
        spec = ClipModelSpec(model=settings.clip_model, weights=settings.clip_weights, cache_dir=cache_dir, allow_downloads=False)
        try:
            _, local, _ = resolve_sources(spec)
        except WeightsUnavailable as error:
            state.missing = str(error)
            return state
        except Exception as error:  # noqa: BLE001 - huggingface_hub reports a missing file with several types
            state.missing = _first_line(error)
            return state
        state.files = [Path(local)] if local else _snapshot_files(source, cache_dir)
        return state
    available, _ = explainer_available(settings.explainer_model, settings.explainer_weights, cache_dir, allow_downloads=False)
    if not available:
        where = f"the weights cache {cache_dir}" if cache_dir else "the default Hugging Face cache"
        state.missing = f"{settings.explainer_model}'s config.json and model weights are not in {where}"
        return state
    state.files = _snapshot_files(source, cache_dir)
    return state


def prefetch(source: WeightsSource, cache_dir: Path) -> list[Path]:
    """Download one source's files into `cache_dir` (Hugging Face cache layout); the local paths."""
    from huggingface_hub import hf_hub_download, snapshot_download

    cache_dir.mkdir(parents=True, exist_ok=True)
    try:
        if source.kind == "hub-repo":
            folder = snapshot_download(source.repo, cache_dir=str(cache_dir), allow_patterns=list(source.files))
            return _files_in(folder)
        if source.kind == "hub-file":
            last_error: Exception | None = None
            for name in source.files:
                try:
                    return [Path(hf_hub_download(source.repo, name, cache_dir=str(cache_dir)))]
                except Exception as error:  # noqa: BLE001 - try the next file name, report the last failure
                    last_error = error
            raise last_error or FileNotFoundError(source.repo)
        if source.kind == "url":
            import open_clip

            cfg = {"url": source.url}
            return [Path(open_clip.download_pretrained(cfg, cache_dir=str(cache_dir)))]
    except PrefetchFailed:
        raise
    except Exception as error:  # noqa: BLE001 - network, HTTP and file errors all end the same way
        where = source.repo or source.url
        raise PrefetchFailed(f"cannot fetch the {source.component} weights from {where}: {_first_line(error)}") from error
    return []


def _snapshot_files(source: WeightsSource, cache_dir: Path | None) -> list[Path]:
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(
            source.repo, cache_dir=str(cache_dir) if cache_dir else None, allow_patterns=list(source.files), local_files_only=True
        )
    except Exception:  # noqa: BLE001 - nothing cached under that name
        return []
    return _files_in(folder)


def _files_in(folder: str | Path) -> list[Path]:
    return sorted(p for p in Path(folder).rglob("*") if p.is_file())


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    line = text[0] if text else type(error).__name__
    return line if len(line) <= 200 else line[:197] + "..."
