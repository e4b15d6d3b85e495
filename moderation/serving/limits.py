"""Bounds on what a caller's strings may become in replies and logs (docs/security.md, "Resource bounds").

A caller controls request ids, policy ids, metadata values and category ids;
each one we echo (in a status message, a stream error entry, an audit line) is
cut to a fixed length with a visible mark, so no reply and no log line grows
with what the caller sent.
"""

from __future__ import annotations

MAX_REQUEST_ID_CHARS = 128  # longer request ids are refused (INVALID_ARGUMENT) and echoed cut
MAX_POLICY_ID_CHARS = 128  # longer policy ids name no policy (NOT_FOUND) and are echoed cut
MAX_ECHO_CHARS = 128  # any caller string quoted back in a reply
MAX_STATUS_CHARS = 1024  # a status message, whatever it quotes


def cut(text: str, limit: int) -> str:
    """`text` if it fits in `limit` characters, else its first `limit` characters and a mark saying how many were left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}…[{len(text) - limit} more characters]"


def cut_utf8(text: str, max_bytes: int) -> str:
    """`text` if its UTF-8 fits in `max_bytes`, else the longest whole-character prefix that does and a mark.

    Bytes, not characters: 256 emoji are 1 KB of UTF-8, and a log line's size is what is bounded.
    """
    encoded = text.encode("utf-8")
    if len(encoded) <= max_bytes:
        return text
    kept = encoded[:max_bytes].decode("utf-8", errors="ignore")  # drops a character cut in half
    return f"{kept}…[{len(encoded) - len(kept.encode('utf-8'))} more bytes]"


def echo(text: str) -> str:
    """A caller's string as a reply may quote it."""
    return cut(text, MAX_ECHO_CHARS)


def status_message(text: str) -> str:
    return cut(text, MAX_STATUS_CHARS)
