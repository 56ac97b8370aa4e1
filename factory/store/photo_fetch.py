"""Fetching a catalog's product photos (HTTP(S), S3, local paths) under a fetch policy.

References come from untrusted manifests. For HTTP(S) the host is resolved once, *every*
address is checked (private, loopback, link-local ... unless allowed by name), and the
connection goes to the checked address itself, so a DNS answer that changes between check and
connect (rebinding) reaches nothing unchecked. Redirects are followed here, each hop checked
again; retries and backoff are urllib3's ``Retry``; bodies are streamed, bounded in size and
time. ``s3://`` goes through ``factory.store.s3`` (botocore's retries); a path must stay inside the
manifest's folder. The URL check (``check_url``), its connection pool (``open_pool``) and the
deadline-bound retry policy (``DeadlineRetry``) also serve webhook delivery
(``factory.notify.delivery``).
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import SplitResult, quote, urljoin, urlsplit

import urllib3
from urllib3.exceptions import (ConnectTimeoutError, HTTPError, MaxRetryError, NewConnectionError,
                                ReadTimeoutError, SSLError)
from urllib3.util import Retry, Timeout

from factory.core.photo_decode import PhotoError

USER_AGENT = "asset-factory/0.1 (catalog photo fetch)"
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_CHUNK = 256 * 1024
_MAX_POOLS = 64
_SAFE = "/%:@!$&'()*+,;=-._~"  # left as they are when quoting a path


@dataclass(frozen=True)
class FetchPolicy:
    """What a fetch may reach, and how long and how much it may take.

    Attributes:
        allow_hosts: when non-empty, an HTTP(S) URL's host must equal one entry, or for an
            entry ``*.example.com`` be a subdomain of ``example.com`` (any depth, not the apex).
            Empty: any public host. Does not apply to ``s3://`` (the job's own store).
        allow_private: hosts, by name or literal IP as written in the URL, that may resolve
            to loopback, private, link-local, reserved or multicast addresses.
        max_bytes: largest photo accepted.
        connect_timeout_s: per connection attempt.
        read_timeout_s: per socket read.
        total_timeout_s: the whole fetch, redirects, retries and their waits included.
        max_redirects: redirect hops followed before giving up.
        retries: urllib3 ``Retry`` total, on connect and read errors and 429/5xx answers.
        backoff_s: urllib3's backoff factor; ``Retry-After`` is honoured up to the deadline.
        concurrency: threads one fetch task uses; also the connection pool size per host.
    """

    allow_hosts: tuple[str, ...] = ()
    allow_private: tuple[str, ...] = ()
    max_bytes: int = 50 * 2**20
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 20.0
    total_timeout_s: float = 60.0
    max_redirects: int = 3
    retries: int = 3
    backoff_s: float = 0.25
    concurrency: int = 16


@dataclass(frozen=True)
class Validators:
    """What a previous fetch of the same reference returned, for a conditional fetch."""

    etag: str = ""
    last_modified: str = ""
    sha256: str = ""


@dataclass(frozen=True)
class Fetched:
    """A fetched photo; ``data`` is None when the source said it is not modified."""

    data: bytes | None
    sha256: str
    etag: str
    last_modified: str
    not_modified: bool = False


def _size(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale and n % scale == 0:
            return f"{n // scale} {unit}"
    return f"{n} bytes"


def _not_public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why an address, or an IPv4 address it carries (mapped, 6to4, Teredo), is not public;
    None when it is public."""
    carried = [ip] if ip.version == 4 else [
        a for a in (ip, ip.ipv4_mapped, ip.sixtofour, ip.teredo and ip.teredo[1]) if a]
    for each in carried:
        for kind in ("unspecified", "loopback", "link_local", "multicast", "private", "reserved"):
            if getattr(each, f"is_{kind}"):
                return kind.replace("_", "-")
        if not each.is_global:
            return "non-public"
    return None


def _split(url: str) -> SplitResult:
    try:
        return urlsplit(url)
    except ValueError as exc:  # e.g. an unclosed IPv6 bracket
        raise PhotoError(f"refused: malformed URL ({exc})") from None


def _shown(parts: SplitResult) -> str:
    """A URL as reasons quote it: without query and credentials (signed URLs carry tokens)."""
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"


def _literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _release(response) -> None:
    """Give the connection back to its pool. A small unread body (a 304, a redirect, an
    error page) is read off so the connection can be reused; a large, unknown or half-read
    one must not be read on, so that connection is closed."""
    length = response.headers.get("Content-Length", "")
    if not response.isclosed():
        if not 200 <= response.status < 300 and length.isdigit() and int(length) <= _CHUNK:
            response.drain_conn()
        else:
            response.close()
    response.release_conn()


