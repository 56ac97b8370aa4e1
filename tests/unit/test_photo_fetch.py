"""Photo fetching under a policy: HTTP(S) against a loopback server, S3 against a loopback
moto server, and local paths.

No test sends a packet beyond loopback, and the ones about refused addresses prove that no
connection was even attempted: every test runs under ``net``, which answers DNS from a table
(names it does not know fail, so nothing reaches a real resolver) and records every
``socket.connect``, failing loudly on any address that is not loopback.
"""

from __future__ import annotations

import datetime
import hashlib
import io
import ipaddress
import os
import pickle
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pytest
from PIL import Image

from factory.core.photo_decode import PhotoError
from factory.store.photo_fetch import FetchPolicy, Fetched, PhotoFetcher, Validators
from tests.support.photo_server import PhotoServer, Route, redirect

LOCAL = ("127.0.0.1",)


def png_bytes(size: int = 8, color: tuple[int, int, int] = (200, 30, 60)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buffer, "PNG")
    return buffer.getvalue()


PNG = png_bytes()


@dataclass
class Net:
    """The fake resolver's table and what was looked up and connected to."""

    answers: dict[str, list[list[str]]] = field(default_factory=dict)
    lookups: list[str] = field(default_factory=list)
    connects: list[tuple] = field(default_factory=list)

    def resolve(self, name: str, *answers: list[str]) -> None:
        """``name`` answers ``answers[0]``, then the next ones; the last one repeats."""
        self.answers[name] = list(answers)


@pytest.fixture(autouse=True)
def net(monkeypatch) -> Net:
    state = Net()
    real_getaddrinfo, real_connect = socket.getaddrinfo, socket.socket.connect

    def getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):
        host = host.decode() if isinstance(host, bytes) else host
        try:
            ipaddress.ip_address(str(host).split("%")[0])
        except ValueError:
            state.lookups.append(host)
            queue = state.answers.get(host.lower())
            if not queue:
                raise socket.gaierror(socket.EAI_NONAME, "Name or service not known") from None
            answer = queue.pop(0) if len(queue) > 1 else queue[0]
            return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "",
                     (a, int(port or 0))) for a in answer]
        return real_getaddrinfo(host, port, family, type, proto, flags | socket.AI_NUMERICHOST)

    def connect(sock, address):
        state.connects.append(address)
        if not ipaddress.ip_address(address[0]).is_loopback:
            raise AssertionError(f"a test tried to connect to {address}")
        return real_connect(sock, address)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket.socket, "connect", connect)
    return state


@pytest.fixture
def server():
    with PhotoServer() as running:
        yield running


def fetcher(**policy) -> PhotoFetcher:
    policy.setdefault("allow_private", LOCAL)
    policy.setdefault("backoff_s", 0.01)
    return PhotoFetcher(FetchPolicy(**policy))


def reason(call) -> str:
    with pytest.raises(PhotoError) as caught:
        call()
    return caught.value.reason


# -- HTTP: answers -------------------------------------------------------------------------

def test_good_photo_is_fetched_with_hash_validators_and_headers(server):
    url = server.route("/p.png", Route(body=PNG, etag='"v1"',
                                       last_modified="Wed, 21 Oct 2015 07:28:00 GMT"))
    got = fetcher().fetch(url)
    assert got == Fetched(PNG, hashlib.sha256(PNG).hexdigest(), '"v1"',
                          "Wed, 21 Oct 2015 07:28:00 GMT", False)
    (request,) = server.seen("/p.png")
    assert request.headers["user-agent"].startswith("asset-factory/")
    assert request.headers["host"] == f"127.0.0.1:{server.port}"
    assert "if-none-match" not in request.headers


def test_http_error_names_status_and_url_without_query(server):
    url = server.url("/missing.png?X-Amz-Signature=secret-token")
    message = reason(lambda: fetcher().fetch(url))
    assert message == f"HTTP 404 from http://127.0.0.1:{server.port}/missing.png"


def test_empty_body_is_refused(server):
    url = server.route("/empty.png", Route(body=b""))
    assert reason(lambda: fetcher().fetch(url)) == "0 bytes"


