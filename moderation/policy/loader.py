"""Read policy YAML and report every problem with file, line and field.

Trust-and-safety staff edit these files by hand, so an error must point at the
line to fix and say what is expected, not dump a traceback.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from moderation.policy.schema import Policy

MAX_POLICY_BYTES = 1_000_000


@dataclass(frozen=True)
class PolicyProblem:
    path: str
    line: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line else self.path
        return f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"


class PolicyFileError(ValueError):
    """A policy file that cannot be served; `problems` lists every reason."""

    def __init__(self, problems: list[PolicyProblem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


def load_policy_file(path: str | Path) -> tuple[Policy, str]:
    """Return the validated policy and its source text."""
    text = read_yaml_file(path)
    return load_policy_text(text, source=str(path)), text


def load_policy_text(text: str, source: str = "<policy>") -> Policy:
    return validate_yaml_text(text, source, Policy, "a policy must be a YAML mapping with id, version, benign and categories")


def read_yaml_file(path: str | Path) -> str:
    """The text of a hand-edited YAML file, or a PolicyFileError saying why it cannot be read."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_POLICY_BYTES:
            raise PolicyFileError([PolicyProblem(str(path), None, "", f"file is {size} bytes; a policy must be under {MAX_POLICY_BYTES}")])
        return path.read_text(encoding="utf-8")
    except OSError as err:
        raise PolicyFileError([PolicyProblem(str(path), None, "", f"cannot read file: {err.strerror or err}")]) from err
    except UnicodeDecodeError as err:
        raise PolicyFileError([PolicyProblem(str(path), None, "", "file is not UTF-8 text")]) from err


Model = TypeVar("Model", bound=BaseModel)


def validate_yaml_text(text: str, source: str, model: type[Model], not_a_mapping: str) -> Model:
    """Parse YAML into `model`; every problem carries the line, the field and what is expected."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(err, "problem", None) or str(err)
        raise PolicyFileError([PolicyProblem(source, line, "", f"not valid YAML: {problem}")]) from err
    if not isinstance(data, dict):
        raise PolicyFileError([PolicyProblem(source, 1, "", not_a_mapping)])
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise PolicyFileError([_problem(source, root, e, model) for e in err.errors()]) from err


def _problem(source: str, root: yaml.Node | None, error: Any, model: type[BaseModel]) -> PolicyProblem:
    loc = tuple(error["loc"])
    field = _dotted(loc)
    message = error["msg"].removeprefix("Value error, ")
    hint = _hint(loc, model)
    if error["type"] == "missing":
        message = "this field is required"
    if error["type"] == "extra_forbidden":
        message = "unknown field (check the spelling; see docs/policies.md for the fields a policy takes)"
    elif hint and hint not in message:
        message = f"{message} (expected {hint})"
    return PolicyProblem(source, _line_of(root, loc), field, message)


def _dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _line_of(root: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """Line of the deepest YAML node the error location reaches."""
    node = root
    best = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        child = None
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if key.value == part:
                    child = value if not isinstance(value, yaml.ScalarNode) else key
                    # Point scalars at their key line: that is the line staff edit.
                    break
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            child = node.value[part]
        if child is None:
            break
        node = child
        best = node.start_mark.line + 1
    return best


def _hint(loc: tuple[Any, ...], root_model: type[BaseModel]) -> str | None:
    """The schema's description of the field at `loc`, used as 'expected ...'."""
    model: type[BaseModel] | None = root_model
    description = None
    for part in loc:
        if isinstance(part, int) or model is None:
            continue
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        description = field.description
        annotation = field.annotation
        inner = getattr(annotation, "__args__", (annotation,))
        model = next((a for a in inner if isinstance(a, type) and issubclass(a, BaseModel)), None)
    return description
