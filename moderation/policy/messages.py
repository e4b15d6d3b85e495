"""Plain sentences for the problems staff meet in hand-edited YAML.

pydantic and PyYAML describe problems in their own terms ("Input should be a
valid dictionary or instance of Clause", "expected <block end>"). The people who
edit policies are not programmers: each problem becomes a sentence that says
what is wrong and what to write instead. Unknown error types fall back to the
library's text rather than hiding it.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from typing import Any

import yaml

from moderation.policy.schema import CLAUSE_ID, IDENTIFIER, POLICY_RULES_ERROR

# pydantic's constrained-string patterns, in words.
_PATTERNS = {
    IDENTIFIER: "must be lower_snake_case: a lowercase letter, then lowercase letters, digits or '_', "
    "at most 63 characters (e.g. 'graphic_violence')",
    CLAUSE_ID: "must be a short clause id: a letter, then letters, digits, '.', '_' or '-', at most 32 characters (e.g. 'V-2')",
    r"^[A-Za-z0-9][A-Za-z0-9._+-]*$": "must be a version such as '2026-11-23.1': letters, digits, '.', '_', '+' or '-', "
    "starting with a letter or digit",
}


# What each schema model is, for "unknown field" sentences.
_OWNERS = {
    "Policy": "a policy",
    "Category": "a category",
    "Clause": "a clause",
    "Thresholds": "thresholds",
    "EscalationSettings": "escalation",
    "GoldenCases": "a cases file",
    "GoldenCase": "a case",
}


# Fields whose type is wider than what they accept (a validator refuses the rest): what they do accept.
_NARROWED = {"on_block": "BLOCK or REVIEW (crossing the block threshold can never ALLOW)"}


def describe_value(value: object) -> str:
    """What staff wrote, in words: 'a list', 'the text \"W-1\"', 'nothing'."""
    if value is None:
        return "nothing (an empty value)"
    if isinstance(value, bool):
        return f"{str(value).lower()}"
    if isinstance(value, int | float):
        return f"the number {value}"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"the text {shown!r}"
    if isinstance(value, Mapping):
        return "a mapping (key: value lines)"
    if isinstance(value, list | tuple):
        return "a list"
    return "a value of another kind"


def _fields_of(model: Any) -> str:
    fields = getattr(model, "model_fields", None)
    return ", ".join(fields) if fields else ""


def error_sentence(error: Mapping[str, Any], model: Any | None) -> str:
    """One pydantic error as a sentence. `model` is the pydantic model the location ends in, when known."""
    kind = error["type"]
    ctx = error.get("ctx") or {}
    value = error.get("input")
    got = describe_value(value)
    if kind == "missing":
        return "this field is required"
    if kind == "extra_forbidden":
        name = str(error["loc"][-1]) if error["loc"] else ""
        known = list(getattr(model, "model_fields", {}) or {})
        close = difflib.get_close_matches(name, known, n=1)
        suggestion = f"did you mean '{close[0]}'? " if close else ""
        owner = _OWNERS.get(getattr(model, "__name__", ""), "this mapping")
        return f"unknown field '{name}' ({suggestion}{owner} takes {', '.join(known)})" if known else f"unknown field '{name}'"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        fields = _fields_of(model)
        takes = f" with {fields}" if fields else ""
        return f"must be a mapping{takes} (one 'key: value' per line, or {{key: value, ...}}), not {got}"
    if kind in ("list_type", "tuple_type", "set_type"):
        return f"must be a list (one '- item' per line, or [a, b]), not {got}"
    if kind in ("string_type", "string_sub_type"):
        return f"must be text, not {got}; put it in quotes if YAML reads it as something else"
    if kind in ("float_type", "float_parsing", "int_type", "int_parsing", "int_from_float"):
        return f"must be a number such as 0.35, not {got}"
    if kind == "finite_number":
        return "must be an ordinary number, not infinity or NaN"
    if kind in ("bool_type", "bool_parsing"):
        return f"must be true or false, not {got}"
    if kind == "greater_than_equal":
        return f"must be at least {ctx.get('ge')}, not {value}"
    if kind == "less_than_equal":
        return f"must be at most {ctx.get('le')}, not {value}"
    if kind == "greater_than":
        return f"must be more than {ctx.get('gt')}, not {value}"
    if kind == "less_than":
        return f"must be less than {ctx.get('lt')}, not {value}"
    if kind == "too_short":
        least = ctx.get("min_length")
        return "must not be empty" if least == 1 else f"needs at least {least} items, not {ctx.get('actual_length')}"
    if kind == "too_long":
        return f"has {ctx.get('actual_length')} items; at most {ctx.get('max_length')} are allowed"
    if kind == "string_too_short":
        least = ctx.get("min_length")
        return "must not be empty" if least == 1 else f"is too short: write at least {least} characters"
    if kind == "string_too_long":
        length = len(value) if isinstance(value, str) else "more"
        return f"is {length} characters long; at most {ctx.get('max_length')} are allowed"
    if kind == "string_pattern_mismatch":
        pattern = str(ctx.get("pattern", ""))
        return f"{_PATTERNS.get(pattern, f'does not have the expected form ({pattern})')}, not {got}"
    if kind in ("enum", "literal_error"):
        field = error["loc"][-1] if error.get("loc") else None
        if field in _NARROWED:  # the type takes more than the field accepts: list only what the field accepts
            return f"must be {_NARROWED[field]}, not {got}"
        return f"must be one of {_alternatives(str(ctx.get('expected', '')))}, not {got}"
    if kind in ("value_error", "assertion_error"):
        return str(ctx.get("error", error["msg"])).removeprefix("Value error, ")
    if kind == POLICY_RULES_ERROR:
        return str(ctx.get("message", error["msg"]))
    return str(error["msg"])


def _alternatives(expected: str) -> str:
    # pydantic writes "'ALLOW', 'REVIEW' or 'BLOCK'"; staff write them without quotes.
    return expected.replace("'", "")


def wants_hint(error: Mapping[str, Any]) -> bool:
    """Whether the field's description helps: for type and form errors, not for rules that explain themselves."""
    return error["type"] not in (
        "value_error", "assertion_error", POLICY_RULES_ERROR, "extra_forbidden", "string_pattern_mismatch", "enum", "literal_error"
    )  # fmt: skip


