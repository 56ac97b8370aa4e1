"""What the loopback stand-ins of providers' HTTP APIs share (``hosted_api``,
``replicate_api``): a quiet threaded server on 127.0.0.1, a handler base that answers bytes,
and running a stand-in in the foreground for trying a job by hand."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

HOST = "127.0.0.1"


class LoopbackServer(ThreadingHTTPServer):
    """A threaded HTTP server on loopback that never looks names up and never prints the errors
    of clients that hang up (timeouts and killed drivers are what tests provoke). ``owner`` is
    the stand-in its handlers ask."""

    daemon_threads = True
    block_on_close = False
    request_queue_size = 128
    owner: Any

    def server_bind(self) -> None:  # no reverse DNS lookup of loopback
        self.socket.bind(self.server_address)
        self.server_address = self.socket.getsockname()
        self.server_name, self.server_port = HOST, self.server_address[1]

    def handle_error(self, request, client_address) -> None:
        return


class Handler(BaseHTTPRequestHandler):
    """HTTP/1.1 with keep-alive, no access log; subclasses route ``_dispatch(method)``."""

    protocol_version = "HTTP/1.1"
    server: LoopbackServer
    #: headers every answer carries (a provider's own request id header, say)
    extra_headers: Callable[[], dict[str, str]] = staticmethod(dict)

    def log_message(self, format: str, *args: object) -> None:
        return

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def _dispatch(self, method: str) -> None:
        raise NotImplementedError

    def _answer(self, status: int, data: bytes, content_type: str,
                headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in {**self.extra_headers(), **(headers or {})}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)


def serve_in_foreground(make: Callable[[], Any], what: str, address: Callable[[Any], str],
                        doc: str | None) -> None:
    """``python -m tests.support.<stand-in>``: start one, print the variables to export
    (``--print-env``: only those, as ``NAME=value`` lines), serve until Ctrl-C or SIGTERM."""
    import argparse
    import signal
    import sys

    parser = argparse.ArgumentParser(description=doc)
    parser.add_argument("--print-env", action="store_true")
    parser.add_argument("--job-s", type=float, default=0.0, help="seconds each job runs")
    args = parser.parse_args()
    api = make()
    api.job_s = args.job_s
    for name, value in api.env().items():
        print(f"{name}={value}" if args.print_env else f"export {name}={value}", flush=True)
    if not args.print_env:
        print(f"{what} stand-in on {address(api)}; Ctrl-C stops it", file=sys.stderr)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        api.stop()
