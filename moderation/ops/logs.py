"""Logging configured once: JSON lines (default) or plain text.

Structured fields go in `extra={"fields": {...}}`. Nothing here ever receives
image bytes; callers pass ids, versions and outcomes only.

Either format keeps one record on one line whatever a caller put in it: JSON
escapes by construction; the text format escapes control characters (newline,
ESC, ...), writes every field value as a bare token or one quoted string, and
quotes a message holding '=' or quotes, so a request id, a metadata value or an
error message cannot forge a second line or a field. A server started in JSON mode also
routes what native code (grpc-core) writes to stderr through logging, so the
log stays JSON lines (`capture_native_stderr`).
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        # Not ASCII-escaped: an emoji is 4 bytes of UTF-8 rather than 12 of \\ud83d\\ude00 (audit lines stay < 2 KB).
        return json.dumps(entry, default=str, ensure_ascii=False)


# C0 and C1 control characters, DEL, and the Unicode line and paragraph separators.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_PLAIN_VALUE = re.compile(r'[^\s="\\]+')


def escape_control(text: str) -> str:
    """Control characters as visible escapes (\\n, \\x1b, \\u2028): one record stays one line, no terminal escapes."""
    return _CONTROL.sub(lambda m: _NAMED.get(m.group(), f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100 else f"\\u{ord(m.group()):04x}"), text)


def _text_value(value: object) -> str:
    """A logfmt value no parser can split: plain tokens and numbers bare, anything else one quoted string.

    A mapping or list is quoted as a whole (its JSON inside the quotes): written bare, a
    metadata value could put `caller=token:admin` after the real caller (issue 18).
    """
    if isinstance(value, str):
        text = value if _PLAIN_VALUE.fullmatch(value) else json.dumps(value, ensure_ascii=False)
    elif value is None or isinstance(value, bool | int | float):
        text = json.dumps(value)
    else:
        text = json.dumps(json.dumps(value, default=str, ensure_ascii=False), ensure_ascii=False)
    return escape_control(text)


def _text_message(message: str) -> str:
    """The message bare when it cannot pose as fields (no '=' or quote), else quoted like a value."""
    if "=" in message or '"' in message:
        return escape_control(json.dumps(message, ensure_ascii=False))
    return escape_control(message)


_KEY = re.compile(r"[^A-Za-z0-9_.-]")


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = f"{self.formatTime(record)} {record.levelname} {record.name}: {_text_message(record.getMessage())}"
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line += " " + " ".join(f"{_KEY.sub('_', str(k))}={_text_value(v)}" for k, v in fields.items())
        if record.exc_info:
            # Indented continuation lines: a traceback can never pass for a record of its own.
            line += "".join(f"\n    {escape_control(text)}" for text in self.formatException(record.exc_info).splitlines())
        return line


class RateLimitedLog:
    """At most `per_interval` lines per `interval_s` from one noisy source; the next line written says how many were left out."""

    def __init__(self, logger: logging.Logger, per_interval: int, interval_s: float = 60.0, clock: Callable[[], float] = time.monotonic):
        self._logger = logger
        self._per_interval = per_interval
        self._interval_s = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._window_start = -float("inf")
        self._written = 0
        self._left_out = 0

    def log(self, level: int, msg: str, *args: object, fields: dict[str, Any] | None = None) -> bool:
        """Write the line unless this interval's quota is used up; True if written."""
        with self._lock:
            now = self._clock()
            if now - self._window_start >= self._interval_s:
                self._window_start, self._written = now, 0
            if self._written >= self._per_interval:
                self._left_out += 1
                return False
            self._written += 1
            left_out, self._left_out = self._left_out, 0
        self._logger.log(level, msg, *args, extra={"fields": {**(fields or {}), "left_out_before": left_out}})
        return True


def _not_library_chatter(record: logging.LogRecord) -> bool:
    # open_clip logs progress and failures with bare logging.info()/error() on
    # the root logger; our loader restates its failures as one actionable line.
    if record.name != "root":
        return True
    if "open_clip" in record.pathname:
        return record.levelno >= logging.CRITICAL
    return record.levelno >= logging.WARNING


def _quiet_ended_calls(record: logging.LogRecord) -> bool:
    # grpc logs an ERROR with a traceback when it cannot send a reply because the
    # client has just cancelled or disconnected (a race its own check misses):
    # nothing failed here, so it becomes one DEBUG line without the traceback.
    if record.name == "grpc._cython.cygrpc" and str(record.msg).startswith("ExecuteBatchError raised in core by servicer method"):
        if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
            return False
        method = record.getMessage().rpartition(" ")[2]
        record.levelno, record.levelname, record.exc_info, record.exc_text = logging.DEBUG, "DEBUG", None, None
        record.msg, record.args = "a call ended (client cancelled or disconnected) before its reply could be sent: %s", (method,)
    return True


def configure_logging(level: str = "INFO", fmt: str = "json", native_stderr: bool = False) -> None:
    """One handler on the root logger; `native_stderr` (servers, JSON only): see `capture_native_stderr`."""
    stream: TextIO = sys.stderr
    if native_stderr and fmt == "json":
        stream = capture_native_stderr()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(_not_library_chatter)
    handler.addFilter(_quiet_ended_calls)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


# grpc-core's absl lines: 'E1201 03:05:05.181283   18800 ssl_transport_security.cc:2563] Handshake failed ...'
_ABSL_LINE = re.compile(r"^([IWEF])\d{4} [\d:.]+\s+\d+\s+([^\]\s]+)\] ?(.*)$")
_ABSL_LEVELS = {"I": logging.INFO, "W": logging.WARNING, "E": logging.ERROR, "F": logging.CRITICAL}
NATIVE_LINES_PER_MINUTE = 120
_native: tuple[int, threading.Thread] | None = None


def capture_native_stderr() -> TextIO:
    """Route file descriptor 2 through logging; return a stream on the real stderr for the log handler.

    grpc-core (a TLS handshake that fails, for instance) and other native code
    write plain lines to fd 2, which would break a JSON-lines log. fd 2 becomes
    a pipe; a thread turns each line into a record of the `grpc.core` logger
    (absl lines keep their level and source) or `stderr` (anything else), at
    most NATIVE_LINES_PER_MINUTE a minute, so a handshake flood cannot flood
    the log. At exit fd 2 is restored and the remaining lines are written.
    """
    global _native
    if _native is not None:
        return os.fdopen(os.dup(_native[0]), "w", buffering=1, encoding="utf-8", errors="replace")
    sys.stderr.flush()
    original = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    limited = {name: RateLimitedLog(logging.getLogger(name), NATIVE_LINES_PER_MINUTE) for name in ("grpc.core", "stderr")}

    def pump() -> None:
        with os.fdopen(read_end, "r", encoding="utf-8", errors="replace") as lines:
            for raw in lines:
                text = raw.rstrip("\n")
                if not text.strip():
                    continue
                match = _ABSL_LINE.match(text)
                if match:
                    limited["grpc.core"].log(_ABSL_LEVELS[match[1]], "%s", match[3], fields={"source": match[2]})
                else:
                    limited["stderr"].log(logging.WARNING, "%s", text)

    thread = threading.Thread(target=pump, name="native-stderr", daemon=True)
    thread.start()
    _native = (original, thread)

    def restore() -> None:
        sys.stderr.flush()
        os.dup2(original, 2)  # closes this process's last write end of the pipe: the pump reads EOF
        thread.join(timeout=2.0)

    atexit.register(restore)
    return os.fdopen(os.dup(original), "w", buffering=1, encoding="utf-8", errors="replace")
