"""The set of policies a server serves, each compiled for the loaded model.

No torch here: compiling a policy (computing its text embeddings) is a function
the server passes in, so this module stays testable without a model.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from moderation.policy.loader import PolicyFileError, PolicyProblem, load_policy_file
from moderation.policy.schema import Policy, PolicyMode, normalise_model_id

log = logging.getLogger(__name__)

Compiled = TypeVar("Compiled")
POLICY_SUFFIXES = (".yaml", ".yml")


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


def policy_files(directory: Path) -> list[Path]:
    """Policy files in `directory`, skipping hidden entries such as a ConfigMap's `..data`."""
    if not directory.is_dir():
        raise PolicyFileError([PolicyProblem(str(directory), None, "", "policy directory does not exist")])
    return sorted(p for p in directory.iterdir() if p.suffix in POLICY_SUFFIXES and not p.name.startswith(".") and p.is_file())


def load_policy_dir(directory: Path) -> list[tuple[Policy, Path, str]]:
    """Parse and validate every policy file; raise one error listing every problem."""
    problems: list[PolicyProblem] = []
    loaded: list[tuple[Policy, Path, str]] = []
    files = policy_files(directory)
    if not files:
        raise PolicyFileError([PolicyProblem(str(directory), None, "", "no *.yaml policy files found")])
    for path in files:
        try:
            policy, text = load_policy_file(path)
        except PolicyFileError as err:
            problems.extend(err.problems)
            continue
        loaded.append((policy, path, text))
    seen: dict[str, Path] = {}
    for policy, path, _ in loaded:
        if policy.id in seen:
            problems.append(PolicyProblem(str(path), None, "id", f"policy id {policy.id!r} is also used by {seen[policy.id]}"))
        seen[policy.id] = path
    active_ids = {policy.id for policy, _, _ in loaded if policy.mode is PolicyMode.ACTIVE}
    for policy, path, _ in loaded:
        if policy.shadow_of and policy.shadow_of not in active_ids:
            problems.append(PolicyProblem(str(path), None, "shadow_of", f"no active policy {policy.shadow_of!r} in {directory}"))
    defaults = [str(path) for policy, path, _ in loaded if policy.default]
    if len(defaults) > 1:
        problems.append(PolicyProblem(str(directory), None, "default", f"more than one policy is marked default: {', '.join(defaults)}"))
    if problems:
        raise PolicyFileError(problems)
    return loaded


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

    def __init__(self, compile_policy: Callable[[Policy], Compiled], model_id: str | None, random_weights: bool = False):
        """`model_id` None: the server scores nothing (the explainer), so no model check applies."""
        self._compile = compile_policy
        self._model_id = model_id
        self._random_weights = random_weights
        self._snapshot: _Snapshot[Compiled] = _Snapshot({}, None)
        # Serialises loads (the watcher and a manual reload must not interleave).
        self._load_lock = threading.Lock()

    def load_directory(self, directory: Path) -> LoadSummary:
        """Validate every file, compile new or changed policies, then swap. Raises PolicyFileError."""
        with self._load_lock:
            loaded = load_policy_dir(directory)
            self._check_models(loaded)
            current = self._snapshot.policies
            problems = []
            for policy, path, _ in loaded:
                old = current.get(policy.id)
                if old is not None and old.policy != policy and old.policy.version == policy.version:
                    problems.append(
                        PolicyProblem(
                            str(path), None, "version",
                            f"policy {policy.id!r} changed but its version is still {policy.version!r}; "
                            "bump the version so every decision names the rules it used",
                        )  # fmt: skip
                    )
            if problems:
                raise PolicyFileError(problems)
            served, compiled = [], []
            for policy, path, text in loaded:
                old = current.get(policy.id)
                if old is not None and old.policy == policy:
                    served.append(ServedPolicy(policy, path, text, old.compiled))  # comments-only edits included
                else:
                    served.append(ServedPolicy(policy, path, text, self._compile(policy)))
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

    def _check_models(self, loaded: list[tuple[Policy, Path, str]]) -> None:
        if self._model_id is None:
            return
        problems = []
        for policy, path, _ in loaded:
            if policy.model is None or normalise_model_id(policy.model) == normalise_model_id(self._model_id):
                continue
            message = (
                f"thresholds were calibrated for model {policy.model!r} but the server runs {self._model_id!r}"
            )
            if self._random_weights:
                log.warning("%s: %s (ignored: random weights mean nothing anyway)", path, message)
            else:
                problems.append(PolicyProblem(str(path), None, "model", message + "; recalibrate or change the server's model"))
        if problems:
            raise PolicyFileError(problems)


def _active(snapshot: _Snapshot[Compiled], policy_id: str) -> ServedPolicy[Compiled]:
    wanted = policy_id or snapshot.default_id
    served = snapshot.policies.get(wanted) if wanted else None
    if served is None or served.policy.mode is not PolicyMode.ACTIVE:
        raise PolicyNotFound(wanted or "(default)", snapshot.active)
    return served


def describe(served: ServedPolicy[Any]) -> str:
    return f"{served.policy.id}@{served.policy.version}"