_YAML_RULES: list[tuple[re.Pattern[str], str, bool]] = [
    # (problem pattern, sentence, point at the context line rather than the problem line)
    (re.compile(r"found character '\\t' that cannot start any token"), "a tab character: indent with spaces only", False),
    (
        re.compile(r"found character '(.)' that cannot start any token"),
        "a value cannot start with '{0}': put the whole value in quotes",
        False,
    ),
    (
        re.compile(r"mapping values are not allowed here"),
        (
            "a ':' where YAML does not expect one: line this key up with the keys above it, or, if the text itself "
            "contains ': ', put it in quotes"
        ),
        False,
    ),
    (
        re.compile(r"expected <block end>, but found '(?:<block sequence start>|-)'"),
        "this list item ('- ...') does not line up with the lines above it: indent it exactly like its siblings",
        False,
    ),
    (
        re.compile(r"expected <block end>, but found '(?:<block mapping start>|\?)'"),
        "this line does not line up with the lines above it: the keys of one mapping start in the same column",
        False,
    ),
    (
        re.compile(r"expected <block end>, but found '<scalar>'"),
        "more text follows a value on this line: put the whole value in quotes, or check the indentation",
        False,
    ),
    (re.compile(r"expected ',' or '\]'"), "the list opened with '[' here is not closed with ']', or two items lack a ',' between them", True),
    (re.compile(r"expected ',' or '\}'"), "the mapping opened with '{' here is not closed with '}', or two entries lack a ',' between them", True),
    (re.compile(r"found unexpected end of stream"), "a quote opened here is never closed", True),
    (re.compile(r"could not find expected ':'"), "a line without 'key: value' where one is expected: add the ':', or check the indentation", True),
    (re.compile(r"found undefined alias '([^']*)'"), "'*{0}' refers to an anchor '&{0}' that is not defined above it", False),
    (re.compile(r"second occurrence"), "an anchor is defined twice: give each '&name' its own name", False),
    (re.compile(r"but found another document"), "a second document ('---'): a file holds one document", False),
    (
        re.compile(r"found unknown escape character '(.*)'"),
        "unknown escape '\\{0}' in double-quoted text: write '\\\\' for a backslash, or use single quotes",
        False,
    ),
]


def yaml_problem(err: yaml.YAMLError) -> tuple[int | None, str]:
    """(line, sentence) for a YAML syntax error."""
    problem = str(getattr(err, "problem", None) or err)
    problem_mark = getattr(err, "problem_mark", None)
    context_mark = getattr(err, "context_mark", None)
    for pattern, sentence, at_context in _YAML_RULES:
        found = pattern.search(problem)
        if found:
            mark = context_mark if at_context and context_mark is not None else problem_mark
            return (mark.line + 1 if mark is not None else None), "not valid YAML: " + sentence.format(*found.groups())
    context = getattr(err, "context", None)
    return (problem_mark.line + 1 if problem_mark is not None else None), f"not valid YAML: {problem}" + (f" ({context})" if context else "")
