"""Optional bearer-token authentication (the interceptor is in interceptors.py) and caller identity.

Tokens live in a file of `name:token` lines (mounted from a Secret), so a
caller's identity in the audit log is the token's name, never the token.
Comparison is constant-time over every configured token. Health checks and
reflection stay open so probes and tooling work without credentials.

Three scopes, each its own file: `auth_tokens_file` for moderating (ModerationService,
ExplainerService), `curation_tokens_file` for curating banks (BankService,
`CURATION_SERVICES`) and `reviewer_tokens_file` for working the review queue
(ReviewService, `REVIEW_SERVICES`; one token per reviewer, its name the reviewer in the
audit). A token of one scope is refused by the others.
"""

from __future__ import annotations

import contextvars
import hmac
import logging
import threading
import time
from pathlib import Path

import grpc

OPEN_SERVICES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
# Methods that take curation tokens only (and are refused when curation_tokens_file is unset).
CURATION_SERVICES = ("/moderation.v1.BankService/",)
# Methods that take reviewer tokens only (and are refused when reviewer_tokens_file is unset).
REVIEW_SERVICES = ("/moderation.v1.ReviewService/",)

# The authenticated caller of the current RPC ('token:NAME'), set by the auth interceptor
# (moderation/serving/interceptors.py) around the handler, so the token is checked once per RPC.
authenticated_caller: contextvars.ContextVar[str | None] = contextvars.ContextVar("authenticated_caller", default=None)


log = logging.getLogger(__name__)

# How often a token file is checked for changes (see ReloadingTokenAuth): a revoked token
# is refused within this long. A stat per check, at most once per interval.
TOKEN_FILE_RECHECK_S = 5.0


class TokenFileError(ValueError):
    pass


def load_tokens(path: Path, variable: str = "MODERATION_AUTH_TOKENS_FILE") -> dict[str, bytes]:
    """{name: token} from lines `name:token`; blank lines and # comments ignored. `variable` names the setting in messages."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise TokenFileError(f"cannot read token file {path}: {err.strerror}; check {variable}") from err
    tokens: dict[str, bytes] = {}
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, token = line.partition(":")
        if not sep or not name.strip() or len(token.strip()) < 16:
            raise TokenFileError(f"{path}:{number}: expected 'name:token' with a token of at least 16 characters")
        tokens[name.strip()] = token.strip().encode()
    if not tokens:
        raise TokenFileError(f"{path} holds no tokens; add 'name:token' lines or unset {variable}")
    return tokens


class TokenAuth:
    def __init__(self, tokens: dict[str, bytes]):
        self._tokens = tokens

    @classmethod
    def from_file(cls, path: Path, variable: str, recheck_s: float = TOKEN_FILE_RECHECK_S) -> TokenAuth:
        """Tokens from `path`, read again when the file changes: a token removed from it (a reviewer who
        left, a leaked token) is refused within `recheck_s`, without a restart. See ReloadingTokenAuth."""
        return ReloadingTokenAuth(path, variable, recheck_s)

    def check(self, metadata: tuple[tuple[str, str | bytes], ...] | None) -> tuple[str | None, str]:
        """(the token's name, '') for one valid `authorization: Bearer <token>` header, else (None, reason).

        Reasons (bounded, they label a counter): missing, malformed, duplicate, invalid.
        More than one authorization header is refused: which one a proxy or the
        server would read is ambiguous, so neither is trusted.
        """
        values = [value for key, value in metadata or () if key == "authorization"]
        if not values:
            return None, "missing"
        if len(values) > 1:
            return None, "duplicate"
        text = values[0].decode(errors="replace") if isinstance(values[0], bytes) else values[0]
        if text[:7].lower() != "bearer ":
            return None, "malformed"
        presented = text[7:].strip().encode()
        found = None
        for name, token in self._tokens.items():
            # Compare against every token so timing does not reveal which one nearly matched.
            if hmac.compare_digest(presented, token):
                found = name
        return (found, "") if found is not None else (None, "invalid")

    def caller(self, metadata: tuple[tuple[str, str | bytes], ...] | None) -> str | None:
        """The token's name for a valid header, else None."""
        return self.check(metadata)[0]


class ReloadingTokenAuth(TokenAuth):
    """A token file that is read again when it changes (a Kubernetes Secret update swaps the mounted file).

    At most every `recheck_s` a check stats the file (size, mtime, inode: a Secret update
    replaces the file behind a symlink); when they changed, the file is read again. A file
    that cannot be read or parsed keeps the tokens in force (refusing everyone would stop
    the service on a bad edit) and logs why, once per change. Removed tokens are refused
    from the next check on: revocation without a restart.
    """

    def __init__(self, path: Path, variable: str, recheck_s: float):
        super().__init__(load_tokens(path, variable))
        self._path, self._variable, self._recheck_s = path, variable, recheck_s
        self._seen = _file_identity(path)
        self._next_check = time.monotonic() + recheck_s
        self._lock = threading.Lock()

    def check(self, metadata: tuple[tuple[str, str | bytes], ...] | None) -> tuple[str | None, str]:
        if time.monotonic() >= self._next_check:
            self._reload_if_changed()
        return super().check(metadata)

    def _reload_if_changed(self) -> None:
        with self._lock:
            now = time.monotonic()
            if now < self._next_check:
                return  # another caller checked meanwhile
            self._next_check = now + self._recheck_s
            seen = _file_identity(self._path)
            if seen == self._seen:
                return
            self._seen = seen
            try:
                tokens = load_tokens(self._path, self._variable)
            except TokenFileError as err:
                log.error("%s changed but cannot be used (%s); the tokens read before stay in force", self._variable, err)
                return
            removed, added = len(self._tokens.keys() - tokens.keys()), len(tokens.keys() - self._tokens.keys())
            self._tokens = tokens  # one assignment: a concurrent check sees the old or the new set
            log.info("%s read again: %d tokens (%d added, %d removed)", self._variable, len(tokens), added, removed)


def _file_identity(path: Path) -> tuple[int, int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return (stat.st_ino, stat.st_size, stat.st_mtime_ns)


# The identity found for a call, with the call's context: the admission interceptor and the servicer
# both ask, and `auth_context()` builds a dict of the connection's properties each time.
_identity_of_call: contextvars.ContextVar[tuple[object, str] | None] = contextvars.ContextVar("identity_of_call", default=None)


def caller_identity(context: grpc.aio.ServicerContext) -> str:
    """Who called, for the audit log: token name, else mTLS subject, else 'anonymous'."""
    token_caller = authenticated_caller.get()
    if token_caller:
        return token_caller
    found = _identity_of_call.get()
    if found is not None and found[0] is context:
        return found[1]
    auth_context = context.auth_context()
    common_names = auth_context.get("x509_common_name") or []
    identity = f"mtls:{common_names[0].decode(errors='replace')}" if common_names else "anonymous"
    _identity_of_call.set((context, identity))
    return identity
