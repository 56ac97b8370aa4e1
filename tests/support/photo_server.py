"""A loopback HTTP server for photo-fetch tests: a route table, and a log of every request.

::

    with PhotoServer() as server:
        server.route("/p.png", Route(body=png, etag='"v1"'))
        server.route("/old", redirect("/p.png"))
        fetcher.fetch(server.url("/p.png"))
        assert server.count("/p.png") == 1

It speaks HTTP/1.1 with keep-alive (so client connection pools are exercised), answers 304
to a matching ``If-None-Match`` or ``If-Modified-Since``, and can fail a route N times, delay
it, trickle its body or send it chunked. Every wait is bounded (``MAX_DELAY_S``), and the
handler threads are daemons, so a test that gives up on a slow route leaves nothing running
for long. With ``tls=(certfile, keyfile)`` it serves HTTPS and records the SNI name asked for.
"""

from __future__ import annotations

import ssl
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HOST = "127.0.0.1"
MAX_DELAY_S = 5.0


@dataclass
class Route:
    """How the server answers one path.

    Attributes:
        status: the answer's status (after any ``fail_first`` failures).
        body: the answer's body.
        headers: extra response headers (``Location`` for a redirect, ``Retry-After`` ...).
        etag: sent as ``ETag``; a request whose ``If-None-Match`` matches gets a 304.
        last_modified: sent as ``Last-Modified``; an equal ``If-Modified-Since`` gets a 304.
        delay_s: wait before answering (capped at ``MAX_DELAY_S``).
        fail_first: answer ``fail_status`` to this many requests first.
        fail_status: the status of those failures.
        chunked: send the body with ``Transfer-Encoding: chunked`` and no length.
        trickle_s: wait between body chunks of ``chunk_size`` bytes.
        chunk_size: body chunk size when chunked or trickling.
    """

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    etag: str = ""
    last_modified: str = ""
    delay_s: float = 0.0
    fail_first: int = 0
    fail_status: int = 503
    chunked: bool = False
    trickle_s: float = 0.0
    chunk_size: int = 64 * 1024


def redirect(location: str, status: int = 302) -> Route:
    """A route that redirects to ``location`` (absolute, or a path on this server)."""
    return Route(status=status, headers={"Location": location})


@dataclass(frozen=True)
class Request:
    """One request as the server saw it; header names are lower case."""

    path: str
    headers: dict[str, str]
    status: int  # what the server answered
    body_bytes: int  # body bytes in its answer
    sni: str | None = None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real photo hosts do
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # quiet test output
        return

    def do_GET(self) -> None:
        owner = self.server.owner
        path = self.path.split("?", 1)[0]
        headers = {k.lower(): v for k, v in self.headers.items()}
        route, seen = owner.lookup(path)
        status = 404
        if route is not None:
            self._wait(route.delay_s)
            status = route.status if seen >= route.fail_first else route.fail_status
            if status == 200 and self._not_modified(route, headers):
                status = 304
        body = b"no such photo" if route is None else b"" if status == 304 else route.body
        # Recorded before answering: once the client has its answer the log is complete.
        owner.record(Request(path=path, headers=headers, status=status, body_bytes=len(body),
                             sni=getattr(self.connection, "photo_sni", None)))
        self._answer(route or Route(), status, body)

    def _not_modified(self, route: Route, headers: dict[str, str]) -> bool:
        match = headers.get("if-none-match")
        if route.etag and match is not None:
            return match.strip() == "*" or route.etag in [t.strip() for t in match.split(",")]
        since = headers.get("if-modified-since")
        return bool(route.last_modified) and since == route.last_modified

    def _answer(self, route: Route, status: int, body: bytes) -> None:
        self.send_response(status)
        for name, value in route.headers.items():
            self.send_header(name, value)
        if route.etag:
            self.send_header("ETag", route.etag)
        if route.last_modified:
            self.send_header("Last-Modified", route.last_modified)
        if route.chunked and status != 304:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        step = route.chunk_size if (route.chunked or route.trickle_s) else max(1, len(body))
        for start in range(0, len(body), step):
            piece = body[start:start + step]
            if route.chunked:
                piece = b"%x\r\n%s\r\n" % (len(piece), piece)
            self.wfile.write(piece)
            self.wfile.flush()
            if route.trickle_s and start + step < len(body):
                self._wait(route.trickle_s)
        if route.chunked and status != 304:
            self.wfile.write(b"0\r\n\r\n")

    def _wait(self, seconds: float) -> None:
        # Bounded, and cut short when the server stops, so no test waits on a sleeper.
        self.server.owner.stopping.wait(min(seconds, MAX_DELAY_S))


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    # socketserver's default backlog of 5 drops the SYNs of a burst of new connections, and
    # each dropped one stalls its client for the 1 s SYN retransmit.
    request_queue_size = 128
    owner: PhotoServer

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks the address up with getfqdn (a reverse DNS query);
        # a test server must send nothing beyond loopback.
        self.socket.bind(self.server_address)
        self.server_address = self.socket.getsockname()
        self.server_name, self.server_port = HOST, self.server_address[1]

    def handle_error(self, request, client_address) -> None:
        # Clients hanging up mid-answer (timeouts, size limits) is what the tests provoke.
        if not isinstance(sys.exc_info()[1], (ConnectionError, ssl.SSLError, TimeoutError)):
            super().handle_error(request, client_address)


class PhotoServer:
    """A threaded HTTP(S) server on 127.0.0.1 and a free port, serving ``Route`` s.

    Args:
        tls: ``(certfile, keyfile)`` to serve HTTPS instead of HTTP.
    """

    def __init__(self, *, tls: tuple[str, str] | None = None) -> None:
        self._routes: dict[str, Route] = {}
        self._seen: dict[str, int] = {}
        self._lock = threading.Lock()
        self.requests: list[Request] = []
        self.stopping = threading.Event()
        self._server = _Server((HOST, 0), _Handler)
        self._server.owner = self
        self.scheme = "http"
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            context.sni_callback = lambda sock, name, ctx: setattr(sock, "photo_sni", name)
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
            self.scheme = "https"
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def route(self, path: str, route: Route) -> str:
        """Serve ``route`` at ``path`` (replacing any earlier one); returns its URL."""
        with self._lock:
            self._routes[path] = route
        return self.url(path)

    def url(self, path: str, *, host: str = HOST) -> str:
        """This server's URL for ``path``; ``host`` may be a name the test resolves itself."""
        return f"{self.scheme}://{host}:{self.port}{path}"

    def lookup(self, path: str) -> tuple[Route | None, int]:
        """The route for ``path`` and how many requests the path had before this one."""
        with self._lock:
            seen = self._seen.get(path, 0)
            self._seen[path] = seen + 1
            return self._routes.get(path), seen

    def record(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)

    def count(self, path: str | None = None) -> int:
        """Requests received, for one path or all; counted on arrival, before any delay."""
        with self._lock:
            return self._seen.get(path, 0) if path is not None else sum(self._seen.values())

    def seen(self, path: str) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if r.path == path]

    def stop(self) -> None:
        self.stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> PhotoServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
