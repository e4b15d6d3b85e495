"""`moderation moderate`: send images and short videos to a running server."""

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
from moderation.cli.render import print_response, print_responses_summary, print_video_response

VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".webm", ".mkv")
# Streamed in chunks well under any server's message limit.
VIDEO_CHUNK_BYTES = 1024 * 1024


def is_video(path: Path) -> bool:
    """A video by its name, or by its first bytes (an MP4/MOV box or the Matroska/WebM EBML header)."""
    if path.suffix.lower() in VIDEO_SUFFIXES:
        return True
    with path.open("rb") as file:
        head = file.read(12)
    return head[:4] == b"\x1a\x45\xdf\xa3" or head[4:8] in (b"ftyp", b"moov")


def video_requests(path: Path, policy: str, sample_fps: float):  # noqa: ANN201 - generated message type
    """The options message, then the file in chunks, read as they are sent."""
    from moderation.v1 import moderation_pb2 as pb

    yield pb.ModerateVideoRequest(options=pb.VideoOptions(policy_id=policy, sample_fps=sample_fps))
    with path.open("rb") as file:
        while chunk := file.read(VIDEO_CHUNK_BYTES):
            yield pb.ModerateVideoRequest(chunk=chunk)


@app.command()
def moderate(
    images: Annotated[list[Path], typer.Argument(help="image or video files to moderate (MP4, MOV, WebM, MKV are sent to ModerateVideo)", exists=True, dir_okay=False)],
    policy: Annotated[str, typer.Option(help="policy id; empty for the server's default")] = "",
    target: Annotated[str, typer.Option(help="server address HOST:PORT")] = "localhost:50051",
    as_json: Annotated[bool, typer.Option("--json", help="print the responses as JSON")] = False,
    timeout: Annotated[float, typer.Option(help="deadline per call, seconds")] = 30.0,
    sample_fps: Annotated[float, typer.Option(help="videos: frames sampled per second; 0 for the server's default")] = 0.0,
    tls_ca: TlsCaOption = None,
    tls_client_cert: TlsClientCertOption = None,
    tls_client_key: TlsClientKeyOption = None,
    tls_server_name: TlsServerNameOption = None,
    token_file: TokenFileOption = None,
) -> None:
    """Send images and videos to a running server and print its decisions (for videos, the segments too)."""
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
            video = is_video(path)
            try:
                if video:
                    response = stub.ModerateVideo(video_requests(path, policy, sample_fps), timeout=timeout, metadata=metadata)
                else:
                    response = stub.Moderate(pb.ModerateRequest(image=path.read_bytes(), policy_id=policy), timeout=timeout, metadata=metadata)
            except grpc.RpcError as error:
                failures += 1
                err.print(escape(f"{path}: {error.code().name}: {error.details()}"), highlight=False)
                continue
            if as_json:
                documents.append({"video" if video else "image": str(path), **message_document(response)})
            elif video:
                print_video_response(path, response)
                answered.append((path, response))
            else:
                print_response(path, response)
                answered.append((path, response))
    if len(answered) > 1:
        print_responses_summary(answered)
    if as_json:
        print(json.dumps(documents, indent=2))
    if failures:
        raise typer.Exit(1)

