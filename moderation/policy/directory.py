"""A policy directory as the server loads it, and every check the server applies before serving it.

`check_policy_dir` is the one function behind both the server's loads (startup
and every reload) and `moderation policy validate`, so a directory that
validates offline is not refused live. It reports every problem of every file in
one run, each with its file and line.

Which files: every `*.yaml` / `*.yml` at the top of the directory whose name does
not start with '.'. A file may be a symbolic link, as in a mounted Kubernetes
ConfigMap (`default.yaml -> ..data/default.yaml`, `..data -> ..2026_11_23_...`),
but it must resolve to a file inside the directory: a link that leaves it is
refused, never read, so its content cannot reach a log line.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import yaml

from moderation.policy.loader import PolicyFileError, PolicyProblem, line_of, load_policy_text, problem_order, read_yaml_file
from moderation.policy.schema import Policy, PolicyMode, content_sha256, normalise_model_id

POLICY_SUFFIXES = (".yaml", ".yml")
# Policies one directory may hold: each is compiled, kept in memory and exported
# as metric series per category (MAX_CATEGORIES each).
MAX_POLICY_FILES = 32
# How much of an unreadable file is searched for its `id:` line.
_RAW_ID_SCAN_BYTES = 64 * 1024


@dataclass(frozen=True)
class LoadedPolicy:
    policy: Policy
    path: Path  # as listed in the directory (a ConfigMap link, not its target)
    text: str

    @cached_property
    def content_sha256(self) -> str:
        return content_sha256(self.policy)


@dataclass(frozen=True)
class PolicyVersion:
    """A copy of a policy a version check compares with."""

    version: str
    content_sha256: str


@dataclass(frozen=True)
class Baseline:
    """Policies by id that a directory's versions must be checked against.

    The server's baseline is what it serves now; `moderation policy validate`
    adds a previous copy (`--previous`) or what a running server serves (`--served`).
    """

    versions: Mapping[str, PolicyVersion]
    where: str = ""  # e.g. "served at host:50051"; empty for the server's own


@dataclass(frozen=True)
class ModelRule:
    """The model a server scores with: policies calibrated for another are refused (warned about with random weights)."""

    model_id: str
    random_weights: bool = False


@dataclass(frozen=True)
class DirectoryCheck:
    policies: list[LoadedPolicy]
    warnings: list[PolicyProblem] = field(default_factory=list)


def policy_files(directory: Path) -> list[Path]:
    """The policy files the server loads from `directory`; a PolicyFileError for links that leave it."""
    files, problems = _list(directory)
    if problems:
        raise PolicyFileError(problems)
    return [listed for listed, _ in files]


def _list(directory: Path) -> tuple[list[tuple[Path, Path]], list[PolicyProblem]]:
    """(listed path, resolved path) of each policy file, and the problems of files that cannot be served."""
    if not directory.is_dir():
        raise PolicyFileError([PolicyProblem(str(directory), None, "", "policy directory does not exist")])
    root = directory.resolve()
    files, problems = [], []
    for listed in sorted(directory.iterdir()):
        if listed.suffix not in POLICY_SUFFIXES or listed.name.startswith("."):
            continue  # hidden entries include a ConfigMap's ..data and ..<timestamp> folders
        try:
            resolved = listed.resolve(strict=True)
        except (OSError, RuntimeError):
            continue  # a dangling link: a file being removed, as before
        if not resolved.is_relative_to(root):
            problems.append(
                PolicyProblem(
                    str(listed), None, "",
                    "is a link to a file outside the policy directory; the server reads only files inside "
                    f"{directory} (links into it, such as a ConfigMap's ..data, are fine): copy the file in instead",
                )  # fmt: skip
            )
            continue
        if resolved.is_file():
            files.append((listed, resolved))
    return files, problems


def load_policy_dir(directory: Path) -> list[tuple[Policy, Path, str]]:
    """Parse and validate every policy file with the directory's rules; raise one error listing every problem."""
    return [(p.policy, p.path, p.text) for p in check_policy_dir(directory).policies]


def check_policy_dir(directory: Path, *, model: ModelRule | None = None, baselines: Sequence[Baseline] = ()) -> DirectoryCheck:
    """Everything the server checks before serving `directory`, in one run.

    Per file: YAML, schema, limits (see schema.py). Across files: unique policy
    ids, at most one default, shadow_of naming an active policy. Against `model`:
    the `model:` each policy was calibrated for. Against each baseline: a policy
    whose content changed must carry a new version. Raises PolicyFileError with
    every problem (its `warnings` too); returns the policies and the warnings.
    """
    files, problems = _list(directory)
    if not files and not problems:
        raise PolicyFileError([PolicyProblem(str(directory), None, "", "no *.yaml policy files found")])
    if len(files) > MAX_POLICY_FILES:
        problems.append(
            PolicyProblem(
                str(directory), None, "",
                f"{len(files)} policy files; a directory may hold at most {MAX_POLICY_FILES} (limit MAX_POLICY_FILES, "
                "docs/policies.md#limits)",
            )  # fmt: skip
        )
    loaded: list[LoadedPolicy] = []
    unreadable_ids: set[str] = set()
    for listed, resolved in files:
        try:
            text = read_yaml_file(resolved, source=str(listed))
            loaded.append(LoadedPolicy(load_policy_text(text, source=str(listed)), listed, text))
        except PolicyFileError as err:
            problems.extend(err.problems)
            unreadable_ids.add(_raw_id(resolved))
    problems += _directory_problems(directory, loaded, unreadable_ids)
    warnings: list[PolicyProblem] = []
    if model is not None:
        model_problems = _model_problems(loaded, model)
        (warnings if model.random_weights else problems).extend(model_problems)
    for baseline in baselines:
        problems += _version_problems(loaded, baseline)
    if problems:
        # File by file, top to bottom: the order staff fix them in.
        raise PolicyFileError(sorted(problems, key=problem_order), warnings)
    return DirectoryCheck(loaded, warnings)


