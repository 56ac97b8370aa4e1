"""A stand-in for a hosted model provider's queue API (fal's shapes), on loopback, over HTTPS.

fal's client builds its submit URL as ``https://{FAL_QUEUE_RUN_HOST}/<endpoint>``, read once
when ``fal_client`` is imported, so the stand-in serves TLS with a certificate of its own
certificate authority for 127.0.0.1, and a client trusts it through ``SSL_CERT_FILE`` (httpx
reads it). ``env()`` is what points a process at it::

    api = HostedApiServer()
    os.environ.update(api.env())          # FAL_KEY, FAL_QUEUE_RUN_HOST, SSL_CERT_FILE
    ...
    assert api.submissions() == 3

What it serves, as fal documents its queue:

- ``POST /<owner>/<alias>[/<path>]``: submit; answers ``request_id``, ``status_url``,
  ``response_url``, ``cancel_url``;
- ``GET /<owner>/<alias>/requests/<id>/status``: ``IN_QUEUE``, ``IN_PROGRESS`` or
  ``COMPLETED`` (with ``metrics.inference_time``);
- ``GET /<owner>/<alias>/requests/<id>``: the result, ``images[0].url`` on this server
  (``image.url`` for a background-removal endpoint, whose image is an RGBA cut-out);
- ``PUT /<owner>/<alias>/requests/<id>/cancel``;
- ``GET /files/<id>.png``: the image, a gradient of the request's size and seed.

And what a provider does on a bad day: ``rate_limit(n)`` answers the next ``n`` submits 429
with ``Retry-After``; ``outage = True`` answers every submit 500; a prompt containing
``refuse`` gets 422, one containing ``slow`` never finishes; a key other than ``key`` gets 401.
``job_s`` is how long each job runs. It counts every request (``count``) and every accepted
submission by its arguments (``submissions``).
"""

from __future__ import annotations

import datetime
import io
import json
import ssl
import tempfile
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

from tests.support.loopback_http import HOST, Handler, LoopbackServer, serve_in_foreground

KEY = "stand-in-key"


@dataclass
class _Job:
    arguments: dict
    endpoint: str
    started: float
    slow: bool


class _Handler(Handler):
    # the provider's own request id on every answer
    extra_headers = staticmethod(lambda: {"x-fal-request-id": uuid.uuid4().hex})

    def _dispatch(self, method: str) -> None:
        api = self.server.owner
        path = self.path.split("?", 1)[0]
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        api.counted(method, path)
        if path.startswith("/files/"):
            self._answer(*api.file(path.removeprefix("/files/")))
            return
        if self.headers.get("Authorization") != f"Key {api.key}":
            self._json(401, {"detail": "Invalid key"})
            return
        parts = path.strip("/").split("/")
        if method == "POST":
            self._json(*api.submit("/".join(parts), json.loads(body or b"{}")))
        elif len(parts) >= 4 and parts[2] == "requests":
            self._json(*api.request(method, parts[3], parts[4] if len(parts) > 4 else ""))
        else:
            self._json(404, {"detail": "not found"})

    def _json(self, status: int, payload: dict, headers: dict | None = None) -> None:
        data = json.dumps(payload).encode()
        self._answer(status, data, "application/json", headers or {})


