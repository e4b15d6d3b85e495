"""Write a new version of a policy file by editing values in its text.

Calibration proposes new thresholds, a new version and the model they were
calibrated for. Loading and dumping the YAML would lose the comments and the layout
trust-and-safety staff wrote, and the diff reviewers read would be noise. Instead
the YAML is composed into nodes, whose marks give each value's exact span in the
text, and only those spans are replaced. The result is parsed again and checked
against what was asked for, so a file this cannot edit faithfully is refused, not
half edited.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import date

import numpy as np
import yaml

from moderation.policy.loader import load_policy_text
from moderation.policy.schema import Probe

_DATED_VERSION = re.compile(r"^(\d{4}-\d{2}-\d{2})(?:\.(\d+))?$")
_TRAILING_NUMBER = re.compile(r"^(.*?)(\d+)$")


class RewriteError(ValueError):
    """The policy text cannot be edited in place; the message says why."""


def next_version(version: str, today: date) -> str:
    """The version after `version`: '2026-11-23.1' -> '2026-11-23.2' today or '<today>.1' later; '7' -> '8'; 'v1.9' -> 'v1.10'."""
    dated = _DATED_VERSION.match(version)
    if dated:
        day, counter = dated.group(1), dated.group(2)
        return f"{day}.{int(counter or 0) + 1}" if day == today.isoformat() else f"{today.isoformat()}.1"
    numbered = _TRAILING_NUMBER.match(version)
    if numbered:
        prefix, number = numbered.groups()
        return f"{prefix}{str(int(number) + 1).zfill(len(number))}"
    return f"{version}.1"


def format_threshold(value: float) -> str:
    """Positional notation (PyYAML reads '1e-05' as a string, not a number)."""
    return np.format_float_positional(float(value), trim="-")


def rewrite_policy_text(
    text: str,
    *,
    version: str,
    thresholds: Mapping[str, tuple[float, float]],
    model: str | None = None,
    source: str = "<policy>",
) -> str:
    """`text` with a new version, (review, block) thresholds per category id and, when given, model.

    Comments, key order, flow or block style and every other value are kept.
    """
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    if not isinstance(root, yaml.MappingNode):
        raise RewriteError(f"{source}: a policy must be a YAML mapping")
    edits = _version_and_model_edits(root, text, version, model, source)  # (start, end, replacement) spans of `text`

    _, categories = _entry(root, "categories", source)
    if not isinstance(categories, yaml.SequenceNode):
        raise RewriteError(f"{source}: categories must be a list")
    wanted = dict(thresholds)
    seen_thresholds: dict[int, str] = {}
    for category in categories.value:
        if not isinstance(category, yaml.MappingNode):
            raise RewriteError(f"{source}:{category.start_mark.line + 1}: a category must be a mapping")
        _, id_node = _entry(category, "id", source)
        if id_node.value not in wanted:
            continue
        _, threshold_node = _entry(category, "thresholds", source)
        if id(threshold_node) in seen_thresholds:
            # A YAML anchor shared by two categories: editing it would change both.
            raise RewriteError(
                f"{source}:{threshold_node.start_mark.line + 1}: categories {seen_thresholds[id(threshold_node)]!r} and "
                f"{id_node.value!r} share one thresholds mapping (a YAML anchor); write each category's thresholds out"
            )
        seen_thresholds[id(threshold_node)] = id_node.value
        review, block = wanted.pop(id_node.value)
        edits.append(_replace_scalar(_entry(threshold_node, "review", source)[1], format_threshold(review), number=True))
        edits.append(_replace_scalar(_entry(threshold_node, "block", source)[1], format_threshold(block), number=True))
    if wanted:
        raise RewriteError(f"{source}: no categories {sorted(wanted)} in the policy")

    edited = text
    for start, end, replacement in sorted(edits, reverse=True):
        edited = edited[:start] + replacement + edited[end:]
    _check(edited, version, thresholds, model, source)
    return edited


def _version_and_model_edits(root: yaml.MappingNode, text: str, version: str, model: str | None, source: str) -> list[tuple[int, int, str]]:
    edits = []
    version_key, version_node = _entry(root, "version", source)
    edits.append(_replace_scalar(version_node, version))
    if model is not None:
        model_entry = _find(root, "model")
        if model_entry is not None:
            edits.append(_replace_scalar(model_entry[1], model))
        else:
            # Insert a line after the version's: the file keeps its order otherwise.
            line_end = text.find("\n", version_node.end_mark.index)
            at = len(text) if line_end == -1 else line_end + 1
            prefix = "\n" if line_end == -1 else ""
            edits.append((at, at, f"{prefix}{' ' * version_key.start_mark.column}model: {json.dumps(model)}\n"))
    return edits


def _find(node: yaml.MappingNode, key: str) -> tuple[yaml.Node, yaml.Node] | None:
    for key_node, value_node in node.value:
        if isinstance(key_node, yaml.ScalarNode) and key_node.value == key:
            return key_node, value_node
    return None


def _entry(node: yaml.Node, key: str, source: str) -> tuple[yaml.Node, yaml.Node]:
    found = _find(node, key) if isinstance(node, yaml.MappingNode) else None
    if found is None:
        raise RewriteError(f"{source}:{node.start_mark.line + 1}: expected a mapping with {key!r}")
    return found


def _replace_scalar(node: yaml.Node, value: str, number: bool = False) -> tuple[int, int, str]:
    if not isinstance(node, yaml.ScalarNode):
        raise RewriteError(f"line {node.start_mark.line + 1}: expected a single value")
    if number:
        text = value
    elif node.style == "'" and "'" not in value:
        text = f"'{value}'"
    elif node.style is None and yaml.safe_load(value) == value and "#" not in value:
        text = value  # stays plain only where YAML reads it back as the same string
    else:
        text = json.dumps(value)  # JSON strings are valid double-quoted YAML scalars
    return node.start_mark.index, node.end_mark.index, text


def _check(edited: str, version: str, thresholds: Mapping[str, tuple[float, float]], model: str | None, source: str) -> None:
    policy = load_policy_text(edited, source=f"{source} (proposed)")
    wrong = [] if policy.version == version else ["version"]
    if model is not None and policy.model != model:
        wrong.append("model")
    for category_id, (review, block) in thresholds.items():
        actual = policy.category(category_id).thresholds
        if (actual.review, actual.block) != (float(format_threshold(review)), float(format_threshold(block))):
            wrong.append(f"{category_id}.thresholds")
    if wrong:
        raise RewriteError(f"{source}: editing the text did not give the intended {', '.join(wrong)}; edit the file by hand")


def rewrite_policy_probe(
    text: str, *, version: str, category_id: str, probe: Probe, model: str, source: str = "<policy>"
) -> str:
    """`text` with a new version, `model`, and `probe` as category `category_id`'s probe (replaced or added).

    The probe is written as a block under the category, at its keys' indentation; the
    rest of the file is kept as it was (the same span edits as `rewrite_policy_text`).
    """
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    if not isinstance(root, yaml.MappingNode):
        raise RewriteError(f"{source}: a policy must be a YAML mapping")
    _, categories = _entry(root, "categories", source)
    if not isinstance(categories, yaml.SequenceNode):
        raise RewriteError(f"{source}: categories must be a list")
    target = next(
        (c for c in categories.value if isinstance(c, yaml.MappingNode) and (found := _find(c, "id")) and found[1].value == category_id),
        None,
    )
    if target is None:
        raise RewriteError(f"{source}: no category {category_id!r} in the policy")
    if target.flow_style:
        raise RewriteError(f"{source}:{target.start_mark.line + 1}: category {category_id!r} is written in flow style ({{...}}); write it as a block to add a probe")
    indent = target.value[0][0].start_mark.column
    document = probe.model_dump(mode="json", exclude_none=True)
    body = yaml.safe_dump({"probe": document}, default_flow_style=False, sort_keys=False, width=1_000_000, allow_unicode=True)
    block = "".join(" " * indent + line + "\n" for line in body.splitlines())

    edits: list[tuple[int, int, str]] = []
    existing = _find(target, "probe")
    if existing is not None:
        key_node, value_node = existing
        start = text.rfind("\n", 0, key_node.start_mark.index) + 1
        end = _line_end(text, _last_scalar(value_node).end_mark.index)
        edits.append((start, end, block))
    else:
        at = _line_end(text, _last_scalar(target).end_mark.index)
        edits.append((at, at, block if at == len(text) or text[at - 1] == "\n" else "\n" + block))
    edits += _version_and_model_edits(root, text, version, model, source)
    edited = text
    for start, end, replacement in sorted(edits, reverse=True):
        edited = edited[:start] + replacement + edited[end:]
    policy = load_policy_text(edited, source=f"{source} (proposed)")
    if policy.version != version or policy.category(category_id).probe != probe:
        raise RewriteError(f"{source}: editing the text did not give the intended probe; edit the file by hand")
    return edited


def _line_end(text: str, index: int) -> int:
    """Just past the newline ending the line that `index` is on (the end of the text without one)."""
    newline = text.find("\n", index)
    return len(text) if newline == -1 else newline + 1


def _last_scalar(node: yaml.Node) -> yaml.Node:
    """The last scalar inside `node`: where a block collection's own text really ends (its end mark can lie past comments)."""
    while isinstance(node, yaml.MappingNode | yaml.SequenceNode) and node.value:
        last = node.value[-1]
        node = last[1] if isinstance(node, yaml.MappingNode) else last
    return node
