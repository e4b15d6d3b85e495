"""A Hugging Face Hub stand-in on loopback, serving model repositories from local folders.

The model hubs are unreachable from the build machines, so `moderation weights prefetch`
is tested against this: the few endpoints huggingface_hub's `hf_hub_download` and
`snapshot_download` call (repository info, tree listing, file HEAD and GET), with the
headers it reads (X-Repo-Commit, ETag, Content-Length). It is a stand-in for an external
service, not for any part of this project.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    def __init__(self, repos: dict[str, Path]) -> None:
        self.repos = repos
        self.requests: list[str] = []  # "METHOD path" of every request, for assertions
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-hub", daemon=True)

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _files(self, repo: str) -> list[tuple[str, Path]]:
        root = self.repos[repo]
        return sorted((p.relative_to(root).as_posix(), p) for p in root.rglob("*") if p.is_file())

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet test output
                pass

            def do_HEAD(self) -> None:  # noqa: N802 - http.server's naming
                self._serve(body=False)

            def do_GET(self) -> None:  # noqa: N802
                self._serve(body=True)

            def _serve(self, body: bool) -> None:
                path = unquote(urlsplit(self.path).path)
                hub.requests.append(f"{self.command} {path}")
                parts = path.strip("/").split("/")
                if parts[:2] == ["api", "models"] and len(parts) >= 6:
                    repo = "/".join(parts[2:4])
                    if repo not in hub.repos:
                        return self._send(404, b'{"error": "Repository not found"}', {"X-Error-Code": "RepoNotFound"})
                    if parts[4] == "revision":
                        files = [{"rfilename": name} for name, _ in hub._files(repo)]
                        return self._json({"id": repo, "sha": COMMIT, "siblings": files})
                    if parts[4] == "tree":
                        entries = [
                            {"type": "file", "path": name, "size": p.stat().st_size, "oid": hashlib.sha1(p.read_bytes()).hexdigest()}
                            for name, p in hub._files(repo)
                        ]
                        return self._json(entries)
                if len(parts) >= 5 and parts[2] == "resolve":
                    repo, name = "/".join(parts[:2]), "/".join(parts[4:])
                    file = hub.repos.get(repo, Path("/nonexistent")) / name
                    if repo not in hub.repos or not file.is_file():
                        return self._send(404, b"Entry not found", {"X-Error-Code": "EntryNotFound"}, body)
                    data = file.read_bytes()
                    headers = {"X-Repo-Commit": COMMIT, "ETag": f'"{hashlib.sha256(data).hexdigest()}"'}
                    return self._send(200, data, headers, body)
                return self._send(404, b"not found", {}, body)

            def _json(self, document: object) -> None:
                self._send(200, json.dumps(document).encode(), {"Content-Type": "application/json"})

            def _send(self, status: int, data: bytes, headers: dict[str, str], body: bool = True) -> None:
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if body:
                    self.wfile.write(data)

        return Handler


@contextmanager
def fake_hub(repos: dict[str, Path]) -> Iterator[FakeHub]:
    hub = FakeHub(repos)
    hub.start()
    try:
        yield hub
    finally:
        hub.stop()
