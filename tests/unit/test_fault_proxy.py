"""The local S3 server (moto, in a subprocess) and the fault proxy, with real boto3/pyarrow clients.

Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import hashlib
import sys
import time
from pathlib import Path

import pytest

try:
    from tests.support.fault_proxy import (
        FAULT_503, FAULT_DROP, FaultPolicy, FaultProxy, start_fault_proxy)
    from tests.support.s3_server import (
        ACCESS_KEY, REGION, SECRET_KEY, S3Server, make_client, start_s3_server)
except ImportError:  # plain `pytest` puts tests/, not the repo root, on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tests.support.fault_proxy import (
        FAULT_503, FAULT_DROP, FaultPolicy, FaultProxy, start_fault_proxy)
    from tests.support.s3_server import (
        ACCESS_KEY, REGION, SECRET_KEY, S3Server, make_client, start_s3_server)

pytestmark = pytest.mark.integration

MB = 1024 * 1024


def client_config() -> dict:
    return dict(retries={"mode": "standard", "max_attempts": 8},
                connect_timeout=2, read_timeout=2, s3={"addressing_style": "path"})


@pytest.fixture(scope="module")
def s3() -> S3Server:
    with start_s3_server() as server:
        yield server


@pytest.fixture(scope="module")
def module_proxy(s3) -> FaultProxy:
    with start_fault_proxy(s3.endpoint_url) as proxy:
        yield proxy


@pytest.fixture()
def proxy(module_proxy) -> FaultProxy:
    module_proxy.policy = FaultPolicy()
    module_proxy.reset_log()
    yield module_proxy
    module_proxy.policy = FaultPolicy()


@pytest.fixture()
def client(proxy):
    """A boto3 client that talks to moto through the proxy."""
    return _client_for(proxy.endpoint_url)


def _client_for(endpoint_url: str, **overrides):
    return make_client(endpoint_url, **{**client_config(), **overrides})


_bucket_seq = iter(range(1_000_000))


@pytest.fixture()
def bucket(s3) -> str:
    name = f"test-bucket-{next(_bucket_seq)}"
    s3.client().create_bucket(Bucket=name)
    return name


def _body(key: str, size: int = 1000) -> bytes:
    seed = hashlib.sha256(key.encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


def _arrow_fs(endpoint_url: str):
    from pyarrow import fs

    return fs.S3FileSystem(endpoint_override=endpoint_url.removeprefix("http://"), scheme="http",
                           access_key=ACCESS_KEY, secret_key=SECRET_KEY, region=REGION)


# -- the server itself -------------------------------------------------------------------------


def test_server_if_none_match_rejects_second_put_with_412(s3, bucket):
    from botocore.exceptions import ClientError

    direct = s3.client()
    direct.put_object(Bucket=bucket, Key="k", Body=b"first", IfNoneMatch="*")
    with pytest.raises(ClientError) as caught:
        direct.put_object(Bucket=bucket, Key="k", Body=b"second", IfNoneMatch="*")
    assert caught.value.response["Error"]["Code"] == "PreconditionFailed"
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    assert direct.get_object(Bucket=bucket, Key="k")["Body"].read() == b"first"


def test_server_if_none_match_on_complete_multipart_upload(s3, bucket):
    from botocore.exceptions import ClientError

    direct = s3.client()

    def multipart(data: bytes):
        upload = direct.create_multipart_upload(Bucket=bucket, Key="mp")
        part = direct.upload_part(Bucket=bucket, Key="mp", UploadId=upload["UploadId"],
                                  PartNumber=1, Body=data)
        return direct.complete_multipart_upload(
            Bucket=bucket, Key="mp", UploadId=upload["UploadId"], IfNoneMatch="*",
            MultipartUpload={"Parts": [{"ETag": part["ETag"], "PartNumber": 1}]})

    multipart(b"first")
    with pytest.raises(ClientError) as caught:
        multipart(b"second")
    assert caught.value.response["Error"]["Code"] == "PreconditionFailed"
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    assert direct.get_object(Bucket=bucket, Key="mp")["Body"].read() == b"first"


def test_server_works_with_pyarrow_directly(s3, bucket):
    arrow = _arrow_fs(s3.endpoint_url)
    with arrow.open_output_stream(f"{bucket}/arrow/direct.bin") as out:
        out.write(b"written by pyarrow")
    with arrow.open_input_stream(f"{bucket}/arrow/direct.bin") as stream:
        assert stream.read() == b"written by pyarrow"
    got = s3.client().get_object(Bucket=bucket, Key="arrow/direct.bin")["Body"].read()
    assert got == b"written by pyarrow"


# -- pass-through ------------------------------------------------------------------------------


def test_pass_through_basic_operations(proxy, client, tmp_path):
    from boto3.s3.transfer import TransferConfig

    bucket = "through-proxy"
    client.create_bucket(Bucket=bucket)
    small, big = _body("small"), _body("big", 3 * MB)
    client.put_object(Bucket=bucket, Key="assets/small.bin", Body=small)
    client.put_object(Bucket=bucket, Key="assets/big.bin", Body=big)
    assert client.get_object(Bucket=bucket, Key="assets/small.bin")["Body"].read() == small
    assert client.get_object(Bucket=bucket, Key="assets/big.bin")["Body"].read() == big
    ranged = client.get_object(Bucket=bucket, Key="assets/big.bin", Range="bytes=10-19")
    assert ranged["ResponseMetadata"]["HTTPStatusCode"] == 206
    assert ranged["Body"].read() == big[10:20]
    assert client.head_object(Bucket=bucket, Key="assets/big.bin")["ContentLength"] == len(big)

    source = tmp_path / "multipart.bin"
    multipart_data = _body("multipart", 11 * MB)
    source.write_bytes(multipart_data)
    client.upload_file(str(source), bucket, "assets/multipart.bin",
                       Config=TransferConfig(multipart_threshold=5 * MB,
                                             multipart_chunksize=5 * MB, max_concurrency=3))
    got = client.get_object(Bucket=bucket, Key="assets/multipart.bin")["Body"].read()
    assert got == multipart_data

    listed = client.list_objects_v2(Bucket=bucket, Prefix="assets/")
    assert sorted(o["Key"] for o in listed["Contents"]) == [
        "assets/big.bin", "assets/multipart.bin", "assets/small.bin"]
    client.delete_object(Bucket=bucket, Key="assets/small.bin")
    assert client.list_objects_v2(Bucket=bucket, Prefix="assets/")["KeyCount"] == 2

    assert proxy.count(fault=None) == len(proxy.requests)
    assert proxy.count(faulted=True) == 0
    assert proxy.count("PUT", "/through-proxy/assets/big.bin") == 1
    assert proxy.count("HEAD") == 1
    assert proxy.count("DELETE") == 1
    assert proxy.count("POST", "uploads") == 1  # CreateMultipartUpload
    assert proxy.count("PUT", "uploadId=") == 3  # 11 MB in 5 MB parts
    assert proxy.count("POST", "uploadId=") == 1  # CompleteMultipartUpload
    assert all(entry.status in (200, 204, 206) for entry in proxy.requests)
    # botocore asks for 100-continue on PutObject and UploadPart; the proxy answers it.
    puts = [e for e in proxy.requests if e.method == "PUT" and "/assets/" in e.path]
    assert puts and all(e.request_headers.get("Expect") == "100-continue" for e in puts)


# -- faults ------------------------------------------------------------------------------------


def test_put_503_every_second_put_is_retried_by_botocore(proxy, client, bucket):
    proxy.policy = FaultPolicy(put_503_every=2, key_filter="/assets/")
    bodies = {f"assets/{i:02d}.png": _body(f"asset-{i}", 2000 + i) for i in range(10)}
    attempts = []
    for key, data in bodies.items():
        response = client.put_object(Bucket=bucket, Key=key, Body=data)
        attempts.append(response["ResponseMetadata"]["RetryAttempts"])
    client.put_object(Bucket=bucket, Key="other/unfiltered.txt", Body=b"not counted")

    # PUT #1 passes; every later key gets one 503 (#2, #4, ...) and then passes on its retry.
    assert attempts == [0] + [1] * 9
    assert proxy.count("PUT", "/assets/", fault=FAULT_503) == 9
    assert proxy.count("PUT", "/assets/", status=200) == 10
    assert proxy.count("PUT", "/other/", faulted=True) == 0
    assert proxy.put_count == 19

    listed = client.list_objects_v2(Bucket=bucket, Prefix="assets/")["Contents"]
    assert sorted(o["Key"] for o in listed) == sorted(bodies)
    for key, data in bodies.items():
        assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == data


def test_503_body_is_an_s3_slow_down_error(proxy, bucket):
    from botocore.exceptions import ClientError

    proxy.policy = FaultPolicy(put_503_every=1)
    once = _client_for(proxy.endpoint_url, retries={"mode": "standard", "total_max_attempts": 1})
    with pytest.raises(ClientError) as caught:
        once.put_object(Bucket=bucket, Key="k", Body=b"x")
    assert caught.value.response["Error"]["Code"] == "SlowDown"
    assert caught.value.response["Error"]["Message"] == "Please reduce your request rate."
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    assert proxy.count(fault=FAULT_503) == 1 == proxy.count(fault="503")
    proxy.policy = FaultPolicy()
    with pytest.raises(ClientError) as missing:
        once.head_object(Bucket=bucket, Key="k")
    assert missing.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404


@pytest.mark.parametrize(("hold_seconds", "first_error"), [
    (0.0, "ConnectionClosedError"),  # connection closed at once, no response
    (2.5, "ReadTimeoutError"),  # held past the client's read_timeout=2, then closed
])
def test_dropped_put_with_if_none_match_is_retried_and_gets_412(
        proxy, client, bucket, hold_seconds, first_error):
    from botocore.exceptions import ClientError

    seen = []  # what botocore's retry handler saw for each attempt

    def record(caught_exception=None, response=None, **_):
        seen.append(type(caught_exception).__name__ if caught_exception is not None
                    else response[0].status_code)

    client.meta.events.register("needs-retry.s3.PutObject", record)
    proxy.policy = FaultPolicy(drop_after_put_every=3, key_filter="/assets/",
                               drop_hold_seconds=hold_seconds)
    client.put_object(Bucket=bucket, Key="assets/a.png", Body=_body("a"), IfNoneMatch="*")
    client.put_object(Bucket=bucket, Key="assets/b.png", Body=_body("b"), IfNoneMatch="*")
    seen.clear()
    data = _body("c", 5000)
    with pytest.raises(ClientError) as caught:  # PUT #3 lands, its response is dropped
        client.put_object(Bucket=bucket, Key="assets/c.png", Body=data, IfNoneMatch="*")

    error = caught.value
    assert type(error) is ClientError  # boto3 has no modelled PreconditionFailed class
    assert error.operation_name == "PutObject"
    assert error.response["Error"]["Code"] == "PreconditionFailed"
    assert error.response["Error"]["Condition"] == "If-None-Match"
    assert error.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    assert error.response["ResponseMetadata"]["RetryAttempts"] == 1
    assert seen == [first_error, 412]
    # The log: the first try landed (200 upstream) but was dropped; the retry got 412.
    c_puts = [(e.status, e.fault) for e in proxy.requests if e.path.endswith("/assets/c.png")]
    assert c_puts == [(200, FAULT_DROP), (412, None)]
    # "Already written" can be told from "someone else wrote it": the ETag is our MD5.
    head = client.head_object(Bucket=bucket, Key="assets/c.png")
    assert head["ETag"].strip('"') == hashlib.md5(data).hexdigest()
    assert client.get_object(Bucket=bucket, Key="assets/c.png")["Body"].read() == data


def test_put_403_is_access_denied_and_not_retried(proxy, client, bucket):
    from botocore.exceptions import ClientError

    proxy.policy = FaultPolicy(put_403_every=1, key_filter="/denied/")
    with pytest.raises(ClientError) as caught:
        client.put_object(Bucket=bucket, Key="denied/k", Body=b"x")
    assert caught.value.response["Error"]["Code"] == "AccessDenied"
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert caught.value.response["ResponseMetadata"]["RetryAttempts"] == 0
    assert proxy.count("PUT", fault="403") == 1
    client.put_object(Bucket=bucket, Key="allowed/k", Body=b"x")  # not matched: forwarded
    assert client.list_objects_v2(Bucket=bucket)["KeyCount"] == 1


def test_dropped_put_without_condition_is_retried_and_succeeds(proxy, client, bucket):
    proxy.policy = FaultPolicy(drop_after_put_every=2, key_filter="/assets/")
    client.put_object(Bucket=bucket, Key="assets/first.png", Body=b"1")
    response = client.put_object(Bucket=bucket, Key="assets/second.png", Body=b"2")
    assert response["ResponseMetadata"]["RetryAttempts"] == 1
    assert proxy.count(fault=FAULT_DROP) == 1 == proxy.count(fault="drop")
    assert client.get_object(Bucket=bucket, Key="assets/second.png")["Body"].read() == b"2"


def test_multipart_upload_survives_faults_on_parts(proxy, client, bucket, tmp_path):
    from boto3.s3.transfer import TransferConfig

    data = _body("mp-faults", 16 * MB)
    source = tmp_path / "mp.bin"
    source.write_bytes(data)
    proxy.policy = FaultPolicy(put_503_every=2, key_filter="/assets/")
    client.upload_file(str(source), bucket, "assets/mp.bin",
                       Config=TransferConfig(multipart_threshold=5 * MB,
                                             multipart_chunksize=5 * MB, max_concurrency=1))
    assert proxy.count("PUT", "uploadId=", fault=FAULT_503) >= 1
    assert client.get_object(Bucket=bucket, Key="assets/mp.bin")["Body"].read() == data


# -- pyarrow -----------------------------------------------------------------------------------


def test_pyarrow_reads_and_writes_through_the_proxy(proxy, client, bucket):
    payload = _body("manifest", 2 * MB)
    client.put_object(Bucket=bucket, Key="manifests/run.parquet", Body=payload)
    arrow = _arrow_fs(proxy.endpoint_url)
    with arrow.open_input_stream(f"{bucket}/manifests/run.parquet") as stream:
        assert stream.read() == payload
    assert arrow.get_file_info(f"{bucket}/manifests/run.parquet").size == len(payload)
    assert proxy.count("GET", "/manifests/run.parquet") >= 1

    # pyarrow's writes are multipart uploads with chunked, aws-chunked part bodies.
    with arrow.open_output_stream(f"{bucket}/manifests/out.bin") as out:
        out.write(b"from pyarrow")
    got = client.get_object(Bucket=bucket, Key="manifests/out.bin")["Body"].read()
    assert got == b"from pyarrow"
    parts = [e for e in proxy.requests if e.method == "PUT" and "/manifests/out.bin" in e.path]
    assert parts and all(e.chunked for e in parts)


def test_proxy_stops_and_frees_its_port(s3):
    import socket

    proxy = start_fault_proxy(s3.endpoint_url)
    _client_for(proxy.endpoint_url).list_buckets()  # leaves a keep-alive connection open
    started = time.monotonic()
    proxy.stop()
    assert time.monotonic() - started < 3
    port = int(proxy.endpoint_url.rsplit(":", 1)[1])
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0
