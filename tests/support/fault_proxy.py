"""A small fault-injecting HTTP reverse proxy for an S3-compatible endpoint (stdlib only).

It listens on a free loopback port, forwards every request (method, raw path+query, headers,
body) to the upstream endpoint and relays the response, except where the :class:`FaultPolicy`
says otherwise::

    with start_s3_server() as s3, start_fault_proxy(s3.endpoint_url) as proxy:
        client = make_client(proxy.endpoint_url)
        proxy.policy = FaultPolicy(put_503_every=2, key_filter="/assets/")
        ...
        assert proxy.count(fault=FAULT_503) == 5

Behaviour worth knowing:

* Client side: HTTP/1.1 with keep-alive.  ``Expect: 100-continue`` is answered with
  ``100 Continue`` before the body is read (http.server does it), and chunked request bodies
  (``Transfer-Encoding: chunked``) are de-chunked.
* Upstream side: one fresh connection per request (so a request is never sent twice),
  with the hop-by-hop headers (``Connection``, ``Expect``, ``Transfer-Encoding``...) dropped
  and ``Content-Length`` set to the body's length.  The client's ``Host`` header is passed
  through unchanged, so SigV4 signatures stay valid for the host the client signed.
  ``Content-Encoding: aws-chunked`` bodies are passed through untouched.
* A "matching PUT" is a ``PUT`` whose path (without the query string) contains
  ``key_filter``; note that ``UploadPart``, ``CopyObject`` and (with an empty filter)
  ``CreateBucket`` are PUTs too.  The matching PUTs are numbered 1, 2, 3... from the moment
  the policy was set; PUT number ``n`` gets a 403 AccessDenied when ``n % put_403_every == 0``,
  else a 503 SlowDown when ``n % put_503_every == 0``, else it is forwarded and then dropped
  when ``n % drop_after_put_every == 0`` (first match wins; 0 disables a fault).
  With ``fail_for_good_after = k``, every matching PUT after the k-th gets ``fail_status``
  (403 AccessDenied or 500 InternalError): a store that breaks for good mid-run.
  Short of that, the first ``put_409_first`` matching PUTs get 409 ConditionalRequestConflict
  (a conditional write that met a concurrent one); then, every Nth, 403, 500
  (``put_500_every``), 503 and drop are tried in that order.
* ``key_filter`` is a substring of the path, so it can pick assets (``"/assets/"``), one run's
  tables (``"/out/runs/r1/"``) or one table (``"/lineage.parquet"``).
* ``ignore_if_none_match`` forwards matching PUTs without their ``If-None-Match`` header: the
  server then overwrites, like a store without conditional writes (the factory's preflight
  settles on its ``checked`` mode). ``put_delay_seconds`` holds matching PUTs that long before
  forwarding them, to widen a race between two writers.
* Assigning ``proxy.policy`` resets that numbering.
"""

from __future__ import annotations

import http.client
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterable
from urllib.parse import urlsplit

HOST = "127.0.0.1"

FAULT_403 = "403"
FAULT_409 = "409"
FAULT_500 = "500"
FAULT_503 = "503"
FAULT_DROP = "drop"
FAULT_UPSTREAM = "upstream_error"

SLOW_DOWN_BODY = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    "<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message>"
    "<Resource>{resource}</Resource><RequestId>{request_id}</RequestId></Error>"
)
INTERNAL_ERROR_BODY = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    "<Error><Code>InternalError</Code><Message>We encountered an internal error.</Message>"
    "<Resource>{resource}</Resource><RequestId>{request_id}</RequestId></Error>"
)
CONDITIONAL_CONFLICT_BODY = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    "<Error><Code>ConditionalRequestConflict</Code><Message>A conflicting conditional "
    "operation is currently in progress against this resource. Please try again.</Message>"
    "<Resource>{resource}</Resource><RequestId>{request_id}</RequestId></Error>"
)
ACCESS_DENIED_BODY = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    "<Error><Code>AccessDenied</Code><Message>Access Denied</Message>"
    "<Resource>{resource}</Resource><RequestId>{request_id}</RequestId></Error>"
)

