"""`moderation moderate`: send images to a running server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from moderation.cli.app import app
from moderation.cli.common import err, escape, message_document
from moderation.cli.connect import (
    ClientSecurity,
    TlsCaOption,
    TlsClientCertOption,
    TlsClientKeyOption,
    TlsServerNameOption,
    TokenFileOption,
)
from moderation.cli.render import print_response, print_responses_summary


@app.command()
def moderate(
    images: Annotated[list[Path], typer.Argument(help="image files to moderate", exists=True, dir_okay=False)],
    policy: Annotated[str, typer.Option(help="policy id; empty for the server's default")] = "",
    target: Annotated[str, typer.Option(help="server address HOST:PORT")] = "localhost:50051",
    as_json: Annotated[bool, typer.Option("--json", help="print the responses as JSON")] = False,
    timeout: Annotated[float, typer.Option(help="deadline per call, seconds")] = 30.0,
    tls_ca: TlsCaOption = None,
    tls_client_cert: TlsClientCertOption = None,
    tls_client_key: TlsClientKeyOption = None,
    tls_server_name: TlsServerNameOption = None,
    token_file: TokenFileOption = None,
) -> None:
    """Send images to a running server and print its decisions."""
    import grpc
    from moderation.v1 import moderation_pb2 as pb
    from moderation.v1 import moderation_pb2_grpc as pb_grpc

    security = ClientSecurity(tls_ca, tls_client_cert, tls_client_key, tls_server_name, token_file)
    metadata = security.metadata()
    failures = 0
    documents = []
    answered = []
    with security.channel(target, options=[("grpc.max_send_message_length", 256 * 1024 * 1024)]) as channel:
        stub = pb_grpc.ModerationServiceStub(channel)
        for path in images:
            try:
                response = stub.Moderate(pb.ModerateRequest(image=path.read_bytes(), policy_id=policy), timeout=timeout, metadata=metadata)
            except grpc.RpcError as error:
                failures += 1
                err.print(escape(f"{path}: {error.code().name}: {error.details()}"), highlight=False)
                continue
            if as_json:
                documents.append({"image": str(path), **message_document(response)})
            else:
                print_response(path, response)
                answered.append((path, response))
    if len(answered) > 1:
        print_responses_summary(answered)
    if as_json:
        print(json.dumps(documents, indent=2))
    if failures:
        raise typer.Exit(1)

