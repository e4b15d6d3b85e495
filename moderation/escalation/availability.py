"""Can the explainer's weights be had, decided in about a second, without loading torch or transformers?

`explainer_mode: auto` (the default) runs the SmolVLM2 tier in-process when this says
yes, and turns it off with the reason when it says no. Yes means: random weights
with a known architecture; a local folder with config.json; a hub id whose config
and weights are in the cache; or, when downloads are allowed and HF_HUB_OFFLINE is
unset, a hub that accepts a connection within PROBE_TIMEOUT_S (the weights then
download while the server starts, as CLIP's do). Never without the `torch` extra's
packages: the lean install and the scorer image serve without them.
"""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path
from urllib.parse import urlsplit

from moderation.ops.config import RANDOM_WEIGHTS
from moderation.ops.extras import missing_modules, not_installed

DEFAULT_EXPLAINER_MODEL = "HuggingFaceTB/SmolVLM2-256M-Video-Instruct"
TINY_TEST_MODEL = "tiny-smolvlm"
ARCHITECTURES_DIR = Path(__file__).parent / "architectures"
SHIPPED_ARCHITECTURES = {
    DEFAULT_EXPLAINER_MODEL: ARCHITECTURES_DIR / "smolvlm2-256m.json",
    TINY_TEST_MODEL: ARCHITECTURES_DIR / "tiny-smolvlm.json",
}
PROBE_TIMEOUT_S = 1.5
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
# What the in-process explainer imports, all from the `torch` extra.
_EXTRA_MODULES = ("torch", "transformers", "huggingface_hub")


def explainer_available(
    model: str, weights: str, cache_dir: Path | None, allow_downloads: bool, probe_timeout_s: float = PROBE_TIMEOUT_S
) -> tuple[bool, str]:
    """(available, why) for the explainer these settings name."""
    # Found on the path, not imported: importing torch and transformers takes seconds.
    missing = missing_modules(_EXTRA_MODULES)
    if missing:
        return False, (
            f"the in-process explainer needs the torch extra, and {not_installed(missing)} here "
            "(pip install 'moderation[torch]', or run explain-serve elsewhere and set explainer_target)"
        )
    if weights == RANDOM_WEIGHTS:
        path = SHIPPED_ARCHITECTURES.get(model) or Path(model)
        if path.is_dir():
            path = path / "config.json"
        if path.is_file():
            return True, f"random weights built from the {model} architecture (meaningless rationales, smoke tests only)"
        return False, f"no architecture config for {model!r} to build random weights from"
    folder = Path(model)
    if folder.is_dir():
        if (folder / "config.json").is_file():
            return True, f"its weights are in the local folder {model}"
        return False, f"{model} is a folder without config.json"
    if _cached(model, cache_dir):
        return True, f"{model} is in the weights cache"
    if not allow_downloads:
        return False, f"{model} is not in the weights cache and downloads are off (MODERATION_ALLOW_DOWNLOADS=false)"
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return False, f"{model} is not in the weights cache and HF_HUB_OFFLINE is set"
    from huggingface_hub import constants

    endpoint = os.environ.get("HF_ENDPOINT") or constants.ENDPOINT
    if _reachable(endpoint, probe_timeout_s):
        return True, f"{model} is not cached but {endpoint} answers: it downloads while the server starts"
    return False, f"{model} is not in the weights cache and {endpoint} did not answer within {probe_timeout_s:g} s"


def _cached(model: str, cache_dir: Path | None) -> bool:
    from huggingface_hub import try_to_load_from_cache

    if model.count("/") != 1:
        return False  # not a hub id
    try:
        directory = str(cache_dir) if cache_dir else None
        config = try_to_load_from_cache(model, "config.json", cache_dir=directory)
        if not isinstance(config, str):
            return False
        return any(isinstance(try_to_load_from_cache(model, name, cache_dir=directory), str) for name in _WEIGHT_FILES)
    except (ValueError, OSError):  # a malformed id, an unreadable cache
        return False


def _reachable(endpoint: str, timeout_s: float) -> bool:
    """Whether a TCP connection to the hub opens within timeout_s, name lookup included."""
    parts = urlsplit(endpoint)
    host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    if not host:
        return False
    result: list[bool] = []

    def connect() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout_s):
                result.append(True)
        except OSError:
            result.append(False)

    # getaddrinfo has no timeout of its own: a thread bounds the whole attempt.
    thread = threading.Thread(target=connect, name="explainer-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout_s)
    return bool(result and result[0])