def test_503_twice_then_200_is_retried_by_urllib3(server):
    url = server.route("/flaky.png", Route(body=PNG, fail_first=2))
    assert fetcher(retries=3).fetch(url).data == PNG
    assert [r.status for r in server.seen("/flaky.png")] == [503, 503, 200]


def test_503_for_good_fails_after_the_retries(server):
    url = server.route("/down.png", Route(status=503))
    assert reason(lambda: fetcher(retries=2).fetch(url)).startswith("HTTP 503 from ")
    assert server.count("/down.png") == 3


def test_retry_after_is_cut_short_by_the_total_timeout(server):
    url = server.route("/busy.png", Route(status=503, headers={"Retry-After": "5"}))
    start = time.monotonic()
    assert reason(lambda: fetcher(total_timeout_s=0.5).fetch(url)).startswith("HTTP 503")
    assert time.monotonic() - start < 3
    assert server.count("/busy.png") == 2  # one wait, cut to the deadline; then no more tries


def test_slow_server_times_out_on_read_and_read_errors_are_retried(server):
    url = server.route("/slow.png", Route(body=PNG, delay_s=3))
    start = time.monotonic()
    message = reason(lambda: fetcher(read_timeout_s=0.2, retries=1).fetch(url))
    assert message.startswith("timed out after 0.2 s")
    assert time.monotonic() - start < 2
    assert server.count("/slow.png") == 2


def test_body_trickling_past_the_total_timeout_is_cut_between_chunks(server):
    url = server.route("/trickle.png", Route(body=b"x" * 16 * 4096, chunk_size=4096,
                                             trickle_s=0.15))
    start = time.monotonic()
    message = reason(lambda: fetcher(total_timeout_s=0.4, read_timeout_s=2).fetch(url))
    assert message == "timed out after 0.4 s"
    assert time.monotonic() - start < 1.5  # the whole body would take 2.25 s


def test_content_length_over_max_bytes_is_refused_up_front(server):
    # The body trickles: only a refusal from the Content-Length header is this quick.
    url = server.route("/big.png", Route(body=b"x" * 5000, chunk_size=500, trickle_s=0.5))
    start = time.monotonic()
    assert reason(lambda: fetcher(max_bytes=1000).fetch(url)) == "larger than 1000 bytes"
    assert time.monotonic() - start < 0.7  # reading on to 1000 bytes takes 1.0 s


def test_chunked_body_over_max_bytes_is_refused_while_reading(server):
    # 20 chunks, 0.1 s apart: refused after the third, long before the body ends.
    url = server.route("/big.png", Route(body=b"x" * 10240, chunked=True, chunk_size=512,
                                         trickle_s=0.1))
    start = time.monotonic()
    assert reason(lambda: fetcher(max_bytes=1000).fetch(url)) == "larger than 1000 bytes"
    assert time.monotonic() - start < 1.0
    small = server.route("/small.png", Route(body=b"y" * 1000, chunked=True, chunk_size=300))
    assert fetcher(max_bytes=1000).fetch(small).data == b"y" * 1000


def test_max_bytes_reason_names_the_size(server):
    url = server.route("/big.png", Route(body=b"x" * (2**20 + 1)))
    assert reason(lambda: fetcher(max_bytes=2**20).fetch(url)) == "larger than 1 MiB"


def test_304_on_if_none_match_keeps_the_stored_hash_and_sends_no_body(server):
    url = server.route("/p.png", Route(body=PNG, etag='"v1"'))
    first = fetcher().fetch(url)
    again = fetcher().fetch(url, validators=Validators(etag=first.etag, sha256=first.sha256))
    assert again == Fetched(None, first.sha256, '"v1"', "", True)
    last = server.seen("/p.png")[-1]
    assert last.headers["if-none-match"] == '"v1"' and last.status == 304
    assert last.body_bytes == 0


