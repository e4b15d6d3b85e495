"""The review console: a web page for reviewers, served by the scorer on its own port (console_port, off by default).

A thin HTTP layer (aiohttp, on the server's event loop) over ReviewService:

    GET  /                 index.html, console.js, console.css (this folder; no build step)
    POST /api/<Method>     the JSON of a ReviewService request -> that call over gRPC through the
                           server's private Unix socket (serving/lifecycle.py: local_socket),
                           with the browser's `Authorization: Bearer <reviewer token>` as its
                           metadata -> the JSON of the reply (protobuf's JSON mapping, field
                           names as in review.proto)

so authentication, the audit (the reviewer is the token's name) and every refusal are the
service's own: a gRPC status comes back as the HTTP status of Google's mapping
(UNAUTHENTICATED 401, PERMISSION_DENIED 403, NOT_FOUND 404, ABORTED 409, ...) with a JSON
body {"code": "ABORTED", "message": "<the service's sentence>"}.

The console keeps no state and no token: the page keeps the token in sessionStorage and
sends it with each call. Every response carries a strict Content-Security-Policy (scripts
and styles from this origin only, images from data: URLs, no framing) and the page renders
every text of a case (notes, questions, answers, rationales) with textContent, never as HTML.
The port speaks plain HTTP: keep it on a private address behind a TLS-terminating proxy
(docs/security.md).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import grpc
from aiohttp import web
from google.protobuf import json_format

from moderation.v1 import review_pb2 as rpb
from moderation.v1 import review_pb2_grpc as rpb_grpc

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent
FILES = {"/": ("index.html", "text/html"), "/console.js": ("console.js", "text/javascript"), "/console.css": ("console.css", "text/css")}
SERVICE = rpb.DESCRIPTOR.services_by_name["ReviewService"]
METHODS = {m.name: (getattr(rpb, m.input_type.name), getattr(rpb, m.output_type.name)) for m in SERVICE.methods}
MAX_BODY = 64 * 1024  # notes are at most 2000 characters, questions 300
MAX_AUTHORIZATION = 1024
CALL_TIMEOUT_S = 15.0
ASK_TIMEOUT_S = 120.0  # the escalation tier's own timeout bounds it first
# google.rpc.Code's HTTP mapping (google/rpc/code.proto).
HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.FAILED_PRECONDITION: 400, grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401, grpc.StatusCode.PERMISSION_DENIED: 403, grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409, grpc.StatusCode.ABORTED: 409, grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.CANCELLED: 499, grpc.StatusCode.UNIMPLEMENTED: 501, grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}  # fmt: skip
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


def error_response(code: str, message: str, status: int) -> web.Response:
    return web.json_response({"code": code, "message": message}, status=status, headers=SECURITY_HEADERS)


class ConsoleServer:
    """The console's HTTP server: `start` binds host:port (0 picks one: `port` says which), `close` stops it."""

    def __init__(self, host: str, port: int, grpc_target: str):
        self.host = host
        self.port = port
        self._target = grpc_target
        self._pages = {path: ((STATIC / name).read_bytes(), kind) for path, (name, kind) in FILES.items()}
        self._channel: grpc.aio.Channel | None = None
        self._stub: rpb_grpc.ReviewServiceStub | None = None
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        from moderation.runtime import ConfigurationError

        self._channel = grpc.aio.insecure_channel(self._target)
        self._stub = rpb_grpc.ReviewServiceStub(self._channel)
        app = web.Application(client_max_size=MAX_BODY)
        for path in self._pages:
            app.router.add_get(path, self._page)
        app.router.add_post("/api/{method}", self._call)
        # No access log: URLs hold no secret, but a request log is one more place to keep safe.
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        try:
            await site.start()
        except OSError as error:
            await self.close()
            raise ConfigurationError(
                f"cannot serve the review console on {self.host}:{self.port}: {error.strerror or error}; "
                "set MODERATION_CONSOLE_PORT (--console-port) to a free port"
            ) from None
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or []
        if sockets:
            self.port = sockets[0].getsockname()[1]
        log.info("review console on http://%s:%d/ (ReviewService over %s)", self.host, self.port, self._target)

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    async def _page(self, request: web.Request) -> web.Response:
        body, kind = self._pages[request.path]
        return web.Response(body=body, content_type=kind, charset="utf-8", headers=SECURITY_HEADERS)

    async def _call(self, request: web.Request) -> web.Response:
        name = request.match_info["method"]
        if name not in METHODS:
            return error_response("NOT_FOUND", f"no ReviewService method {name!r}; the console calls {', '.join(METHODS)}", 404)
        request_type, _ = METHODS[name]
        metadata: tuple[tuple[str, str], ...] = ()
        authorization = request.headers.get("Authorization", "")
        if authorization:
            if len(authorization) > MAX_AUTHORIZATION or not authorization.isascii() or not authorization.isprintable():
                return error_response("UNAUTHENTICATED", "the Authorization header must be 'Bearer <token>' in printable ASCII", 401)
            metadata = (("authorization", authorization),)
        try:
            text = await request.text()
            message = json_format.Parse(text or "{}", request_type())
        except web.HTTPRequestEntityTooLarge:
            return error_response("INVALID_ARGUMENT", f"the request body is over {MAX_BODY} bytes", 413)
        except (json_format.ParseError, UnicodeDecodeError, json.JSONDecodeError) as error:
            return error_response("INVALID_ARGUMENT", f"the body is not a {request_type.DESCRIPTOR.name} in JSON: {error}"[:500], 400)
        assert self._stub is not None
        timeout = ASK_TIMEOUT_S if name == "AskCase" else CALL_TIMEOUT_S
        try:
            reply = await getattr(self._stub, name)(message, metadata=metadata, timeout=timeout)
        except grpc.aio.AioRpcError as error:
            code = error.code()
            return error_response(code.name, error.details() or code.name, HTTP_STATUS.get(code, 500))
        document = json_format.MessageToDict(reply, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
        return web.json_response(document, headers=SECURITY_HEADERS)