class DeadlineRetry(Retry):
    """urllib3's ``Retry``, whose waits and attempts also stop at ``deadline`` (a
    ``time.monotonic()`` instant; a ``Retry-After: 3600`` would otherwise sleep an hour).
    A photo fetch's deadline, and a webhook delivery's (``factory.notify.delivery``)."""

    deadline = math.inf

    def new(self, **changes) -> DeadlineRetry:  # urllib3's own signature
        retry = super().new(**changes)
        retry.deadline = self.deadline
        return retry

    def is_exhausted(self) -> bool:
        return super().is_exhausted() or time.monotonic() >= self.deadline

    def get_backoff_time(self) -> float:
        return min(super().get_backoff_time(), max(0.0, self.deadline - time.monotonic()))

    def get_retry_after(self, response) -> float | None:
        wait = super().get_retry_after(response)
        return None if wait is None else min(wait, max(0.0, self.deadline - time.monotonic()))


@dataclass(frozen=True)
class Target:
    """An HTTP(S) URL checked against a ``FetchPolicy`` (``check_url``): where its
    connection goes, and what the request names."""

    shown: str  # the URL without query or credentials, for reasons
    scheme: str
    hostname: str  # IDNA-encoded, lower case
    port: int
    address: str  # the checked address the connection goes to
    host_header: str
    path: str