# Hop-by-hop headers (RFC 9110 7.6.1) plus Expect, which this proxy has already answered.
_HOP_BY_HOP = {
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
    "te", "trailer", "transfer-encoding", "upgrade", "expect",
}
_COPY_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class FaultPolicy:
    """Which PUTs to fail.  0 disables a fault; counters are deterministic (every Nth)."""

    put_403_every: int = 0
    """Answer every Nth matching PUT with 403 AccessDenied, without forwarding it."""
    put_503_every: int = 0
    """Answer every Nth matching PUT with 503 SlowDown, without forwarding it."""
    drop_after_put_every: int = 0
    """Forward every Nth matching PUT (so it lands), then close the client connection
    without any response."""
    key_filter: str = ""
    """Only PUTs whose path contains this substring count (e.g. ``"/assets/"``)."""
    fail_for_good_after: int = 0
    """After this many matching PUTs, answer every later one with ``fail_status`` (0: never)."""
    fail_status: int = 500
    """403 (AccessDenied) or 500 (InternalError), for ``fail_for_good_after``."""
    drop_hold_seconds: float = 0.0
    """Before closing a dropped connection, hold it open this long (to look like a read
    timeout to the client instead of a reset; keep it above the client's read_timeout)."""
    put_409_first: int = 0
    """Answer the first N matching PUTs with 409 ConditionalRequestConflict, unforwarded."""
    put_500_every: int = 0
    """Answer every Nth matching PUT with 500 InternalError, without forwarding it."""
    ignore_if_none_match: bool = False
    """Forward matching PUTs without ``If-None-Match``: a server that overwrites."""
    put_delay_seconds: float = 0.0
    """Hold each forwarded matching PUT this long before forwarding it."""

    def matches(self, method: str, path: str) -> bool:
        return method == "PUT" and self.key_filter in urlsplit(path).path