def _raw_id(path: Path) -> str:
    """The id an invalid file seems to declare, so that other files naming it are not blamed too.

    Parsed only within the size limit (a 5 MB file took 43 s and 825 MB to parse, issue 18);
    beyond it, or when the YAML is broken, a top-level `id:` line near the start will do.
    """
    try:
        data = yaml.safe_load(read_yaml_file(path))
        return str(data.get("id", "")) if isinstance(data, dict) else ""
    except Exception:  # noqa: BLE001 - anything unreadable simply has no id from parsing
        pass
    try:
        with path.open("rb") as handle:
            head = handle.read(_RAW_ID_SCAN_BYTES).decode("utf-8", errors="replace")
    except OSError:
        return ""
    found = re.search(r"^id:[ \t]*['\"]?([^'\"\s#]+)", head, flags=re.MULTILINE)
    return found.group(1) if found else ""


def _problem(loaded: LoadedPolicy, key: str, message: str) -> PolicyProblem:
    return PolicyProblem(str(loaded.path), line_of(loaded.text, (key,)), key, message)


def _directory_problems(directory: Path, loaded: list[LoadedPolicy], unreadable_ids: set[str]) -> list[PolicyProblem]:
    problems = []
    first: dict[str, LoadedPolicy] = {}
    for entry in loaded:
        if entry.policy.id in first:
            problems.append(_problem(entry, "id", f"policy id {entry.policy.id!r} is also used by {first[entry.policy.id].path}"))
        else:
            first[entry.policy.id] = entry
    active_ids = {entry.policy.id for entry in loaded if entry.policy.mode is PolicyMode.ACTIVE}
    for entry in loaded:
        shadow_of = entry.policy.shadow_of
        if shadow_of and shadow_of not in active_ids and shadow_of not in unreadable_ids:
            problems.append(_problem(entry, "shadow_of", f"no active policy {shadow_of!r} in {directory}"))
    defaults = [entry for entry in loaded if entry.policy.default]
    if len(defaults) > 1:
        names = ", ".join(str(entry.path) for entry in defaults)
        problems += [_problem(entry, "default", f"more than one policy is marked default: {names}") for entry in defaults[1:]]
    return problems


def _model_problems(loaded: list[LoadedPolicy], model: ModelRule) -> list[PolicyProblem]:
    problems = []
    for entry in loaded:
        calibrated_for = entry.policy.model
        if calibrated_for is None or normalise_model_id(calibrated_for) == normalise_model_id(model.model_id):
            continue
        message = f"thresholds were calibrated for model {calibrated_for!r} but the server runs {model.model_id!r}"
        if model.random_weights:
            message += " (ignored: random weights mean nothing anyway)"
        else:
            message += "; recalibrate or change the server's model"
        problems.append(_problem(entry, "model", message))
    return problems


def _version_problems(loaded: list[LoadedPolicy], baseline: Baseline) -> list[PolicyProblem]:
    problems = []
    for entry in loaded:
        before = baseline.versions.get(entry.policy.id)
        if before is None or before.version != entry.policy.version or before.content_sha256 == entry.content_sha256:
            continue
        where = f" ({baseline.where})" if baseline.where else ""
        problems.append(
            _problem(
                entry, "version",
                f"policy {entry.policy.id!r} changed but its version is still {entry.policy.version!r}{where}; "
                "bump the version so every decision names the rules it used",
            )  # fmt: skip
        )
    return problems


def previous_versions(path: Path) -> tuple[dict[str, PolicyVersion], list[PolicyProblem]]:
    """The policies of a previous copy (a file or a directory, e.g. from `git show` or a checkout), by id.

    Files that no longer validate are returned as problems: they cannot be compared.
    """
    if path.is_dir():
        files, problems = _list(path)
        paths = [resolved for _, resolved in files]
    else:
        paths, problems = [path], []
    versions: dict[str, PolicyVersion] = {}
    for file in paths:
        try:
            text = read_yaml_file(file)
            policy = load_policy_text(text, source=str(file))
        except PolicyFileError as err:
            problems.extend(err.problems)
            continue
        versions[policy.id] = PolicyVersion(policy.version, content_sha256(policy))
    return versions, problems


def directories_to_check(paths: Sequence[Path]) -> tuple[list[Path], list[PolicyProblem]]:
    """The policy directories `moderation policy validate` checks for `paths`, in order, once each.

    A directory is checked as the server loads it. A file stands for its whole
    directory: the server refuses a directory when any file in it is wrong, so
    checking a file alone could pass what the server then refuses. A file the
    server would not load at all (a hidden name, another suffix) is a problem.
    """
    directories: dict[Path, None] = {}
    problems = []
    for path in paths:
        if path.is_dir():
            directories[path] = None
        elif not path.exists():
            problems.append(PolicyProblem(str(path), None, "", "no such file or directory"))
        elif path.suffix not in POLICY_SUFFIXES or path.name.startswith("."):
            problems.append(
                PolicyProblem(
                    str(path), None, "",
                    "the server does not load this file: policy files are the *.yaml and *.yml files at the top of "
                    "the policy directory whose names do not start with '.'",
                )  # fmt: skip
            )
        else:
            directories[path.parent] = None
    return list(directories), problems
