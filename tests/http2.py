"""Raw TCP clients for the connection-cap attacks (issue 18, item 5): sockets that send
nothing, only the HTTP/2 preface, or the preface and an empty SETTINGS frame, and never
a call. Used by tests/integration/test_idle_sockets.py and the idle-sockets attacker of
bench/abuse.py.
"""

from __future__ import annotations

import socket
import time

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
EMPTY_SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # length 0, type SETTINGS, no flags, stream 0


def open_sockets(target: str, payloads: list[bytes]) -> list[socket.socket]:
    """One connection to `target` ("host:port") per payload, each sending its payload and then nothing."""
    host, port = target.rsplit(":", 1)
    sockets = []
    try:
        for payload in payloads:
            sock = socket.create_connection((host, int(port)), timeout=5)
            sockets.append(sock)
            sock.sendall(payload)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def closed_by_server(sock: socket.socket, deadline: float) -> bool:
    """True once the server has closed the socket (EOF or reset); whatever it sent before (its SETTINGS) is skipped."""
    while time.monotonic() < deadline:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            if sock.recv(4096) == b"":
                return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False
    return False
