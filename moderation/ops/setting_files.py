"""Files that settings name (certificates, keys, tokens), read with errors that name the setting.

Light on purpose: client commands (`moderation moderate --token-file ...`) read their
token and certificates through this without importing the serving runtime and its models.
"""

from __future__ import annotations

from pathlib import Path


class ConfigurationError(RuntimeError):
    """Settings that cannot run: the message says which setting to change."""


def read_setting_file(path: Path, setting: str) -> bytes:
    """A file a setting names (certificate, key, token); ConfigurationError naming the setting when unreadable."""
    try:
        return path.read_bytes()
    except OSError as err:
        raise ConfigurationError(f"cannot read {path} ({err.strerror}); check {setting}") from err


def read_bearer_token(path: Path, setting: str, min_chars: int = 16) -> str:
    """The one token in a client's token file (blank and '#' lines aside); ConfigurationError naming `setting` otherwise."""
    lines = read_setting_file(path, setting).decode(errors="replace").splitlines()
    tokens = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    if len(tokens) != 1 or len(tokens[0]) < min_chars:
        raise ConfigurationError(f"{path} must hold one token of at least {min_chars} characters; check {setting}")
    return tokens[0]
