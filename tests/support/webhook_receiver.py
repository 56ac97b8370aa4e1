"""A loopback webhook receiver for notification tests: it records every request, and answers
the statuses it is told to, in order.

::

    with WebhookReceiver(statuses=[500, 200]) as receiver:
        ...  # POST to receiver.url("/hook")
        assert [r.status for r in receiver.requests] == [500, 200]

Once the scripted statuses are used up it answers ``default`` (200). ``down_url()`` gives a
loopback URL where nothing listens (a receiver that is down). Handler threads are daemons,
and every answer is immediate.
"""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HOST = "127.0.0.1"
MAX_BODY = 1 << 20


@dataclass(frozen=True)
class Received:
    """One request as it arrived, and the status it was answered."""

    method: str
    path: str
    headers: dict[str, str]  # names lower case
    body: bytes
    status: int


class WebhookReceiver:
    """A ``ThreadingHTTPServer`` on 127.0.0.1 and a free port.

    Args:
        statuses: the answers to the first requests, in order.
        default: the answer once ``statuses`` are used up.
        headers: extra headers on every answer (``Retry-After``...).
    """

    def __init__(self, statuses: list[int] | tuple[int, ...] = (), *, default: int = 200,
                 headers: dict[str, str] | None = None) -> None:
        self._statuses = list(statuses)
        self._default = default
        self._answer_headers = dict(headers or {})
        self._lock = threading.Lock()
        self.requests: list[Received] = []
        self._server = ThreadingHTTPServer((HOST, 0), self._handler())
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)

    def url(self, path: str = "/hook") -> str:
        return f"http://{HOST}:{self.port}{path}"

    def _next_status(self) -> int:
        with self._lock:
            return self._statuses.pop(0) if self._statuses else self._default

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(min(length, MAX_BODY))
                status = receiver._next_status()
                with receiver._lock:
                    receiver.requests.append(Received(
                        "POST", self.path, {k.lower(): v for k, v in self.headers.items()},
                        body, status))
                self.send_response(status)
                for name, value in receiver._answer_headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args) -> None:  # noqa: A002 - quiet
                pass

        return Handler

    def __enter__(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def down_url(path: str = "/hook") -> str:
    """A loopback URL where nothing listens: a port bound, then closed."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port = sock.getsockname()[1]
    return f"http://{HOST}:{port}{path}"
