"""Which of the `torch` extra's packages this install lacks, found on the path without importing them.

The lean install and the scorer image have none of them; commands and settings that need
them say so in one line (importing torch and transformers to find out would take seconds).
"""

from __future__ import annotations

import importlib.util

TORCH_EXTRA = ("torch", "open_clip", "transformers")


def missing_modules(names: tuple[str, ...] = TORCH_EXTRA) -> list[str]:
    """The modules of `names` that cannot be imported here."""
    return [name for name in names if importlib.util.find_spec(name) is None]


def not_installed(missing: list[str]) -> str:
    """'torch is not installed' / 'torch, transformers are not installed'."""
    return f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed"