def check_url(url: str, policy: FetchPolicy) -> Target:
    """Scheme, host and every address the host resolves to (once) checked against ``policy``:
    the ``Target`` names the checked address, which is the one to connect to.

    Raises:
        PhotoError: the URL is refused (its ``reason`` says why) or its host does not resolve.
    """
    parts = _split(url)
    shown, scheme = _shown(parts), parts.scheme.lower()
    try:
        port = parts.port or (443 if scheme == "https" else 80)
        literal = _literal(parts.hostname or "")
        hostname = str(literal) if literal is not None else (
            (parts.hostname or "").rstrip(".").encode("idna").decode("ascii"))
    except (ValueError, UnicodeError) as exc:
        raise PhotoError(f"refused: malformed URL {shown} ({exc})") from None
    if scheme not in ("http", "https"):
        raise PhotoError(f"refused: scheme {scheme}:// is not allowed ({shown})")
    if not hostname:
        raise PhotoError(f"refused: no host in {shown}")
    if parts.username is not None or parts.password is not None:
        raise PhotoError("refused: credentials in a photo URL")
    if policy.allow_hosts and not any(
            hostname == p or (p.startswith("*.") and hostname.endswith(p[1:]))
            for p in (a.lower().rstrip(".") for a in policy.allow_hosts)):
        raise PhotoError(f"refused: host {hostname} is not in allow_hosts")
    if literal is not None:
        addresses = [literal]
    else:
        try:
            infos = socket.getaddrinfo(hostname, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:
            raise PhotoError(f"cannot resolve {hostname}: {exc}") from None
        addresses = list(dict.fromkeys(
            ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos))
        if not addresses:
            raise PhotoError(f"cannot resolve {hostname}: no addresses")
    private = {h.lower().rstrip(".") for h in policy.allow_private}
    allowed = hostname in private or (
        literal is not None and literal in {_literal(h) for h in private})
    for address in addresses:
        kind = None if allowed else _not_public(address)
        if kind:
            said = (f"{address} is" if literal is not None
                    else f"{hostname} resolves to {address},")
            raise PhotoError(f"refused: {said} a {kind} address "
                             "(allow it by name in allow_private)")
    path = quote(parts.path or "/", safe=_SAFE)
    if parts.query:
        path += "?" + quote(parts.query, safe=_SAFE + "?")
    host = f"[{hostname}]" if ":" in hostname else hostname
    return Target(shown=shown, scheme=scheme, hostname=hostname, port=port,
                  address=str(addresses[0]),
                  host_header=host if parts.port is None else f"{host}:{port}", path=path)


def open_pool(target: Target, *, maxsize: int) -> urllib3.HTTPConnectionPool:
    """A connection pool to ``target``'s checked address; over HTTPS, with SNI and the
    certificate checked for the name in the URL."""
    common = dict(host=target.address, port=target.port, maxsize=maxsize, block=False)
    if target.scheme == "https":
        # Connect to the checked address, but do TLS (SNI and certificate
        # check) for the name in the URL.
        return urllib3.HTTPSConnectionPool(
            **common, server_hostname=target.hostname,
            assert_hostname=target.hostname, cert_reqs="CERT_REQUIRED")
    return urllib3.HTTPConnectionPool(**common)


class PhotoFetcher:
    """Fetches photo references under one ``FetchPolicy``; thread-safe, pools shared.

    Args:
        policy: what may be fetched, and the bounds.
        base_dir: the manifest's folder; local paths must resolve inside it.
        s3_options: a ``factory.store.s3.S3Options`` for ``s3://`` references (default: settings).
    """

    def __init__(self, policy: FetchPolicy, *, base_dir: str | None = None,
                 s3_options=None) -> None:
        self.policy = policy
        self._base = Path(base_dir).resolve() if base_dir is not None else None
        self._s3_options = s3_options
        self._pools: dict[tuple[str, str, int, str], urllib3.HTTPConnectionPool] = {}
        self._lock = threading.Lock()

    def fetch(self, ref: str, *, validators: Validators | None = None) -> Fetched:
        """Fetch one reference; with ``validators``, conditionally (data None if unchanged).

        Raises:
            PhotoError: the photo cannot be had; ``reason`` says why.
        """
        if not ref:
            raise PhotoError("empty photo reference")
        validators = validators or Validators()
        scheme = _split(ref).scheme.lower()
        if scheme in ("http", "https"):
            return self._fetch_http(ref, validators)
        if scheme == "s3":
            return self._fetch_s3(ref, validators)
        if scheme:
            raise PhotoError(f"refused: scheme {scheme}:// is not allowed "
                             "(http, https, s3 or a path inside the manifest's folder)")
        return self._fetch_local(ref)

    def close(self) -> None:
        """Close all pooled connections; the fetcher can still be used (pools reopen)."""
        with self._lock:
            pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            pool.close()

    # -- HTTP(S) -------------------------------------------------------------------------

    def _pool(self, target: Target) -> urllib3.HTTPConnectionPool:
        key = (target.scheme, target.address, target.port, target.hostname)
        with self._lock:
            pool = self._pools.get(key)
            if pool is None:
                pool = open_pool(target, maxsize=self.policy.concurrency)
                if len(self._pools) >= _MAX_POOLS:  # many hosts, or round-robin DNS
                    self._pools.pop(next(iter(self._pools))).close()  # in-use ones still finish
                self._pools[key] = pool
            return pool

    def _fetch_http(self, ref: str, validators: Validators) -> Fetched:
        policy = self.policy
        deadline = time.monotonic() + policy.total_timeout_s
        headers = {"User-Agent": USER_AGENT, "Accept": "image/*,*/*;q=0.5"}
        if validators.etag:
            headers["If-None-Match"] = validators.etag
        if validators.last_modified:
            headers["If-Modified-Since"] = validators.last_modified
        url = ref
        for _hop in range(policy.max_redirects + 1):
            target = check_url(url, self.policy)
            response = self._request(target, headers, deadline)
            try:
                status = response.status
                if status in _REDIRECTS:
                    location = response.headers.get("Location")
                    if not location:
                        raise PhotoError(f"HTTP {status} from {target.shown} without a Location")
                    url = urljoin(url, location.strip())
                    continue
                etag = response.headers.get("ETag", "")
                last_modified = response.headers.get("Last-Modified", "")
                if status == 304 and (validators.etag or validators.last_modified):
                    return Fetched(None, validators.sha256, etag or validators.etag,
                                   last_modified or validators.last_modified, True)
                if not 200 <= status < 300:
                    raise PhotoError(f"HTTP {status} from {target.shown}")
                return self._fetched(self._read_body(response, target.shown, deadline),
                                     etag, last_modified)
            finally:
                _release(response)
        raise PhotoError(f"too many redirects (more than {policy.max_redirects})")

    def _request(self, target: Target, headers: dict[str, str], deadline: float):
        policy = self.policy
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise PhotoError(f"timed out after {policy.total_timeout_s} s")
        retry = DeadlineRetry(
            total=policy.retries, status_forcelist=(429, 500, 502, 503, 504),
            allowed_methods=frozenset({"GET"}), backoff_factor=policy.backoff_s,
            backoff_max=policy.total_timeout_s, respect_retry_after_header=True,
            raise_on_status=False, redirect=False)
        retry.deadline = deadline
        read_s = min(policy.read_timeout_s, remaining)
        timeout = Timeout(connect=min(policy.connect_timeout_s, remaining), read=read_s)
        try:
            return self._pool(target).urlopen(
                "GET", target.path, headers={**headers, "Host": target.host_header}, retries=retry,
                redirect=False, assert_same_host=False, timeout=timeout,
                preload_content=False, decode_content=True)
        except MaxRetryError as exc:
            raise self._explain(exc.reason or exc, target, read_s) from None
        except HTTPError as exc:
            raise self._explain(exc, target, read_s) from None
        except ValueError as exc:  # http.client refusing a header or path it cannot send
            raise PhotoError(f"refused: cannot request {target.shown}: {exc}") from None

    def _explain(self, exc: BaseException, target: Target, read_s: float) -> PhotoError:
        if isinstance(exc, NewConnectionError):  # before ConnectTimeoutError: a subclass
            return PhotoError(f"cannot connect to {target.host_header}: {exc}")
        if isinstance(exc, ConnectTimeoutError):
            return PhotoError(f"timed out after {self.policy.connect_timeout_s} s "
                              f"connecting to {target.host_header}")
        if isinstance(exc, ReadTimeoutError):
            limit = (self.policy.read_timeout_s if read_s >= self.policy.read_timeout_s
                     else self.policy.total_timeout_s)
            return PhotoError(f"timed out after {limit} s waiting for {target.shown}")
        if isinstance(exc, SSLError):
            return PhotoError(f"TLS failed with {target.hostname}: {exc}")
        return PhotoError(f"fetching {target.shown} failed: {type(exc).__name__}: {exc}")

    def _read_body(self, response, shown: str, deadline: float) -> bytes:
        policy = self.policy
        length = response.headers.get("Content-Length", "")
        if length.isdigit() and int(length) > policy.max_bytes:
            raise PhotoError(f"larger than {_size(policy.max_bytes)}")
        chunks, total = [], 0
        try:
            # read1: whatever has arrived (up to a chunk), so a trickling body is checked
            # against the deadline as it comes, not after a whole chunk has filled up.
            while chunk := response.read1(_CHUNK):
                total += len(chunk)
                if total > policy.max_bytes:
                    raise PhotoError(f"larger than {_size(policy.max_bytes)}")
                chunks.append(chunk)
                if time.monotonic() > deadline:
                    raise PhotoError(f"timed out after {policy.total_timeout_s} s")
        except ReadTimeoutError:
            raise PhotoError(f"timed out after {policy.read_timeout_s} s "
                             f"reading {shown}") from None
        except HTTPError as exc:
            raise PhotoError(f"reading {shown} failed: {type(exc).__name__}: {exc}") from None
        return b"".join(chunks)

    def _fetched(self, data: bytes, etag: str, last_modified: str) -> Fetched:
        if len(data) > self.policy.max_bytes:
            raise PhotoError(f"larger than {_size(self.policy.max_bytes)}")
        if not data:
            raise PhotoError("0 bytes")
        return Fetched(data, hashlib.sha256(data).hexdigest(), etag, last_modified)

    # -- S3 and local --------------------------------------------------------------------

    def _fetch_s3(self, ref: str, validators: Validators) -> Fetched:
        from botocore.exceptions import BotoCoreError, ClientError

        from factory.store import s3

        try:
            bucket, key = s3.split_uri(ref)
        except s3.StorageError as exc:
            raise PhotoError(str(exc)) from None
        request = {"Bucket": bucket, "Key": key}
        if validators.etag:  # S3 always gives an ETag, so Last-Modified is not needed here
            request["IfNoneMatch"] = validators.etag
        client = s3.client(self._s3_options or s3.S3Options.from_settings())
        try:
            answer = client.get_object(**request)
        except ClientError as exc:
            code, status = s3.error_code(exc)
            if status == 304 or code in ("304", "NotModified"):
                return Fetched(None, validators.sha256, validators.etag,
                               validators.last_modified, True)
            if status == 404 or code in ("NoSuchKey", "NoSuchBucket"):
                raise PhotoError(f"no such object {ref}") from None
            raise PhotoError(f"S3 {code or status} for {ref}") from None
        except BotoCoreError as exc:
            raise PhotoError(f"cannot read {ref}: {type(exc).__name__}") from None
        body = answer["Body"]
        try:
            if int(answer.get("ContentLength") or 0) > self.policy.max_bytes:
                raise PhotoError(f"larger than {_size(self.policy.max_bytes)}")
            data = body.read(self.policy.max_bytes + 1)
        except BotoCoreError as exc:
            raise PhotoError(f"reading {ref} failed: {type(exc).__name__}") from None
        finally:
            body.close()
        modified = answer.get("LastModified")
        return self._fetched(data, answer.get("ETag", ""),
                             modified.strftime("%a, %d %b %Y %H:%M:%S GMT") if modified else "")

    def _fetch_local(self, ref: str) -> Fetched:
        if self._base is None:
            raise PhotoError(f"path {ref} given, but the manifest has no local folder")
        try:  # an absolute ref replaces the base; resolve() follows symlinks
            resolved = (self._base / ref).resolve()
        except (OSError, ValueError) as exc:
            raise PhotoError(f"cannot resolve path {ref}: {exc}") from None
        if not resolved.is_relative_to(self._base):
            raise PhotoError(f"path {ref} is outside the manifest's folder")
        try:
            with open(resolved, "rb") as handle:
                data = handle.read(self.policy.max_bytes + 1)
        except FileNotFoundError:
            raise PhotoError(f"no such file {ref}") from None
        except OSError as exc:
            raise PhotoError(f"cannot read {ref}: {exc.strerror or exc}") from None
        return self._fetched(data, "", "")