def test_304s_and_redirects_keep_the_connection(server, net):
    url = server.route("/p.png", Route(body=PNG, etag='"v1"'))
    moved = server.route("/old.png", redirect("/p.png"))
    shared = fetcher()
    for _ in range(5):
        assert shared.fetch(url, validators=Validators(etag='"v1"')).not_modified
        assert shared.fetch(moved).data == PNG
    assert len(net.connects) == 1


def test_304_on_if_modified_since(server):
    stamp = "Wed, 21 Oct 2015 07:28:00 GMT"
    url = server.route("/p.png", Route(body=PNG, last_modified=stamp))
    got = fetcher().fetch(url, validators=Validators(last_modified=stamp, sha256="abc"))
    assert got.not_modified and got.data is None and got.sha256 == "abc"
    assert server.seen("/p.png")[-1].headers["if-modified-since"] == stamp


def test_a_changed_photo_is_fetched_again(server):
    url = server.route("/p.png", Route(body=PNG, etag='"v1"'))
    first = fetcher().fetch(url)
    newer = png_bytes(color=(1, 2, 3))
    server.route("/p.png", Route(body=newer, etag='"v2"'))
    got = fetcher().fetch(url, validators=Validators(etag='"v1"', sha256=first.sha256))
    assert (got.data, got.etag, got.not_modified) == (newer, '"v2"', False)
    assert got.sha256 == hashlib.sha256(newer).hexdigest() != first.sha256


def test_threads_share_one_pool_per_host(server, net):
    url = server.route("/p.png", Route(body=PNG))
    shared = fetcher(concurrency=4)
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda _: shared.fetch(url).data, range(40)))
    assert results == [PNG] * 40
    assert 1 <= len(net.connects) <= 4  # keep-alive connections reused, not one per fetch
    shared.close()
    assert shared.fetch(url).data == PNG  # usable after close


def test_pools_are_bounded(server, monkeypatch):
    monkeypatch.setattr("factory.store.photo_fetch._MAX_POOLS", 2)
    server.route("/p.png", Route(body=PNG))
    shared = fetcher(allow_private=("127.0.0.1", "127.0.0.2", "127.0.0.3"))
    for host in ("127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.1"):
        url = server.url("/p.png").replace("127.0.0.1", host)
        if host == "127.0.0.1":
            assert shared.fetch(url).data == PNG
        else:  # the server listens on 127.0.0.1 only: a refused connection, but a pool
            assert reason(lambda: shared.fetch(url)).startswith("cannot connect")
    assert len(shared._pools) == 2


def test_connection_refused_is_a_photo_error(net):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    message = reason(lambda: fetcher(retries=0).fetch(f"http://127.0.0.1:{port}/p.png"))
    assert message.startswith(f"cannot connect to 127.0.0.1:{port}")


def test_photo_error_survives_pickling():
    error = pickle.loads(pickle.dumps(PhotoError("HTTP 404 from https://host/p.png")))
    assert isinstance(error, PhotoError) and error.reason == "HTTP 404 from https://host/p.png"


# -- HTTP: redirects -----------------------------------------------------------------------

def test_redirect_to_an_allowed_host_is_followed_and_checked(server, net):
    net.resolve("photos.test", ["127.0.0.1"])
    net.resolve("img.cdn.test", ["127.0.0.1"])
    server.route("/new.png", Route(body=PNG))
    start = server.route("/old.png", redirect(server.url("/new.png", host="img.cdn.test")))
    start = start.replace("127.0.0.1", "photos.test")
    policy = dict(allow_hosts=("photos.test", "*.cdn.test"),
                  allow_private=("photos.test", "img.cdn.test"))
    assert fetcher(**policy).fetch(start).data == PNG
    hosts = [r.headers["host"] for r in server.requests]
    assert hosts == [f"photos.test:{server.port}", f"img.cdn.test:{server.port}"]
    assert net.lookups == ["photos.test", "img.cdn.test"]


def test_relative_redirect_is_followed(server):
    server.route("/new.png", Route(body=PNG))
    url = server.route("/old.png", redirect("/new.png", status=301))
    assert fetcher().fetch(url).data == PNG


