from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TINY_CLIP = ROOT / "tests" / "fixtures" / "tiny-clip"
POLICIES = ROOT / "policies"


@pytest.fixture(scope="session")
def tiny_clip_model() -> str:
    """A tiny random-initialised open_clip architecture described as data."""
    return f"local-dir:{TINY_CLIP}"