class HostedApiServer:
    """The stand-in, started on a free loopback port; ``stop`` ends it."""

    def __init__(self, *, key: str = KEY) -> None:
        import time

        self._clock = time.monotonic
        self.key = key
        self._lock = threading.Lock()
        self._jobs: dict[str, _Job] = {}
        self._requests: dict[tuple[str, str], int] = {}
        self._submitted: list[dict] = []
        self._to_rate_limit = 0
        self.rate_limited = 0
        self.outage = False
        self.job_s = 0.0
        self.inference_s = 0.5
        self._dir = Path(tempfile.mkdtemp(prefix="hosted-api-"))
        self.ca_file, context = _tls(self._dir)
        self._server = LoopbackServer((HOST, 0), _Handler)
        self._server.owner = self
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    @property
    def host(self) -> str:
        return f"{HOST}:{self.port}"

    def env(self, *, key: str | None = None) -> dict[str, str]:
        """The variables that point fal's client at this server (``key``: another key)."""
        return {"FAL_KEY": self.key if key is None else key, "FAL_QUEUE_RUN_HOST": self.host,
                "SSL_CERT_FILE": str(self.ca_file)}

    def reset(self) -> None:
        """Forget jobs and counts; back to good behaviour."""
        with self._lock:
            self._jobs.clear()
            self._requests.clear()
            self._submitted.clear()
            self._to_rate_limit = self.rate_limited = 0
        self.outage, self.job_s, self.key = False, 0.0, KEY

    def rate_limit(self, n: int) -> None:
        """Answer the next ``n`` submits 429 with ``Retry-After: 1``."""
        with self._lock:
            self._to_rate_limit = n

    # what the handler calls
    def counted(self, method: str, path: str) -> None:
        kind = ("file" if path.startswith("/files/") else "submit" if method == "POST"
                else "cancel" if method == "PUT" else "status" if path.endswith("/status")
                else "result")
        with self._lock:
            self._requests[(kind, path)] = self._requests.get((kind, path), 0) + 1

    def submit(self, endpoint: str, arguments: dict) -> tuple[int, dict, dict]:
        with self._lock:
            if self._to_rate_limit > 0:
                self._to_rate_limit -= 1
                self.rate_limited += 1
                return 429, {"detail": "Rate limit exceeded"}, {"Retry-After": "1"}
            if self.outage:
                return 500, {"detail": "Internal server error"}, {}
            prompt = str(arguments.get("prompt", ""))
            if "refuse" in prompt:
                return 422, {"detail": [{"loc": ["body", "prompt"],
                                         "msg": "prompt refused by the content policy"}]}, {}
            request_id = str(uuid.uuid4())
            self._jobs[request_id] = _Job(arguments, endpoint, self._clock(), "slow" in prompt)
            self._submitted.append(arguments)
        owner, alias = endpoint.split("/")[:2]
        base = f"https://{self.host}/{owner}/{alias}/requests/{request_id}"
        return 200, {"request_id": request_id, "response_url": base,
                     "status_url": f"{base}/status", "cancel_url": f"{base}/cancel",
                     "queue_position": 0}, {}

    def request(self, method: str, request_id: str, action: str) -> tuple[int, dict, dict]:
        with self._lock:
            job = self._jobs.get(request_id)
        if job is None:
            return 404, {"detail": f"request {request_id} not found"}, {}
        if method == "PUT" and action == "cancel":
            return 202, {"status": "CANCELLATION_REQUESTED"}, {}
        done = not job.slow and self._clock() - job.started >= self.job_s
        if action == "status":
            if not done:
                return 200, {"status": "IN_PROGRESS", "logs": None}, {}
            return 200, {"status": "COMPLETED", "logs": None,
                         "metrics": {"inference_time": self.inference_s}}, {}
        if not done:
            return 400, {"detail": "Request is still in progress"}, {}
        size = job.arguments.get("image_size") or _input_size(job.arguments.get("image_url"))
        image = {"url": f"https://{self.host}/files/{request_id}.png", "width": size["width"],
                 "height": size["height"], "content_type": "image/png"}
        if _cuts_out(job.endpoint):  # background removal answers one ``image``
            return 200, {"image": image}, {}
        return 200, {"images": [image], "seed": job.arguments.get("seed"),
                     "prompt": job.arguments.get("prompt"), "has_nsfw_concepts": [False]}, {}

    def file(self, name: str) -> tuple[int, bytes, str]:
        with self._lock:
            job = self._jobs.get(name.removesuffix(".png"))
        if job is None:
            return 404, b"no such file", "text/plain"
        return 200, _png(job.arguments, cutout=_cuts_out(job.endpoint)), "image/png"

    # what tests read
    def count(self, kind: str | None = None) -> int:
        """Requests received of one kind (``submit``, ``status``, ``result``, ``cancel``,
        ``file``; refused and rate-limited ones too), or all."""
        with self._lock:
            return sum(n for (k, _), n in self._requests.items() if kind in (None, k))

    def submissions(self, prompt: str | None = None) -> int:
        """Submissions accepted (each one a request paid for), or those of one prompt."""
        with self._lock:
            return sum(1 for a in self._submitted if prompt in (None, a.get("prompt")))

    def arguments_of(self, request_id: str) -> dict | None:
        """What request ``request_id`` was submitted with (None: never accepted here)."""
        with self._lock:
            job = self._jobs.get(request_id)
            return dict(job.arguments) if job is not None else None

    def submitted(self) -> list[dict]:
        with self._lock:
            return list(self._submitted)

    def stop(self) -> None:
        import shutil

        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
        shutil.rmtree(self._dir, ignore_errors=True)  # its certificates and key

    def __enter__(self) -> HostedApiServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


