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


@pytest.fixture(scope="session")
def tiny_scorer(tiny_clip_model: str):  # noqa: ANN201 - torch is imported lazily
    """One seeded tiny random CLIP scorer shared by the tests that only read it."""
    from moderation.signals.clip import ClipModelSpec
    from moderation.runtime import load_scorer

    return load_scorer(ClipModelSpec(model=tiny_clip_model, weights="random"))  # seeded: the same random model every time


@pytest.fixture(scope="module")
def one_torch_thread():  # noqa: ANN201
    """Tiny models gain nothing from threads, and on a busy 2-core machine OpenMP's spinning
    threads make every matmul wait: one thread is ten times faster. Use per module."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def postgres_server():  # noqa: ANN201
    """One real PostgreSQL for the session (tests/postgres.py); every test gets its own database from `postgres_url`.

    Missing binaries fail the run under CI=true (the store must be tested against a real
    PostgreSQL there) and skip elsewhere.
    """
    from tests.postgres import postgres_for_test

    yield from postgres_for_test()


@pytest.fixture
def postgres_url(postgres_server, request: pytest.FixtureRequest) -> str:  # noqa: ANN001
    """The URL of a new, empty database on the session's PostgreSQL."""
    import re

    name = "t_" + re.sub(r"[^a-z0-9_]", "_", request.node.name.lower())[:40] + f"_{id(request) % 100000}"
    return postgres_server.create_database(name)