def test_redirect_loop_is_too_many_redirects(server):
    server.route("/a", redirect("/b"))
    url = server.route("/b", redirect("/a"))
    assert reason(lambda: fetcher().fetch(url)) == "too many redirects (more than 3)"
    assert server.count() == 4
    assert reason(lambda: fetcher(max_redirects=0).fetch(url)).startswith("too many redirects")


@pytest.mark.parametrize("location, expected", [
    ("http://evil.test/x.png", "refused: host evil.test is not in allow_hosts"),
    ("http://169.254.169.254/latest/meta-data/", "refused: 169.254.169.254 is a link-local"),
    ("file:///etc/passwd", "refused: scheme file:// is not allowed"),
])
def test_redirect_hops_are_checked_before_connecting(server, net, location, expected):
    url = server.route("/old.png", redirect(location))
    hosts = () if "evil" not in location else ("127.0.0.1",)
    assert reason(lambda: fetcher(allow_hosts=hosts).fetch(url)).startswith(expected)
    assert server.count() == 1
    assert [a[0] for a in net.connects] == ["127.0.0.1"]
    assert "evil.test" not in net.lookups


# -- HTTP: what may be reached -------------------------------------------------------------

@pytest.mark.parametrize("url, expected", [
    ("http://169.254.169.254/latest/meta-data/iam/",
     "refused: 169.254.169.254 is a link-local address (allow it by name in allow_private)"),
    ("http://10.0.0.1/p.png",
     "refused: 10.0.0.1 is a private address (allow it by name in allow_private)"),
    ("http://[::ffff:10.0.0.1]/p.png", "refused: ::ffff:a00:1 is a private address"),
    ("http://[64:ff9b::a9fe:a9fe]/", "refused: 64:ff9b::a9fe:a9fe is a reserved"),  # NAT64
    ("http://[2002:a00:1::1]/p.png", "refused: 2002:a00:1::1 is a private"),  # 6to4 10.0.0.1
    ("http://127.0.0.1:9/p.png", "refused: 127.0.0.1 is a loopback address"),
    ("http://[::1]/p.png", "refused: ::1 is a loopback address"),
    ("http://0.0.0.0/p.png", "refused: 0.0.0.0 is a unspecified address"),
    ("http://224.0.0.1/p.png", "refused: 224.0.0.1 is a multicast address"),
    ("http://100.64.0.1/p.png", "refused: 100.64.0.1 is a non-public address"),
])
def test_non_public_addresses_are_refused_without_any_connection(net, url, expected):
    assert reason(lambda: fetcher(allow_private=()).fetch(url)).startswith(expected)
    assert net.connects == [] and net.lookups == []


def test_localhost_is_refused_unless_named_in_allow_private(server, net):
    net.resolve("localhost", ["127.0.0.1"])
    server.route("/p.png", Route(body=PNG))
    url = server.url("/p.png", host="localhost")
    assert reason(lambda: fetcher(allow_private=()).fetch(url)) == (
        "refused: localhost resolves to 127.0.0.1, a loopback address "
        "(allow it by name in allow_private)")
    assert reason(lambda: fetcher(allow_private=("127.0.0.1",)).fetch(url)).startswith(
        "refused: localhost resolves to 127.0.0.1")  # the name is what is allowed
    assert net.connects == []
    assert fetcher(allow_private=("localhost",)).fetch(url).data == PNG
    assert fetcher(allow_private=("127.0.0.1",)).fetch(server.url("/p.png")).data == PNG


def test_every_resolved_address_is_checked(net):
    net.resolve("mixed.test", ["93.184.216.34", "10.1.2.3"])
    message = reason(lambda: fetcher(allow_private=()).fetch("http://mixed.test/p.png"))
    assert message.startswith("refused: mixed.test resolves to 10.1.2.3, a private address")
    assert net.connects == []


