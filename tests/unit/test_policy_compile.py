"""Compiles that stop: on close, over their budget, when a newer edit supersedes them."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from moderation.signals.clip import ClipScorer
from moderation.policy import Policy, load_policy_text
from moderation.policy.compile import CompileCancelled, CompileControl
from moderation.policy.registry import PolicyRegistry
from moderation.serving.policy_reload import PolicyReloader
from tests.conftest import ROOT
from tests.policies import one_category_yaml



def write(directory: Path, version: str) -> None:
    (directory / "p.yaml").write_text(one_category_yaml(version))


def slow_for(heavy: str, seconds: float = 60.0):  # noqa: ANN201
    """A compile callable that takes `seconds` for version `heavy` (checking should_stop every 50 ms), no time otherwise."""

    def compile_policy(policy: Policy, should_stop) -> str:  # noqa: ANN001
        if policy.version == heavy:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                if should_stop():
                    raise CompileCancelled("stopped")
                time.sleep(0.05)
        return policy.version

    return compile_policy


def reloader_for(directory: Path, compile_policy, budget_s: float | None = 60.0, outcomes: list[str] | None = None) -> PolicyReloader:  # noqa: ANN001
    registry = PolicyRegistry(compile_policy, model_id="m")
    count = outcomes.append if outcomes is not None else (lambda outcome: None)
    reloader = PolicyReloader(registry, directory, count_outcome=count, compile_budget_s=budget_s)
    reloader.load_now()
    return reloader


def test_control_stops_on_cancel_and_past_its_budget() -> None:
    now = [0.0]
    control = CompileControl(budget_s=10, clock=lambda: now[0])
    assert not control.should_stop()
    now[0] = 10.0
    assert control.should_stop()
    error = control.cancelled("p@1")
    assert error.over_budget and "p@1: computing text embeddings took longer than the 10 s compile budget" in str(error)

    cancelled = CompileControl()
    cancelled.cancel("shutting down")
    cancelled.cancel("a later reason is not kept")
    assert cancelled.should_stop() and str(cancelled.cancelled("p@1")) == "p@1: shutting down"
    assert not cancelled.cancelled("p@1").over_budget


def test_scorer_stops_between_chunks(tiny_scorer: ClipScorer) -> None:
    policy = load_policy_text(one_category_yaml("1"))
    calls = []

    def stop_after_first_chunk() -> bool:
        calls.append(1)
        return len(calls) > 1

    with pytest.raises(CompileCancelled, match="stopped after 64 of 130 texts"):
        tiny_scorer.encode_prompts([f"prompt {i}" for i in range(65)], ["a {}.", "the {}."], stop_after_first_chunk)
    assert len(tiny_scorer.index_policy(policy, lambda: False).embeddings) == 2
    with pytest.raises(CompileCancelled):
        tiny_scorer.index_policy(policy, lambda: True)


def test_close_cancels_a_compile_in_progress_and_the_served_version_stays(tmp_path: Path) -> None:
    write(tmp_path, "1")
    reloader = reloader_for(tmp_path, slow_for("heavy"))
    write(tmp_path, "heavy")

    async def reload_then_close() -> tuple[bool, float]:
        reloading = asyncio.create_task(reloader.reload())
        await asyncio.sleep(0.5)  # the compile is under way
        started = time.monotonic()
        reloader.close()
        result = await asyncio.wait_for(reloading, 5)
        return result, time.monotonic() - started

    result, close_s = asyncio.run(reload_then_close())
    assert result is False
    assert close_s < 2, f"close() took {close_s:.1f} s"
    assert reloader.registry.get().policy.version == "1"
    with pytest.raises(CompileCancelled, match="shutting down"):
        reloader.load_now()


def test_a_compile_over_budget_is_refused_with_a_log_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write(tmp_path, "1")
    outcomes: list[str] = []
    reloader = reloader_for(tmp_path, slow_for("heavy"), budget_s=0.3, outcomes=outcomes)
    write(tmp_path, "heavy")
    started = time.monotonic()
    with caplog.at_level(logging.ERROR):
        assert asyncio.run(reloader.reload()) is False
    assert time.monotonic() - started < 5
    assert "policy edit rejected, previous versions keep serving: p@heavy: computing text embeddings took longer than the 0.3 s compile budget" in caplog.text
    assert outcomes == ["ok", "error"], "the start counted ok, the refused edit error"
    assert reloader.registry.get().policy.version == "1"
    write(tmp_path, "2")
    assert asyncio.run(reloader.reload()) is True
    assert reloader.registry.get().policy.version == "2"
    reloader.close()


def test_a_newer_edit_supersedes_a_compile_in_progress(tmp_path: Path) -> None:
    write(tmp_path, "1")
    reloader = reloader_for(tmp_path, slow_for("heavy"))

    async def edit_twice() -> float:
        stop = asyncio.Event()
        watching = asyncio.create_task(reloader.watch(stop))
        await asyncio.sleep(0.5)
        write(tmp_path, "heavy")
        await asyncio.sleep(2.0)  # seen, and compiling for the next 60 s
        started = time.monotonic()
        write(tmp_path, "2")
        try:
            while reloader.registry.get().policy.version != "2":
                assert time.monotonic() - started < 20, "the newer edit waited behind the heavy compile"
                await asyncio.sleep(0.1)
            return time.monotonic() - started
        finally:
            stop.set()
            await asyncio.wait_for(watching, 10)
            reloader.close()

    assert asyncio.run(edit_twice()) < 20


def test_a_stuck_reload_thread_never_holds_the_process_at_exit(tmp_path: Path) -> None:
    # A compile that never checks should_stop: the process must still exit.
    script = textwrap.dedent(
        f"""
        import asyncio, time
        from pathlib import Path
        from moderation.policy.registry import PolicyRegistry
        from moderation.serving.policy_reload import PolicyReloader

        directory = Path({str(tmp_path)!r})
        def compile_policy(policy, should_stop):
            if policy.version == "heavy":
                time.sleep(60)
            return policy.version
        reloader = PolicyReloader(PolicyRegistry(compile_policy, "m"), directory)
        reloader.load_now()
        (directory / "p.yaml").write_text((directory / "p.yaml").read_text().replace('version: "1"', 'version: "heavy"'))

        async def main():
            reloading = asyncio.ensure_future(reloader.reload())
            await asyncio.sleep(0.5)
            reloader.close(wait_s=0.5)
        asyncio.run(main())
        print("closed", flush=True)
        """
    )
    write(tmp_path, "1")
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=50)
    assert result.returncode == 0, result.stderr
    assert "closed" in result.stdout
    assert time.monotonic() - started < 30