@dataclass(frozen=True)
class Logged:
    """One request as the proxy saw it.

    ``status`` is what the client got; for a dropped request (which got nothing) it is the
    upstream's status, i.e. what happened to the write.  ``fault`` is ``None``, ``"403"``,
    ``"409"``, ``"500"``, ``"503"``, ``"drop"`` or ``"upstream_error"`` (upstream unreachable; the client got 502).
    """

    method: str
    path: str
    status: int | None
    fault: str | None
    request_headers: dict[str, str] = field(default_factory=dict, compare=False)
    request_bytes: int = field(default=0, compare=False)
    chunked: bool = field(default=False, compare=False)
    duration_s: float = field(default=0.0, compare=False)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = False  # a fixed port is never requested; port 0 is always fresh
    request_queue_size = 64

    def __init__(self, address, handler, proxy: "FaultProxy"):
        self.proxy = proxy
        super().__init__(address, handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive; http.server answers Expect: 100-continue
    timeout = 120  # idle keep-alive connections end eventually
    server: _Server

    # -- plumbing -------------------------------------------------------------------------
    def setup(self) -> None:
        super().setup()
        self.server.proxy._track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.proxy._track(self.connection, add=False)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - http.server's name
        pass  # the request log is FaultProxy.requests

    def _read_body(self) -> tuple[bytes, bool]:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return _read_chunked(self.rfile), True
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if len(body) != length:
            raise ConnectionError("client closed inside the request body")
        return body, False

    # -- the proxy --------------------------------------------------------------------------
    def _handle(self) -> None:
        proxy = self.server.proxy
        started = time.monotonic()
        try:
            body, chunked = self._read_body()
        except (OSError, ValueError):  # client went away or sent a malformed body
            self.close_connection = True
            return
        fault, hold_seconds = proxy._decide(self.command, self.path)
        policy = proxy.policy
        matching = policy.matches(self.command, self.path)

        def log(status: int | None, fault_name: str | None) -> None:
            proxy._log(Logged(
                method=self.command, path=self.path, status=status, fault=fault_name,
                request_headers=dict(self.headers.items()), request_bytes=len(body),
                chunked=chunked, duration_s=time.monotonic() - started))

        # Each outcome is logged *before* the client can see it, so a client that has its
        # answer (or its dropped connection) always finds the request in the log.
        if fault == FAULT_403:
            log(403, FAULT_403)
            self._send_s3_error(403, "Forbidden", ACCESS_DENIED_BODY)
            return
        if fault == FAULT_409:
            log(409, FAULT_409)
            self._send_s3_error(409, "Conflict", CONDITIONAL_CONFLICT_BODY)
            return
        if fault == FAULT_500:
            log(500, FAULT_500)
            self._send_s3_error(500, "Internal Server Error", INTERNAL_ERROR_BODY)
            return
        if fault == FAULT_503:
            log(503, FAULT_503)
            self._send_s3_error(503, "Slow Down", SLOW_DOWN_BODY)
            return

        if matching and policy.put_delay_seconds > 0:
            proxy._stopping.wait(policy.put_delay_seconds)
        dropped = {"if-none-match"} if matching and policy.ignore_if_none_match else set()
        try:
            upstream = proxy._open_upstream()
            upstream.putrequest(self.command, self.path, skip_host=True,
                                skip_accept_encoding=True)
            for name, value in self.headers.items():
                if (name.lower() not in _HOP_BY_HOP and name.lower() != "content-length"
                        and name.lower() not in dropped):
                    upstream.putheader(name, value)
            if body or self.command in ("PUT", "POST", "PATCH"):
                upstream.putheader("Content-Length", str(len(body)))
            upstream.endheaders(body or None)
            response = upstream.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            log(502, FAULT_UPSTREAM)
            self._send_simple(502, "Bad Gateway", f"upstream error: {exc!r}\n".encode())
            return

        try:
            if fault == FAULT_DROP:
                response.read()  # let the write complete upstream
                log(response.status, FAULT_DROP)
                self._drop(hold_seconds)
                return
            log(response.status, None)
            try:
                self._relay(response)
            except OSError:  # the client went away mid-response
                self.close_connection = True
        finally:
            upstream.close()

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = do_OPTIONS = do_PATCH = _handle

    def _relay(self, response: http.client.HTTPResponse) -> None:
        no_body = self.command == "HEAD" or response.status in (204, 304) or response.status < 200
        upstream_length = response.getheader("Content-Length")
        # Buffer unless the length is known up front (then stream, in chunks).
        stream = not no_body and upstream_length is not None and response.chunked is False
        payload = b"" if (no_body or stream) else response.read()

        self.send_response_only(response.status, response.reason)
        for name, value in response.msg.items():
            lowered = name.lower()
            if lowered in _HOP_BY_HOP:
                continue
            if lowered == "content-length" and not (no_body or stream):
                continue
            self.send_header(name, value)
        if not (no_body or stream):
            self.send_header("Content-Length", str(len(payload)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if stream:
            while chunk := response.read(_COPY_CHUNK):
                self.wfile.write(chunk)
        elif payload:
            self.wfile.write(payload)
        self.wfile.flush()

    def _send_s3_error(self, status: int, reason: str, template: str) -> None:
        request_id = f"FAULTPROXY{int(time.monotonic() * 1e6):016X}"
        payload = template.format(resource=_xml_escape(urlsplit(self.path).path),
                                  request_id=request_id).encode()
        self._send_simple(status, reason, payload, content_type="application/xml",
                          extra=[("x-amz-request-id", request_id)])

    def _send_simple(self, status: int, reason: str, payload: bytes,
                     content_type: str = "text/plain",
                     extra: Iterable[tuple[str, str]] = ()) -> None:
        self.send_response_only(status, reason)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        for name, value in extra:
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)
        self.wfile.flush()

    def _drop(self, hold_seconds: float) -> None:
        """Close the client connection without a response."""
        self.close_connection = True
        if hold_seconds > 0:
            self.server.proxy._stopping.wait(hold_seconds)
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _read_chunked(rfile) -> bytes:
    """De-chunk an HTTP/1.1 chunked body (extensions and trailers are dropped)."""
    parts = []
    while True:
        line = rfile.readline(65537)
        if not line:
            raise ConnectionError("client closed inside a chunked body")
        size = int(line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            break
        chunk = rfile.read(size)
        if len(chunk) != size:
            raise ConnectionError("client closed inside a chunked body")
        parts.append(chunk)
        rfile.readline()  # the CRLF after the chunk data
    while True:  # trailer section, ends with an empty line
        line = rfile.readline(65537)
        if line in (b"\r\n", b"\n", b""):
            break
    return b"".join(parts)


def _xml_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class FaultProxy:
    """A running (after :meth:`start`) fault proxy in front of ``upstream_url``."""

    def __init__(self, upstream_url: str, policy: FaultPolicy | None = None,
                 host: str = HOST, port: int = 0, upstream_timeout: float = 30.0):
        parts = urlsplit(upstream_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"need an http:// upstream URL, got {upstream_url!r}")
        self.upstream_url = upstream_url
        self._upstream_host = parts.hostname
        self._upstream_port = parts.port or 80
        self._upstream_timeout = upstream_timeout
        self._host = host
        self._port = port
        self._lock = threading.Lock()
        self._policy = policy or FaultPolicy()
        self._put_count = 0
        self._log_entries: list[Logged] = []
        self._last_request = time.monotonic()
        self._connections: set[socket.socket] = set()
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.endpoint_url = ""

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> "FaultProxy":
        if self._server is not None:
            return self
        self._stopping.clear()
        self._server = _Server((self._host, self._port), _Handler, self)
        host, port = self._server.server_address[:2]
        self.endpoint_url = f"http://{host}:{port}"
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05},
                                        name=f"fault-proxy:{port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()
        server.shutdown()  # stops accepting
        with self._lock:
            connections = list(self._connections)
        for conn in connections:  # wake handler threads idling on keep-alive connections
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> "FaultProxy":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- policy -----------------------------------------------------------------------------
    @property
    def policy(self) -> FaultPolicy:
        return self._policy

    @policy.setter
    def policy(self, policy: FaultPolicy | None) -> None:
        """Replace the policy; matching PUTs are numbered afresh from here."""
        with self._lock:
            self._policy = policy or FaultPolicy()
            self._put_count = 0

    @property
    def put_count(self) -> int:
        """Matching PUTs seen since the policy was last set."""
        with self._lock:
            return self._put_count

    def _decide(self, method: str, path: str) -> tuple[str | None, float]:
        """The fault for this request (or None), and how long to hold a dropped connection."""
        with self._lock:
            policy = self._policy
            if not policy.matches(method, path):
                return None, 0.0
            self._put_count += 1
            n = self._put_count
        if policy.fail_for_good_after and n > policy.fail_for_good_after:
            return (FAULT_403 if policy.fail_status == 403 else FAULT_500), 0.0
        if n <= policy.put_409_first:
            return FAULT_409, 0.0
        if policy.put_403_every and n % policy.put_403_every == 0:
            return FAULT_403, 0.0
        if policy.put_500_every and n % policy.put_500_every == 0:
            return FAULT_500, 0.0
        if policy.put_503_every and n % policy.put_503_every == 0:
            return FAULT_503, 0.0
        if policy.drop_after_put_every and n % policy.drop_after_put_every == 0:
            return FAULT_DROP, policy.drop_hold_seconds
        return None, 0.0

    # -- log --------------------------------------------------------------------------------
    @property
    def requests(self) -> list[Logged]:
        """A snapshot of the request log, oldest first."""
        with self._lock:
            return list(self._log_entries)

    def count(self, method: str | None = None, path_contains: str | None = None,
              fault: str | None = None, status: int | None = None,
              faulted: bool | None = None) -> int:
        """How many logged requests match every filter given (``None`` = any)."""
        return sum(
            1 for entry in self.requests
            if (method is None or entry.method == method)
            and (path_contains is None or path_contains in entry.path)
            and (fault is None or entry.fault == fault)
            and (status is None or entry.status == status)
            and (faulted is None or (entry.fault is not None) == faulted)
        )

    def reset_log(self) -> None:
        with self._lock:
            self._log_entries.clear()

    def wait_quiet(self, quiet_s: float, timeout_s: float = 60.0) -> None:
        """Return once no request has arrived for ``quiet_s`` seconds: a failed run's write
        tasks may still be retrying after its driver returned (they outlive it on a shared
        Ray), and a test that changes the policy or lists the bucket waits for them."""
        deadline = time.monotonic() + timeout_s
        while True:
            with self._lock:
                seen, last = len(self._log_entries), self._last_request
            if time.monotonic() - last >= quiet_s:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"still {seen} requests and counting after {timeout_s} s")
            time.sleep(0.1)

    def _log(self, entry: Logged) -> None:
        with self._lock:
            self._log_entries.append(entry)
            self._last_request = time.monotonic()

    # -- internals --------------------------------------------------------------------------
    def _open_upstream(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self._upstream_host, self._upstream_port,
                                          timeout=self._upstream_timeout)

    def _track(self, conn: socket.socket, add: bool) -> None:
        with self._lock:
            if add:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    def __repr__(self) -> str:
        return (f"FaultProxy({self.endpoint_url or 'not started'} -> {self.upstream_url}, "
                f"{self._policy})")


def start_fault_proxy(upstream_url: str, policy: FaultPolicy | None = None) -> FaultProxy:
    """Start a :class:`FaultProxy` on a free loopback port in front of ``upstream_url``."""
    return FaultProxy(upstream_url, policy).start()