_SHARED: list[HostedApiServer] = []


def pointed_at(monkeypatch) -> HostedApiServer:
    """This process's stand-in, reset, with its variables set through ``monkeypatch`` (a
    test's fixture: they are unset again after the test)."""
    server = shared()
    server.reset()
    for name, value in server.env().items():
        monkeypatch.setenv(name, value)
    return server


def shared() -> HostedApiServer:
    """This process's stand-in, started on first use and kept: ``fal_client`` reads its host
    once per process, at import, so every test of a process talks to the same server (each
    calls ``reset`` first)."""
    if not _SHARED:
        _SHARED.append(HostedApiServer())
    return _SHARED[0]


def _cuts_out(endpoint: str) -> bool:
    """Whether ``endpoint`` is a background-removal model (``fal-ai/bria/background/remove``)."""
    return endpoint.endswith("background/remove")


def _png(arguments: dict, *, cutout: bool = False) -> bytes:
    """A gradient of the request's size (its input's, for an edit) whose blue is its seed;
    a cut-out is RGBA, opaque exactly over the middle half of each side (a quarter of it)."""
    import numpy as np
    from PIL import Image

    size = arguments.get("image_size") or _input_size(arguments.get("image_url"))
    w, h, seed = int(size["width"]), int(size["height"]), int(arguments.get("seed") or 0)
    yy, xx = np.mgrid[:h, :w]
    rgb = np.stack([(xx * 255 // max(w - 1, 1)), (yy * 255 // max(h - 1, 1)),
                    np.full((h, w), seed % 256)], axis=2).astype(np.uint8)
    if cutout:
        alpha = np.zeros((h, w, 1), np.uint8)
        alpha[h // 4: h - h // 4, w // 4: w - w // 4] = 255
        rgb = np.concatenate([rgb, alpha], axis=2)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return buffer.getvalue()


def _input_size(url: str | None) -> dict:
    """An image edit answers at its input's size (a data URI here); else 64 x 64."""
    if not url or not url.startswith("data:"):
        return {"width": 64, "height": 64}
    import base64

    from PIL import Image

    with Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))) as image:
        return {"width": image.width, "height": image.height}


def _tls(directory: Path) -> tuple[Path, ssl.SSLContext]:
    """A certificate authority (written to ``ca.pem``, what ``SSL_CERT_FILE`` names) and a
    server certificate it signed for 127.0.0.1; the server's TLS context."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    valid = (now - datetime.timedelta(hours=1), now + datetime.timedelta(days=2))
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hosted-api stand-in CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(valid[0]).not_valid_after(valid[1])
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                       crl_sign=True, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False,
                                       decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                         critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOST)]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(valid[0]).not_valid_after(valid[1])
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address(HOST))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    ca_file, cert_file, key_file = (directory / "ca.pem", directory / "server.pem",
                                    directory / "server.key")
    ca_file.write_bytes(ca.public_bytes(pem))
    cert_file.write_bytes(cert.public_bytes(pem))
    key_file.write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    return ca_file, context


def main() -> None:
    """``python -m tests.support.hosted_api``: a stand-in in the foreground, for trying a job
    with a hosted stage by hand; it prints the variables to export (``--print-env``: only
    those, as ``NAME=value`` lines), then serves until Ctrl-C."""
    serve_in_foreground(HostedApiServer, "hosted-api",
                        lambda api: f"https://{api.host}", main.__doc__)


if __name__ == "__main__":
    main()
