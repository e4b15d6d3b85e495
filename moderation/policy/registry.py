"""The set of policies a server serves, each compiled for the loaded model.

No torch here: compiling a policy (computing its text embeddings) is a function
the server passes in, so this module stays testable without a model.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from moderation.policy.loader import PolicyFileError, PolicyProblem, load_policy_file
from moderation.policy.schema import Policy, normalise_model_id

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
    defaults = [str(path) for policy, path, _ in loaded if policy.default]
    if len(defaults) > 1:
        problems.append(PolicyProblem(str(directory), None, "default", f"more than one policy is marked default: {', '.join(defaults)}"))
    if problems:
        raise PolicyFileError(problems)
    return loaded


class PolicyRegistry(Generic[Compiled]):
    """Served policies by id. Reads are lock-free snapshots; `replace_all` swaps atomically."""

    def __init__(self, compile_policy: Callable[[Policy], Compiled], model_id: str, random_weights: bool = False):
        self._compile = compile_policy
        self._model_id = model_id
        self._random_weights = random_weights
        self._policies: dict[str, ServedPolicy[Compiled]] = {}
        self._default_id: str | None = None
        self._lock = threading.Lock()

    def load_directory(self, directory: Path) -> list[ServedPolicy[Compiled]]:
        loaded = load_policy_dir(directory)
        self._check_models(loaded)
        served = [ServedPolicy(policy, path, text, self._compile(policy)) for policy, path, text in loaded]
        self.replace_all(served)
        return served

    def replace_all(self, served: list[ServedPolicy[Compiled]]) -> None:
        policies = {s.policy.id: s for s in served}
        marked = [s.policy.id for s in served if s.policy.default]
        default_id = marked[0] if marked else (served[0].policy.id if len(served) == 1 else None)
        with self._lock:
            # One assignment each: a reader sees the old set or the new one, never a mix.
            self._policies, self._default_id = policies, default_id

    def get(self, policy_id: str = "") -> ServedPolicy[Compiled]:
        policies, default_id = self._policies, self._default_id
        wanted = policy_id or default_id
        if wanted is None:
            raise PolicyNotFound("(default)", policies)
        try:
            return policies[wanted]
        except KeyError:
            raise PolicyNotFound(wanted, policies) from None

    def all(self) -> list[ServedPolicy[Compiled]]:
        return sorted(self._policies.values(), key=lambda s: s.policy.id)

    @property
    def default_id(self) -> str | None:
        return self._default_id

    def _check_models(self, loaded: list[tuple[Policy, Path, str]]) -> None:
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


def describe(served: ServedPolicy[Any]) -> str:
    return f"{served.policy.id}@{served.policy.version}"
