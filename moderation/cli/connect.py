"""How the client commands reach a server: plaintext, TLS, mutual TLS, and a bearer token.

`moderate` and `policy validate --served` (and every command that calls a server)
take the same options, each also read from the environment, so a production
server with TLS and tokens is as easy to call as a local one:

    moderation moderate photo.jpg --target moderation.example:443 \
        --tls-ca ca.pem [--tls-client-cert me.pem --tls-client-key me.key] --token-file token
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Generic, Optional, TypeVar

import typer

from moderation.cli.common import err, escape, fail

if TYPE_CHECKING:
    import grpc

TlsCaOption = Annotated[
    Optional[Path],
    typer.Option("--tls-ca", envvar="MODERATION_CLIENT_TLS_CA", help="CA bundle (PEM) the server's certificate must chain to; set: TLS"),
]
TlsClientCertOption = Annotated[
    Optional[Path],
    typer.Option("--tls-client-cert", envvar="MODERATION_CLIENT_TLS_CERT", help="client certificate (PEM) for mutual TLS; needs --tls-ca"),
]
TlsClientKeyOption = Annotated[
    Optional[Path], typer.Option("--tls-client-key", envvar="MODERATION_CLIENT_TLS_KEY", help="client private key (PEM) for mutual TLS")
]
TlsServerNameOption = Annotated[
    Optional[str],
    typer.Option("--tls-server-name", envvar="MODERATION_CLIENT_TLS_SERVER_NAME", help="name to check the certificate against, if not the target's host"),
]
TokenFileOption = Annotated[
    Optional[Path],
    typer.Option("--token-file", envvar="MODERATION_CLIENT_TOKEN_FILE", help="file holding the bearer token (one line; never put a token on the command line)"),
]


@dataclass(frozen=True)
class ClientSecurity:
    tls_ca: Path | None = None
    tls_client_cert: Path | None = None
    tls_client_key: Path | None = None
    tls_server_name: str | None = None
    token_file: Path | None = None

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The call metadata carrying the bearer token, if any."""
        if self.token_file is None:
            return ()
        from moderation.ops.setting_files import ConfigurationError, read_bearer_token

        try:
            token = read_bearer_token(self.token_file, "--token-file", min_chars=1)  # any length: the server judges it
        except ConfigurationError as error:
            raise fail(str(error)) from None
        return (("authorization", f"Bearer {token}"),)

    def channel(self, target: str, options: list[tuple[str, object]] | None = None) -> grpc.Channel:
        """A channel to `target` with these settings; a bad combination fails with one line naming the option."""
        import grpc

        options = list(options or [])
        if (self.tls_client_cert is None) != (self.tls_client_key is None):
            raise fail("mutual TLS needs both --tls-client-cert and --tls-client-key")
        if self.tls_ca is None:
            if self.tls_client_cert is not None or self.tls_server_name is not None:
                raise fail("--tls-client-cert, --tls-client-key and --tls-server-name need --tls-ca (TLS)")
            return grpc.insecure_channel(target, options=options)
        credentials = grpc.ssl_channel_credentials(
            _read(self.tls_ca, "--tls-ca"),
            _read(self.tls_client_key, "--tls-client-key") if self.tls_client_key else None,
            _read(self.tls_client_cert, "--tls-client-cert") if self.tls_client_cert else None,
        )
        if self.tls_server_name:
            options.append(("grpc.ssl_target_name_override", self.tls_server_name))
        return grpc.secure_channel(target, credentials, options=options)


def _read(path: Path, option: str) -> bytes:
    from moderation.ops.setting_files import ConfigurationError, read_setting_file

    try:
        return read_setting_file(path, option)
    except ConfigurationError as error:
        raise fail(str(error)) from None


T = TypeVar("T")


def called(call: Callable[[], T]) -> T:
    """The answer of a client command's call, or exit 1 with the server's code and sentence."""
    import grpc

    try:
        return call()
    except grpc.RpcError as error:
        raise refused(error) from None


def refused(error: grpc.RpcError) -> typer.Exit:
    code = error.code()
    name = code.name if code is not None else "UNKNOWN"
    err.print(f"[bold red]error:[/] {escape(f'{name}: {error.details()}')}", highlight=False)
    return typer.Exit(1)


S = TypeVar("S")


@dataclass(frozen=True)
class ServiceConnection(Generic[S]):
    """A client command's way to one service: target, TLS and token, the stub class and channel options."""

    target: str
    security: ClientSecurity
    stub_class: Callable[[grpc.Channel], S]
    options: tuple[tuple[str, object], ...] = ()

    @contextmanager
    def stub(self) -> Iterator[tuple[S, tuple[tuple[str, str], ...]]]:
        """The stub and the call metadata (the token)."""
        metadata = self.security.metadata()
        with self.security.channel(self.target, options=list(self.options)) as channel:
            yield self.stub_class(channel), metadata
