"""Optional bearer-token authentication, as a gRPC server interceptor.

Tokens live in a file of `name:token` lines (mounted from a Secret), so a
caller's identity in the audit log is the token's name, never the token.
Comparison is constant-time over every configured token. Health checks and
reflection stay open so probes and tooling work without credentials.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc

OPEN_SERVICES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


class TokenFileError(ValueError):
    pass


def load_tokens(path: Path) -> dict[str, bytes]:
    """{name: token} from lines `name:token`; blank lines and # comments ignored."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise TokenFileError(f"cannot read auth token file {path}: {err.strerror}; check MODERATION_AUTH_TOKENS_FILE") from err
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
        raise TokenFileError(f"{path} holds no tokens; remove MODERATION_AUTH_TOKENS_FILE to turn auth off")
    return tokens


class TokenAuth:
    def __init__(self, tokens: dict[str, bytes]):
        self._tokens = tokens

    def caller(self, metadata: tuple[tuple[str, str | bytes], ...] | None) -> str | None:
        """The token's name for an `authorization: Bearer <token>` header, else None."""
        presented = b""
        for key, value in metadata or ():
            if key == "authorization":
                text = value.decode() if isinstance(value, bytes) else value
                if text[:7].lower() == "bearer ":
                    presented = text[7:].strip().encode()
        found = None
        for name, token in self._tokens.items():
            # Compare against every token so timing does not reveal which one nearly matched.
            if hmac.compare_digest(presented, token):
                found = name
        return found


def _unauthenticated(message: str) -> grpc.RpcMethodHandler:
    async def abort_unary(request: object, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    async def abort_stream(request_iterator: object, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    # One handler shape per RPC kind; ModerateStream is stream-stream.
    return grpc.unary_unary_rpc_method_handler(abort_unary), grpc.stream_stream_rpc_method_handler(abort_stream)


class TokenAuthInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, auth: TokenAuth):
        self._auth = auth
        self._reject_unary, self._reject_stream = _unauthenticated(
            "missing or invalid bearer token; send metadata 'authorization: Bearer <token>'"
        )

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        if handler_call_details.method.startswith(OPEN_SERVICES):
            return await continuation(handler_call_details)
        if self._auth.caller(handler_call_details.invocation_metadata) is None:
            handler = await continuation(handler_call_details)
            streaming = handler is not None and handler.request_streaming
            return self._reject_stream if streaming else self._reject_unary
        return await continuation(handler_call_details)


def caller_identity(context: grpc.aio.ServicerContext, auth: TokenAuth | None) -> str:
    """Who called, for the audit log: token name, else mTLS subject, else 'anonymous'."""
    if auth is not None:
        name = auth.caller(context.invocation_metadata())
        if name:
            return f"token:{name}"
    auth_context = context.auth_context()
    common_names = auth_context.get("x509_common_name") or []
    if common_names:
        return f"mtls:{common_names[0].decode(errors='replace')}"
    return "anonymous"