def test_the_checked_address_is_the_one_connected_to(server, net):
    # DNS rebinding: the first answer is checked; a later one must never be used.
    net.resolve("rebind.test", ["127.0.0.1"], ["10.0.0.1"])
    server.route("/p.png", Route(body=PNG))
    got = fetcher(allow_private=("rebind.test",)).fetch(server.url("/p.png", host="rebind.test"))
    assert got.data == PNG
    assert net.lookups == ["rebind.test"]
    assert {a[0] for a in net.connects} == {"127.0.0.1"}
    assert server.requests[0].headers["host"] == f"rebind.test:{server.port}"


@pytest.mark.parametrize("host, allowed", [
    ("cdn.shopify.com", True), ("a.example.com", True), ("a.b.example.com", True),
    ("example.com", False), ("badexample.com", False), ("example.com.evil.test", False),
    ("shopify.com", False), ("CDN.Shopify.COM", True),
])
def test_allow_hosts_exact_and_wildcard(server, net, host, allowed):
    net.resolve(host.lower(), ["127.0.0.1"])
    server.route("/p.png", Route(body=PNG))
    shop = fetcher(allow_hosts=("cdn.shopify.com", "*.example.com"),
                   allow_private=(host.lower(),))
    url = server.url("/p.png", host=host)
    if allowed:
        assert shop.fetch(url).data == PNG
    else:
        assert reason(lambda: shop.fetch(url)) == (
            f"refused: host {host.lower()} is not in allow_hosts")
        assert net.lookups == [] and net.connects == []


@pytest.mark.parametrize("ref, expected", [
    ("file:///etc/passwd", "refused: scheme file://"),
    ("ftp://photos.test/p.png", "refused: scheme ftp://"),
    ("gopher://photos.test/", "refused: scheme gopher://"),
    ("data:image/png;base64,AAAA", "refused: scheme data://"),
    ("http://user:secret@photos.test/p.png", "refused: credentials in a photo URL"),
    ("http:///p.png", "refused: no host"),
    ("http://photos.test:99999/p.png", "refused: malformed URL"),
    ("http://[::1/p.png", "refused: malformed URL"),
    ("http://" + "a" * 64 + ".test/p.png", "refused: malformed URL"),  # an IDNA label limit
    ("http://nowhere.test/p.png", "cannot resolve nowhere.test"),
    ("", "empty photo reference"),
])
def test_unusable_references_are_refused(net, ref, expected):
    message = reason(lambda: fetcher().fetch(ref))
    assert message.startswith(expected) and "secret" not in message
    assert net.connects == []


# -- HTTPS ---------------------------------------------------------------------------------

def _certificate(directory, name: str) -> tuple[str, str]:
    """A self-signed certificate for ``name`` (its own CA), as (certfile, keyfile)."""
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    certfile, keyfile = directory / f"{name}.pem", directory / f"{name}.key"
    certfile.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    return str(certfile), str(keyfile)


def test_https_connects_to_the_checked_address_and_verifies_the_name(tmp_path, net,
                                                                     monkeypatch):
    certfile, keyfile = _certificate(tmp_path, "photos.test")
    monkeypatch.setenv("SSL_CERT_FILE", certfile)  # trust it through OpenSSL's default paths
    net.resolve("photos.test", ["127.0.0.1"])
    net.resolve("other.test", ["127.0.0.1"])
    policy = dict(allow_private=("photos.test", "other.test"), retries=0)
    with PhotoServer(tls=(certfile, keyfile)) as server:
        server.route("/p.png", Route(body=PNG))
        got = fetcher(**policy).fetch(server.url("/p.png", host="photos.test"))
        assert got.data == PNG
        assert server.requests[0].sni == "photos.test"
        message = reason(lambda: fetcher(**policy).fetch(server.url("/p.png", host="other.test")))
        assert message.startswith("TLS failed with other.test")
        assert server.count() == 1
    assert {a[0] for a in net.connects} == {"127.0.0.1"}


# -- local paths ---------------------------------------------------------------------------

@pytest.fixture
def manifest_dir(tmp_path):
    folder = tmp_path / "catalog"
    (folder / "photos").mkdir(parents=True)
    (folder / "photos" / "a.png").write_bytes(PNG)
    (folder / "photos" / "empty.png").write_bytes(b"")
    (tmp_path / "outside.png").write_bytes(PNG)
    os.symlink(tmp_path / "outside.png", folder / "photos" / "escape.png")
    os.symlink(folder / "photos" / "a.png", folder / "inside.png")
    return folder


