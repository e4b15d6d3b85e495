"""What the commands share: consoles, one-line failures, option types, settings and model loading.

Errors a user can fix are printed as one line, without a traceback, with a
non-zero exit code. Models are built through moderation/runtime.py, so offline
commands score with what the server would run.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer
from pydantic import ValidationError
from rich.cells import cell_len
from rich.console import Console
from rich.text import Text
from rich.markup import escape as escape_markup

from moderation.ops.config import Device, LogFormat, Settings, load_settings

if TYPE_CHECKING:  # imported lazily at run time: `moderation --help` must not load torch
    from moderation.core.judge import JudgingCore
    from moderation.signals.clip import ClipModelSpec, ClipScorer
    from moderation.policy import Policy



def printable(value: object) -> str:
    """`value` as text with every control and format character shown as an escape.

    Request ids, rationales, notes and policy text come from callers and the store;
    an ESC in one could clear the analyst's screen or hide the lines after it
    (issue 18), a bidi override could reorder what a reviewer reads.
    """
    text = str(value)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c == " " else c.encode("unicode_escape").decode("ascii") for c in text)


def escape(value: object) -> str:
    """A stored or remote string made safe to print on a terminal: control characters escaped, then rich markup."""
    return escape_markup(printable(value))


def wrap_words(line: Text, width: int) -> list[Text]:
    """`line` cut at spaces to fit `width`, continuation lines indented under it; a word never split.

    A word (a request id, a path) longer than the line stays whole on a line of its own: the
    terminal may fold it, but it can be selected and copied as one. rich's own wrapping
    folds such words ("fold") or cuts them ("crop", "ellipsis").
    """
    plain = line.plain
    leading = len(plain) - len(plain.lstrip(" "))
    indent = min(leading + 2, max(0, width // 3))
    offsets: list[int] = []
    limit, used, first = width, leading, True
    for word in re.finditer(r"\S+\s*", plain):
        size = cell_len(word.group().rstrip())
        if not first and used + size > limit:
            offsets.append(word.start())
            limit, used = width, indent
        used += cell_len(word.group())
        first = False
    pieces = line.divide(offsets) if offsets else [line]
    wrapped = []
    for i, piece in enumerate(pieces):
        piece.rstrip()
        wrapped.append(Text(" " * indent) + piece if i else piece)
    return wrapped


class _LiveConsole:
    """A rich Console made for the streams and COLUMNS of the moment it prints, not of import time.

    A Console reads COLUMNS once, when it is made; a module-level one would keep the
    width of whatever imported it first (a test runner, a shell with other settings).
    """

    def __init__(self, **options: Any):
        self._options = options
        self._made: tuple[tuple[object, ...], Console] | None = None

    def current(self) -> Console:
        key = (sys.stdout, sys.stderr, os.environ.get("COLUMNS"))
        if self._made is None or self._made[0] != key:
            console = Console(**self._options)
            # Width unknown (a pipe, no COLUMNS): lines stay whole, so they grep and a reader's
            # own tools wrap them. Width known: rich wraps at spaces, so the terminal never
            # breaks a word or a request id mid-way (issue 22).
            console.soft_wrap = not (console.is_terminal or (os.environ.get("COLUMNS") or "").isdigit())
            self._made = (key, console)
        return self._made[1]

    def print(self, *objects: Any, **options: Any) -> None:
        console = self.current()
        wrappable = set(options) <= {"highlight", "markup", "style", "end"} and all(isinstance(o, str) for o in objects)
        if console.soft_wrap or not wrappable or not objects:
            console.print(*objects, **options)
            return
        text = console.render_str(
            " ".join(objects), style=options.get("style", ""), markup=options.get("markup"), highlight=options.get("highlight")
        )
        end = options.get("end", "\n")
        lines = text.split("\n", allow_blank=True)
        for n, line in enumerate(lines):
            for piece in wrap_words(line, console.width):
                console.print(piece, soft_wrap=True, end=end if n == len(lines) - 1 else "\n")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.current(), name)


out: Console = _LiveConsole()  # type: ignore[assignment]
err: Console = _LiveConsole(stderr=True)  # type: ignore[assignment]
JsonOption = Annotated[bool, typer.Option("--json", help="print one JSON document on stdout instead of tables")]


def width_known() -> bool:
    """Whether tables can be sized: stdout is a terminal, or COLUMNS says how wide the reader is."""
    return out.is_terminal or (os.environ.get("COLUMNS") or "").isdigit()


def print_json(document: object) -> None:
    import json

    print(json.dumps(document, indent=2, default=str))


def message_document(message: Any, **options: Any) -> dict:
    """A protobuf message as a JSON-ready dict in the vocabulary of every other `--json` document.

    The wire enums are prefixed (ACTION_ALLOW, BAND_BORDERLINE: protobuf's rule for enums in
    one package); the commands' own documents say ALLOW, BORDERLINE, as the policies do. Every
    enum value here loses its enum's prefix (the name of its *_UNSPECIFIED value), so
    `moderate --json` and `compare --json` speak one vocabulary.
    """
    from google.protobuf.json_format import MessageToDict

    document = MessageToDict(message, preserving_proto_field_name=True, **options)
    _plain_enums(message.DESCRIPTOR, document)
    return document


def _enum_prefix(enum: Any) -> str:
    unspecified = next((v.name for v in enum.values if v.number == 0 and v.name.endswith("UNSPECIFIED")), None)
    return unspecified.removesuffix("UNSPECIFIED") if unspecified else ""


def _plain_enums(descriptor: Any, document: dict) -> None:
    for field in descriptor.fields:
        if field.name not in document:
            continue
        value = document[field.name]
        if field.enum_type is not None:
            prefix = _enum_prefix(field.enum_type)
            strip = lambda v: v.removeprefix(prefix) if isinstance(v, str) else v  # noqa: E731
            document[field.name] = [strip(v) for v in value] if isinstance(value, list) else strip(value)
        elif field.message_type is not None and not field.message_type.full_name.startswith("google.protobuf."):
            if field.message_type.GetOptions().map_entry:
                value_field = field.message_type.fields_by_name["value"]
                if value_field.enum_type is not None:
                    prefix = _enum_prefix(value_field.enum_type)
                    document[field.name] = {k: v.removeprefix(prefix) if isinstance(v, str) else v for k, v in value.items()}
                elif value_field.message_type is not None:
                    for item in value.values():
                        _plain_enums(value_field.message_type, item)
            else:
                for item in value if isinstance(value, list) else [value]:
                    if isinstance(item, dict):
                        _plain_enums(field.message_type, item)


def fail(message: str, code: int = 2) -> typer.Exit:
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    return typer.Exit(code)


def require_torch_extra(command: str) -> None:
    """Exit 2 with one line when the `torch` extra is not installed (the lean install, the scorer image)."""
    from moderation.ops.extras import missing_modules, not_installed

    missing = missing_modules()
    if missing:
        raise fail(
            f"`moderation {command}` needs the torch extra, and {not_installed(missing)} here: pip install 'moderation[torch]', or use the torch container image "
            "(deploy/Containerfile, target torch); this install serves exported model folders only"
        )


# The offline policy commands load the model in-process; flags and MODERATION_* env
# resolve as for `serve`, so they score with the model the server would run.
ConfigOption = Annotated[Optional[Path], typer.Option(help="YAML settings file (flags and MODERATION_* env override it)")]
HostOption = Annotated[Optional[str], typer.Option(help="gRPC bind address")]
PortOption = Annotated[Optional[int], typer.Option(help="gRPC port")]
MetricsPortOption = Annotated[Optional[int], typer.Option(help="Prometheus /metrics port, 0 to disable")]
PoliciesOption = Annotated[Optional[Path], typer.Option(help="directory of policy YAML files")]
LogFormatOption = Annotated[Optional[LogFormat], typer.Option(help="json or text")]
ExplainerModelOption = Annotated[Optional[str], typer.Option(help="SmolVLM2 Hugging Face id or local directory (default: as serve)")]
ExplainerWeightsOption = Annotated[Optional[str], typer.Option(help="'pretrained' or 'random' (smoke tests only)")]
ModelOption = Annotated[Optional[str], typer.Option("--model", help="open_clip name, hf-hub:org/repo or local-dir:/path (default: as serve)")]
WeightsOption = Annotated[Optional[str], typer.Option("--weights", help="pretrained tag, checkpoint path, or 'random' (default: as serve)")]
DeviceOption = Annotated[Optional[Device], typer.Option("--device", help="cpu, cuda or auto")]


def policy_or_fail(path: Path) -> tuple[Policy, str]:
    """A valid policy and its text, or one line naming the first problem and how many more there are."""
    from moderation.policy import PolicyFileError, load_policy_file

    try:
        return load_policy_file(path)
    except PolicyFileError as error:
        more = len(error.problems) - 1
        raise fail(f"invalid policy: {error.problems[0]}" + (f" (and {more} more problems)" if more else "")) from None


def settings_or_fail(config: Path | None = None, **flags: object) -> Settings:
    """Settings from flags (None: not given), environment and config file; one line on error."""
    try:
        return load_settings(config, **flags)
    except (ValidationError, FileNotFoundError) as error:
        raise fail(f"invalid settings: {error}") from None


def offline_settings(model: str | None, weights: str | None, device: Device | None, config: Path | None = None) -> Settings:
    """The settings `serve` would run with (flags > MODERATION_* env > --config file > defaults)."""
    return settings_or_fail(config, clip_model=model, clip_weights=weights, device=device)


def model_spec(settings: Settings) -> ClipModelSpec:
    """The model the server would load with these settings."""
    from moderation.runtime import ConfigurationError, clip_spec

    try:
        return clip_spec(settings)
    except ConfigurationError as error:
        raise fail(str(error)) from None


def load_scorer_or_fail(spec: ClipModelSpec) -> ClipScorer:
    from moderation.signals.clip import UnknownBackend, WeightsUnavailable
    from moderation.runtime import load_scorer

    try:
        return load_scorer(spec)
    except (WeightsUnavailable, UnknownBackend) as error:
        raise fail(str(error)) from None


def load_offline_core(settings: Settings) -> tuple[JudgingCore, ClipScorer]:
    """The judging core the server would build from these settings (decode limits, sampling, signals), in-process."""
    from moderation.runtime import build_core

    scorer = load_scorer_or_fail(model_spec(settings))
    return build_core(settings, scorer), scorer

