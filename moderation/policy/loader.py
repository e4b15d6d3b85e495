"""Read policy YAML and report every problem with file, line and field.

Trust-and-safety staff edit these files by hand, so an error must point at the
line to fix and say what is expected, not dump a traceback.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from moderation.policy.messages import error_sentence, wants_hint, yaml_problem
from moderation.policy.schema import POLICY_RULES_ERROR, Policy, RuleProblem

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
    """A policy file that cannot be served; `problems` lists every reason, `warnings` what is served anyway."""

    def __init__(self, problems: list[PolicyProblem], warnings: list[PolicyProblem] | None = None):
        self.problems = problems
        self.warnings = warnings or []
        super().__init__("\n".join(str(p) for p in problems))


def load_policy_file(path: str | Path) -> tuple[Policy, str]:
    """Return the validated policy and its source text."""
    text = read_yaml_file(path)
    return load_policy_text(text, source=str(path)), text


def load_policy_text(text: str, source: str = "<policy>") -> Policy:
    return validate_yaml_text(text, source, Policy, "a policy must be a YAML mapping with id, version, benign and categories")


def read_yaml_file(path: str | Path, source: str | None = None) -> str:
    """The text of a hand-edited YAML file, or a PolicyFileError saying why it cannot be read.

    `source` names the file in problems (a link's name rather than its target).
    """
    path = Path(path)
    source = source or str(path)
    try:
        # Size first, and never read past the limit: the file may grow between a stat and a read.
        size = path.stat().st_size
        if size <= MAX_POLICY_BYTES:
            with path.open("rb") as handle:
                data = handle.read(MAX_POLICY_BYTES + 1)
            size = len(data)
        if size > MAX_POLICY_BYTES:
            raise PolicyFileError([PolicyProblem(source, None, "", f"file is {size} bytes; a policy must be under {MAX_POLICY_BYTES}")])
        return data.decode("utf-8")
    except OSError as err:
        raise PolicyFileError([PolicyProblem(source, None, "", f"cannot read file: {err.strerror or err}")]) from err
    except UnicodeDecodeError as err:
        raise PolicyFileError([PolicyProblem(source, None, "", "file is not UTF-8 text")]) from err


Model = TypeVar("Model", bound=BaseModel)

# One broken edit can produce thousands of problems (a 10,000-category file with
# one mistake per category); the first ones tell staff what to fix.
MAX_PROBLEMS_PER_FILE = 50


def parse_yaml(text: str, source: str) -> tuple[yaml.Node | None, Any, list[PolicyProblem]]:
    """(node tree, data, duplicate-key problems); a PolicyFileError for text that is not YAML."""
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        data = loader.construct_document(root) if root is not None else None
    except yaml.YAMLError as err:
        line, message = yaml_problem(err)
        raise PolicyFileError([PolicyProblem(source, line, "", message)]) from err
    finally:
        loader.dispose()
    return root, data, _duplicate_keys(root, data, source)


def validate_yaml_text(text: str, source: str, model: type[Model], not_a_mapping: str) -> Model:
    """Parse YAML into `model`; every problem of the file at once, each with its line, field and a plain sentence."""
    root, data, problems = parse_yaml(text, source)
    if not isinstance(data, dict):
        raise PolicyFileError([PolicyProblem(source, 1, "", not_a_mapping)])
    try:
        validated = model.model_validate(data)
    except ValidationError as err:
        validated = None
        # Rules spanning fields run after every field is valid inside pydantic; run
        # on the raw data they come out in this same run, beside the field errors.
        errors = err.errors()
        problems += [_problem(source, root, data, e, model) for e in errors if e["type"] != POLICY_RULES_ERROR]
        rules = getattr(model, "rule_problems", None)
        found = [_rule_problem(source, root, data, rule) for rule in (rules(data) if rules else ())]
        # Raw data and validated values can differ (YAML 'yes' vs True): never lose the model's own verdict.
        problems += found or [_problem(source, root, data, e, model) for e in errors if e["type"] == POLICY_RULES_ERROR]
    if problems or validated is None:
        raise PolicyFileError(_capped(sorted(problems, key=problem_order), source))
    return validated


def line_of(text: str, loc: tuple[Any, ...]) -> int | None:
    """The line of the value at `loc` in a YAML text (its key line for a single value); None if it does not parse."""
    try:
        return _line_of(yaml.compose(text, Loader=yaml.SafeLoader), loc)
    except yaml.YAMLError:
        return None


def problem_order(problem: PolicyProblem) -> tuple[str, float]:
    """File by file, top to bottom (problems of a whole file first); the count of problems not shown last."""
    if problem.line is None:
        return problem.path, (float("inf") if problem.message.startswith(_MORE) else -1.0)
    return problem.path, float(problem.line)


_MORE = "and more problems not shown:"


def _capped(problems: list[PolicyProblem], source: str) -> list[PolicyProblem]:
    if len(problems) <= MAX_PROBLEMS_PER_FILE:
        return problems
    hidden = len(problems) - MAX_PROBLEMS_PER_FILE
    more = PolicyProblem(source, None, "", f"{_MORE} {hidden} of them; fix these first")
    return [*problems[:MAX_PROBLEMS_PER_FILE], more]


def _problem(source: str, root: yaml.Node | None, data: Any, error: Any, model: type[BaseModel]) -> PolicyProblem:
    loc = tuple(error["loc"])
    holder, field, target = _resolve(model, loc)
    message = error_sentence(error, holder if error["type"] == "extra_forbidden" else target)
    hint = field.description if field is not None else None
    if hint and wants_hint(error) and hint not in message:
        message = f"{message} (expected {hint})"
    return PolicyProblem(source, _line_of(root, loc), dotted(loc, data), message)


def _rule_problem(source: str, root: yaml.Node | None, data: Any, rule: RuleProblem) -> PolicyProblem:
    message = rule.message
    if rule.first is not None:
        first_line = _line_of(root, rule.first)
        message += f" (first on line {first_line})" if first_line else ""
    return PolicyProblem(source, _line_of(root, rule.loc), dotted(rule.loc, data), message)


def _duplicate_keys(root: yaml.Node | None, data: Any, source: str) -> list[PolicyProblem]:
    """YAML keeps the last of two equal keys without a word; staff meant one of them."""
    problems: list[PolicyProblem] = []

    def walk(node: yaml.Node, loc: tuple[Any, ...], seen_nodes: set[int]) -> None:
        if id(node) in seen_nodes:  # an alias: already walked
            return
        seen_nodes.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first: dict[str, int] = {}
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                    if key.value in first:
                        problems.append(
                            PolicyProblem(
                                source, key.start_mark.line + 1, dotted(loc, data),
                                f"'{key.value}' appears twice in this mapping (first on line {first[key.value]}); "
                                "YAML would silently keep only the last one: delete or merge one of them",
                            )  # fmt: skip
                        )
                    else:
                        first[key.value] = key.start_mark.line + 1
                    walk(value, (*loc, key.value), seen_nodes)
        elif isinstance(node, yaml.SequenceNode):
            for number, item in enumerate(node.value):
                walk(item, (*loc, number), seen_nodes)

    if root is not None:
        walk(root, (), set())
    return problems


_LABEL = re.compile(r"^[^\[\]\s][^\[\]\n]{0,79}$")


def dotted(loc: tuple[Any, ...], data: Any = None) -> str:
    """A location as staff read it: `categories[weapons].thresholds.review`, `cases[samples/cat.jpg].expect`.

    List items that have an id (categories) or an image (golden cases) are named by
    it; other items by their 1-based position, `positive[#2]`.
    """
    out = ""
    node = data
    for part in loc:
        if isinstance(part, int):
            item = node[part] if isinstance(node, list) and 0 <= part < len(node) else None
            label = next(
                (item[key] for key in ("id", "image") if isinstance(item, dict) and isinstance(item.get(key), str) and _LABEL.match(item[key])),
                f"#{part + 1}",
            )
            out += f"[{label}]"
            node = item
        elif part == "[key]":
            continue  # pydantic's marker for a problem with a mapping key, not its value
        else:
            out += f".{part}" if out else str(part)
            node = node.get(part) if isinstance(node, dict) else None
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
                    # Point at the key's line, the line staff edit, also for a list or mapping below it.
                    child, line = value, key.start_mark.line + 1
                    break
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            child = node.value[part]
            line = child.start_mark.line + 1
        if child is None:
            break
        node, best = child, line
    return best


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in getattr(annotation, "__args__", ()) for m in _models_in(arg)]


def _resolve(root_model: type[BaseModel], loc: tuple[Any, ...]) -> tuple[type[BaseModel] | None, FieldInfo | None, type[BaseModel] | None]:
    """Along `loc`: the model holding its last named field, that field, and the model its value should be."""
    model: type[BaseModel] | None = root_model
    holder, field = None, None
    for part in loc:
        if isinstance(part, int) or model is None:
            continue
        holder, field = model, model.model_fields.get(str(part))
        if field is None:
            return holder, None, None
        models = _models_in(field.annotation)
        model = models[0] if models else None
    return holder, field, model