def test_local_paths_inside_the_manifest_folder(manifest_dir):
    local = PhotoFetcher(FetchPolicy(), base_dir=str(manifest_dir))
    for ref in ("photos/a.png", "./photos/../photos/a.png", str(manifest_dir / "photos/a.png"),
                "inside.png"):
        got = local.fetch(ref)
        assert (got.data, got.sha256) == (PNG, hashlib.sha256(PNG).hexdigest())


@pytest.mark.parametrize("ref, expected", [
    ("../outside.png", "path ../outside.png is outside the manifest's folder"),
    ("photos/../../outside.png", "path photos/../../outside.png is outside the manifest's"),
    ("photos/escape.png", "path photos/escape.png is outside the manifest's folder"),
    ("/etc/hostname", "path /etc/hostname is outside the manifest's folder"),
    ("photos/none.png", "no such file photos/none.png"),
    ("photos/empty.png", "0 bytes"),
    ("photos", "cannot read photos"),
])
def test_local_paths_refused(manifest_dir, ref, expected):
    local = PhotoFetcher(FetchPolicy(), base_dir=str(manifest_dir))
    assert reason(lambda: local.fetch(ref)).startswith(expected)


def test_local_limits_and_no_base_dir(manifest_dir):
    small = PhotoFetcher(FetchPolicy(max_bytes=10), base_dir=str(manifest_dir))
    assert reason(lambda: small.fetch("photos/a.png")) == "larger than 10 bytes"
    assert "no local folder" in reason(lambda: PhotoFetcher(FetchPolicy()).fetch("a.png"))


# -- S3 ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def s3():
    from tests.support.s3_server import ACCESS_KEY, REGION, SECRET_KEY, start_s3_server

    with pytest.MonkeyPatch.context() as patch:
        # The boto3 chain must find credentials here, never ask an instance metadata service.
        for name, value in {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                            "AWS_DEFAULT_REGION": REGION, "AWS_EC2_METADATA_DISABLED": "true",
                            "AWS_CONFIG_FILE": "/nonexistent",
                            "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent"}.items():
            patch.setenv(name, value)
        with start_s3_server() as server:
            server.client().create_bucket(Bucket="catalog")
            yield server


def test_s3_photo_and_conditional_get(s3, net):
    from factory.store.s3 import S3Options

    s3.client().put_object(Bucket="catalog", Key="photos/p.png", Body=PNG)
    options = S3Options(endpoint_url=s3.endpoint_url, region="us-east-1",
                        addressing_style="path", max_attempts=2)
    store = PhotoFetcher(FetchPolicy(max_bytes=len(PNG)), s3_options=options)
    got = store.fetch("s3://catalog/photos/p.png")
    assert (got.data, got.sha256) == (PNG, hashlib.sha256(PNG).hexdigest())
    assert got.etag.strip('"') == hashlib.md5(PNG).hexdigest() and got.last_modified
    again = store.fetch("s3://catalog/photos/p.png",
                        validators=Validators(etag=got.etag, sha256=got.sha256))
    assert again == Fetched(None, got.sha256, got.etag, "", True)
    stale = store.fetch("s3://catalog/photos/p.png", validators=Validators(etag='"0000"'))
    assert stale.data == PNG and not stale.not_modified
    assert reason(lambda: store.fetch("s3://catalog/photos/none.png")) == (
        "no such object s3://catalog/photos/none.png")
    s3.client().put_object(Bucket="catalog", Key="photos/big.png", Body=PNG + b"x")
    assert reason(lambda: store.fetch("s3://catalog/photos/big.png")).startswith("larger than")
    assert {a[0] for a in net.connects} == {"127.0.0.1"}


def test_s3_reference_without_key_is_refused():
    assert "is not an s3://bucket/prefix URI" in reason(lambda: fetcher().fetch("s3://"))

