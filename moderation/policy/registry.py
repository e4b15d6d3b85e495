"""The set of policies a server serves, each compiled for the loaded model.

No torch here: compiling a policy (computing its text embeddings) is a function
the server passes in, so this module stays testable without a model. It is called
as `compile_policy(policy, should_stop)` and must call `should_stop()` between
chunks of work, raising CompileCancelled when it returns True (see compile.py).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Generic, TypeVar

from moderation.policy.compile import CompileCancelled, CompileControl, ShouldStop
from moderation.policy.directory import (
    POLICY_SUFFIXES,
    Baseline,
    ModelRule,
    PolicyVersion,
    check_policy_dir,
    load_policy_dir,
    policy_files,
)
from moderation.policy.schema import Policy, PolicyMode, content_sha256

log = logging.getLogger(__name__)

Compiled = TypeVar("Compiled")
CompilePolicy = Callable[[Policy, ShouldStop], Compiled]
__all__ = [
    "POLICY_SUFFIXES", "CompilePolicy", "LoadSummary", "PolicyNotFound", "PolicyRegistry", "ServedPolicy",
    "describe", "load_policy_dir", "policy_files",
]  # fmt: skip


class PolicyNotFound(KeyError):
    def __init__(self, policy_id: str, known: Iterable[str]):
        self.policy_id = policy_id
        super().__init__(f"no policy {policy_id!r} is served; served policies: {', '.join(sorted(known)) or 'none'}")

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class ServedPolicy(Generic[Compiled]):
    policy: Policy
    source_path: Path
    source_text: str
    compiled: Compiled

    @cached_property
    def content_sha256(self) -> str:
        """What GetPolicy and ListPolicies report, and what a version check compares."""
        return content_sha256(self.policy)


@dataclass(frozen=True)
class _Snapshot(Generic[Compiled]):
    policies: dict[str, ServedPolicy[Compiled]]  # active and shadow
    default_id: str | None
    shadows: dict[str, tuple[ServedPolicy[Compiled], ...]] = field(default_factory=dict)  # by active id

    @property
    def active(self) -> dict[str, ServedPolicy[Compiled]]:
        return {k: v for k, v in self.policies.items() if v.policy.mode is PolicyMode.ACTIVE}


@dataclass(frozen=True)
class LoadSummary:
    served: tuple[str, ...]  # "id@version" of every served policy
    compiled: tuple[str, ...]  # new or changed, text embeddings computed
    removed: tuple[str, ...]


class PolicyRegistry(Generic[Compiled]):
    """Served policies by id.

    Readers take one immutable snapshot per request, so a request finishes on the
    versions it started with; `load_directory` builds the next snapshot off to
    the side and swaps it in with one assignment. A load that fails leaves the
    current snapshot serving.
    """

    def __init__(self, compile_policy: CompilePolicy[Compiled], model_id: str | None, random_weights: bool = False):
        """`model_id` None: the server scores nothing (the explainer), so no model check applies."""
        self._compile = compile_policy
        self._model_id = model_id
        self._random_weights = random_weights
        self._snapshot: _Snapshot[Compiled] = _Snapshot({}, None)
        # Serialises loads (the watcher and a manual reload must not interleave).
        self._load_lock = threading.Lock()

    @property
    def model_id(self) -> str | None:
        return self._model_id

    @property
    def random_weights(self) -> bool:
        return self._random_weights

    def load_directory(self, directory: Path, control: CompileControl | None = None) -> LoadSummary:
        """Validate every file, compile new or changed policies, then swap.

        Raises PolicyFileError (nothing valid to swap in) or CompileCancelled (stopped
        through `control`, or over its budget); either way the current snapshot keeps serving.
        """
        control = control or CompileControl()
        with self._load_lock:
            current = self._snapshot.policies
            served_now = Baseline({k: PolicyVersion(v.policy.version, v.content_sha256) for k, v in current.items()})
            checked = check_policy_dir(
                directory,
                model=ModelRule(self._model_id, self._random_weights) if self._model_id is not None else None,
                baselines=[served_now],
            )
            for warning in checked.warnings:
                log.warning("%s", warning)
            served, compiled = [], []
            for entry in checked.policies:
                old = current.get(entry.policy.id)
                if old is not None and old.content_sha256 == entry.content_sha256:
                    served.append(ServedPolicy(entry.policy, entry.path, entry.text, old.compiled))  # comments-only edits included
                    continue
                name = f"{entry.policy.id}@{entry.policy.version}"
                if control.should_stop():
                    raise control.cancelled(name)
                log.info("computing text embeddings for %s (%d texts)", name, entry.policy.text_count)
                try:
                    result = self._compile(entry.policy, control.should_stop)
                except CompileCancelled as err:
                    raise (control.cancelled(name) if control.should_stop() else err) from None
                served.append(ServedPolicy(entry.policy, entry.path, entry.text, result))
                compiled.append(describe(served[-1]))
            removed = tuple(sorted(current.keys() - {s.policy.id for s in served}))
            self.replace_all(served)
            return LoadSummary(tuple(describe(s) for s in served), tuple(compiled), removed)

    def replace_all(self, served: list[ServedPolicy[Compiled]]) -> None:
        policies = {s.policy.id: s for s in served}
        active = [s for s in served if s.policy.mode is PolicyMode.ACTIVE]
        marked = [s.policy.id for s in active if s.policy.default]
        default_id = marked[0] if marked else (active[0].policy.id if len(active) == 1 else None)
        shadows: dict[str, tuple[ServedPolicy[Compiled], ...]] = {}
        for s in served:
            if s.policy.shadow_of:
                shadows[s.policy.shadow_of] = (*shadows.get(s.policy.shadow_of, ()), s)
        self._snapshot = _Snapshot(policies, default_id, shadows)  # one assignment: readers see old or new, never a mix

    def get(self, policy_id: str = "") -> ServedPolicy[Compiled]:
        """An active policy by id ('' for the default). Shadow policies never decide requests."""
        return _active(self._snapshot, policy_id)

    def with_shadows(self, policy_id: str = "") -> tuple[ServedPolicy[Compiled], tuple[ServedPolicy[Compiled], ...]]:
        """The active policy and the shadow policies evaluated beside it, from one snapshot."""
        snapshot = self._snapshot
        served = _active(snapshot, policy_id)
        return served, snapshot.shadows.get(served.policy.id, ())

    def all(self) -> list[ServedPolicy[Compiled]]:
        """Active and shadow policies."""
        return sorted(self._snapshot.policies.values(), key=lambda s: s.policy.id)

    @property
    def default_id(self) -> str | None:
        return self._snapshot.default_id

def _active(snapshot: _Snapshot[Compiled], policy_id: str) -> ServedPolicy[Compiled]:
    wanted = policy_id or snapshot.default_id
    served = snapshot.policies.get(wanted) if wanted else None
    if served is None or served.policy.mode is not PolicyMode.ACTIVE:
        raise PolicyNotFound(wanted or "(default)", snapshot.active)
    return served


def describe(served: ServedPolicy[Any]) -> str:
    return f"{served.policy.id}@{served.policy.version}"
