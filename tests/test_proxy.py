"""The emulator's reverse proxy, with real requests: boto3 through it to a real moto server.

A tiny origin server written here streams chunked responses, which moto never sends.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import boto3
import pytest
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError, FlexibleChecksumError
from moto.server import ThreadedMotoServer

from confluence.emulator.proxy import FaultPlan, FaultRule, Proxy

AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": "/dev/null",
    "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
    "AWS_EC2_METADATA_DISABLED": "true",
}


@pytest.fixture(autouse=True)
def aws_env(monkeypatch):
    for name, value in AWS_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


@pytest.fixture(scope="module")
def moto_url():
    # moto logs every request through werkzeug; the tests do not need the noise.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def s3(endpoint: str, attempts: int = 1, pool: int = 10):
    """An S3 client; ``attempts=1`` turns botocore's retries off so faults surface."""
    config = Config(
        retries={"total_max_attempts": attempts, "mode": "standard"},
        max_pool_connections=pool,
        s3={"addressing_style": "path"},
    )
    return boto3.client("s3", endpoint_url=endpoint, config=config, region_name="us-east-1")


_bucket_counter = iter(range(10**6))


@pytest.fixture
def bucket(moto_url):
    name = f"proxy-test-{next(_bucket_counter)}"
    s3(moto_url).create_bucket(Bucket=name)
    return name


def test_forwards_every_method_and_counts_them(moto_url, bucket):
    with Proxy(moto_url) as proxy:
        client = s3(proxy.url)
        for i in range(3):
            client.put_object(Bucket=bucket, Key=f"k{i}", Body=b"x" * (i + 1) * 1000)
        listed = client.list_objects_v2(Bucket=bucket)
        assert [o["Key"] for o in listed["Contents"]] == ["k0", "k1", "k2"]
        assert client.get_object(Bucket=bucket, Key="k1")["Body"].read() == b"x" * 2000
        assert client.head_object(Bucket=bucket, Key="k2")["ContentLength"] == 3000
        client.delete_object(Bucket=bucket, Key="k0")
        with pytest.raises(ClientError) as err:
            client.head_object(Bucket=bucket, Key="k0")
        assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
        assert proxy.counts == {"PUT": 3, "GET": 2, "HEAD": 2, "DELETE": 1}
        # One boto3 client, sequential calls: a single kept-alive client connection.
        assert proxy.connections == 1
    assert s3(moto_url).list_objects_v2(Bucket=bucket)["KeyCount"] == 2


def test_binds_loopback_only_and_leaves_nothing_running(moto_url):
    before = {t.name for t in threading.enumerate()}
    with Proxy(moto_url) as proxy:
        parts = urlsplit(proxy.url)
        assert parts.hostname == "127.0.0.1" and parts.port > 0
        # A client that keeps its connection open must not keep the proxy alive.
        idle = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5)
        idle.request("GET", "/")
        idle.getresponse().read()
        assert any(t.name.startswith("confluence-proxy") for t in threading.enumerate())
    left = {t.name for t in threading.enumerate()} - before
    assert not [name for name in left if name.startswith("confluence-proxy")], left
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((parts.hostname, parts.port), timeout=2)
    idle.close()


def test_latency_is_added_to_every_request(moto_url, bucket):
    s3(moto_url).put_object(Bucket=bucket, Key="small", Body=b"abc")
    requests, latency = 15, 0.04

    def elapsed(endpoint: str) -> float:
        client = s3(endpoint)
        client.head_object(Bucket=bucket, Key="small")  # connect and warm up, untimed
        start = time.perf_counter()
        for _ in range(requests):
            client.head_object(Bucket=bucket, Key="small")
        return time.perf_counter() - start

    direct = elapsed(moto_url)
    with Proxy(moto_url, latency=latency) as proxy:
        proxied = elapsed(proxy.url)
        assert proxy.counts == {"HEAD": requests + 1}
    added = (proxied - direct) / requests
    print(f"direct {direct:.3f} s, proxied {proxied:.3f} s, ratio {proxied / direct:.1f}")
    assert latency * 0.95 <= added <= latency * 2, f"added {added * 1000:.1f} ms per request"


def test_concurrent_clients_are_served_in_parallel(moto_url, bucket):
    s3(moto_url).put_object(Bucket=bucket, Key="small", Body=b"abc")
    workers, latency = 16, 0.2
    with Proxy(moto_url, latency=latency) as proxy:
        client = s3(proxy.url, pool=workers)
        start = time.perf_counter()
        with ThreadPoolExecutor(workers) as pool:
            sizes = list(
                pool.map(
                    lambda _: client.head_object(Bucket=bucket, Key="small")["ContentLength"],
                    range(workers),
                )
            )
        elapsed = time.perf_counter() - start
        assert sizes == [3] * workers
        assert proxy.counts == {"HEAD": workers}
    # One after the other these would take workers * latency = 3.2 s.
    assert elapsed < 4 * latency, f"{workers} concurrent requests took {elapsed:.2f} s"


def test_every_nth_request_gets_slowdown(moto_url, bucket):
    s3(moto_url).put_object(Bucket=bucket, Key="small", Body=b"abc")
    with Proxy(moto_url, faults=FaultPlan.every(3)) as proxy:
        client = s3(proxy.url)
        outcomes = []
        for _ in range(9):
            try:
                client.get_object(Bucket=bucket, Key="small")["Body"].read()
                outcomes.append("ok")
            except ClientError as err:
                meta = err.response
                outcomes.append(
                    f"{meta['ResponseMetadata']['HTTPStatusCode']} {meta['Error']['Code']}"
                )
        assert outcomes == ["ok", "ok", "503 SlowDown"] * 3
        assert proxy.counts == {"GET": 9}
        assert proxy.injected == {"503 SlowDown": 3}


def test_first_k_puts_get_429_and_other_methods_pass(moto_url, bucket):
    plan = FaultPlan.first(2, method="put", status=429)
    with Proxy(moto_url, faults=plan) as proxy:
        client = s3(proxy.url)
        for attempt in range(2):
            with pytest.raises(ClientError) as err:
                client.put_object(Bucket=bucket, Key="k", Body=b"payload" * 1000)
            assert err.value.response["Error"]["Code"] == "TooManyRequests", attempt
            assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 429
            # The injected answer never reached moto.
            assert s3(moto_url).list_objects_v2(Bucket=bucket)["KeyCount"] == 0
            client.list_objects_v2(Bucket=bucket)  # a GET passes meanwhile
        client.put_object(Bucket=bucket, Key="k", Body=b"payload" * 1000)
        assert proxy.counts == {"PUT": 3, "GET": 2}
    assert s3(moto_url).get_object(Bucket=bucket, Key="k")["ContentLength"] == 7000


def test_seeded_random_faults_repeat_and_botocore_retries_through_them(moto_url, bucket):
    s3(moto_url).put_object(Bucket=bucket, Key="small", Body=b"abc")

    def pattern(seed: int) -> list[bool]:
        with Proxy(moto_url, faults=FaultPlan.random(0.3, seed=seed, method="HEAD")) as proxy:
            client = s3(proxy.url)
            failed = []
            for _ in range(40):
                try:
                    client.head_object(Bucket=bucket, Key="small")
                    failed.append(False)
                except ClientError as err:
                    assert err.response["ResponseMetadata"]["HTTPStatusCode"] == 503
                    failed.append(True)
            return failed

    first, again, other = pattern(7), pattern(7), pattern(8)
    assert first == again
    assert first != other
    assert 4 <= sum(first) <= 20

    # With retries on, a client sees no error: the proxy is a test bed for retry logic.
    with Proxy(moto_url, faults=FaultPlan.every(2)) as proxy:
        client = s3(proxy.url, attempts=3)
        for _ in range(3):
            assert client.get_object(Bucket=bucket, Key="small")["Body"].read() == b"abc"
        # ok; 503 then ok on retry; 503 then ok on retry.
        assert proxy.counts == {"GET": 5} and proxy.injected == {"503 SlowDown": 2}


def test_json_apis_get_a_json_throttling_error(moto_url):
    # AWS Batch speaks JSON; its throttling error is 429 TooManyRequestsException.
    plan = FaultPlan(throttle=[FaultRule(first=1, status=429, code="TooManyRequestsException")])
    with Proxy(moto_url, faults=plan) as proxy:
        batch = boto3.client(
            "batch",
            endpoint_url=proxy.url,
            region_name="us-east-1",
            config=Config(retries={"total_max_attempts": 1}),
        )
        with pytest.raises(ClientError) as err:
            batch.describe_job_queues()
        assert err.value.response["Error"]["Code"] == "TooManyRequestsException"
        assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 429
        assert batch.describe_job_queues()["jobQueues"] == []
        assert proxy.counts == {"POST": 2}


def test_corrupted_download_keeps_length_and_fails_checksums(moto_url, bucket):
    data = os.urandom(300_000)
    etag = s3(moto_url).put_object(Bucket=bucket, Key="data.nc", Body=data)["ETag"].strip('"')
    plan = FaultPlan(corrupt=[FaultRule(first=1, path="/data\\.nc")])
    with Proxy(moto_url, faults=plan) as proxy:
        client = s3(proxy.url)
        # Not the chosen key: untouched, and the rule's count is not used up.
        client.put_object(Bucket=bucket, Key="other", Body=b"zz")
        assert client.get_object(Bucket=bucket, Key="other")["Body"].read() == b"zz"

        response = client.get_object(Bucket=bucket, Key="data.nc", ChecksumMode="DISABLED")
        body = response["Body"].read()
        assert len(body) == len(data)
        flipped = [i for i in range(len(data)) if body[i] != data[i]]
        assert flipped == [len(data) // 2]
        assert hashlib.md5(body).hexdigest() != etag

        # The rule hit once; the next download is intact.
        again = client.get_object(Bucket=bucket, Key="data.nc")["Body"].read()
        assert hashlib.md5(again).hexdigest() == etag
        assert proxy.injected == {"corrupted": 1}

    # boto3's own response checksum (CRC32, stored by moto at upload) catches it too.
    plan = FaultPlan(corrupt=[FaultRule(every=1)])
    with Proxy(moto_url, faults=plan) as proxy:
        response = s3(proxy.url).get_object(Bucket=bucket, Key="data.nc", ChecksumMode="ENABLED")
        with pytest.raises(FlexibleChecksumError):
            response["Body"].read()


def test_large_multipart_upload_and_download_pass_intact(moto_url, bucket, tmp_path):
    size, part = 26 * 1024 * 1024 + 12345, 8 * 1024 * 1024
    data = os.urandom(size)
    transfer = TransferConfig(multipart_threshold=part, multipart_chunksize=part, max_concurrency=4)
    with Proxy(moto_url, latency=0.01) as proxy:
        client = s3(proxy.url)
        client.upload_fileobj(io.BytesIO(data), bucket, "big.bin", Config=transfer)
        counts_after_upload = proxy.counts
        target = tmp_path / "big.bin"
        client.download_file(bucket, "big.bin", str(target), Config=transfer)
    assert counts_after_upload == {"POST": 2, "PUT": 4}  # create, 4 parts, complete
    assert hashlib.sha256(target.read_bytes()).hexdigest() == hashlib.sha256(data).hexdigest()
    head = s3(moto_url).head_object(Bucket=bucket, Key="big.bin")
    assert head["ContentLength"] == size and head["ETag"].strip('"').endswith("-4")


class _ChunkedOrigin(BaseHTTPRequestHandler):
    """Answers GET with a chunked body produced slowly; echoes request bodies on PUT."""

    protocol_version = "HTTP/1.1"
    release = threading.Event()

    def log_message(self, format, *args):
        pass

    def do_GET(self):
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.write(b"5\r\nfirst\r\n")
        self.wfile.flush()
        # The second chunk waits until the client has seen the first: streaming, not buffering.
        self.release.wait(10)
        self.wfile.write(b"6\r\nsecond\r\n0\r\n\r\n")

    def do_POST(self):
        # Answers, then drops the connection without announcing it, like an idle timeout.
        self.send_response(200)
        self.send_header("Content-Length", "4")
        self.end_headers()
        self.wfile.write(b"done")
        self.close_connection = True

    def do_PUT(self):
        received = {
            "te": self.headers.get("Transfer-Encoding", ""),
            "length": self.headers.get("Content-Length", ""),
            "host": self.headers.get("Host", ""),
        }
        body = b""
        if "chunked" in received["te"]:
            while (size := int(self.rfile.readline().strip(), 16)) > 0:
                body += self.rfile.read(size)
                self.rfile.readline()
            self.rfile.readline()
        else:
            body = self.rfile.read(int(received["length"] or 0))
        answer = repr(received).encode() + b"|" + body
        self.send_response(200)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)


@pytest.fixture
def chunked_origin():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ChunkedOrigin)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    _ChunkedOrigin.release.clear()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    _ChunkedOrigin.release.set()
    server.shutdown()
    server.server_close()
    thread.join()


def test_chunked_bodies_stream_both_ways(chunked_origin):
    with Proxy(chunked_origin) as proxy:
        parts = urlsplit(proxy.url)
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
        conn.request("GET", "/stream")
        response = conn.getresponse()
        assert response.chunked
        assert response.read1(5) == b"first"  # arrives before the origin finished
        _ChunkedOrigin.release.set()
        assert response.read() == b"second"

        # Same connection (keep-alive), a chunked upload, re-framed as chunked upstream.
        pieces = [b"alpha-", b"beta-", b"gamma"]
        conn.request("PUT", "/upload", body=iter(pieces), encode_chunked=True)
        answer = conn.getresponse().read()
        conn.close()
        assert proxy.connections == 1
    received, body = answer.split(b"|", 1)
    assert body == b"alpha-beta-gamma"
    assert b"'te': 'chunked'" in received
    assert f"'host': '{parts.netloc}'".encode() in received  # Host passed unchanged


def test_upstream_connection_closed_by_the_server_is_replaced(chunked_origin):
    _ChunkedOrigin.release.set()
    with Proxy(chunked_origin) as proxy:
        parts = urlsplit(proxy.url)
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
        answers = []
        for _ in range(3):
            conn.request("POST", "/x", body=b"")
            answers.append(conn.getresponse().read())
            time.sleep(0.05)  # let the origin's close arrive before the next request
        conn.request("GET", "/stream")
        answers.append(conn.getresponse().read())
        conn.close()
        assert proxy.connections == 1
    assert answers == [b"done"] * 3 + [b"firstsecond"]


def test_unreachable_target_gives_502_naming_it():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}"
    with Proxy(dead) as proxy:
        parts = urlsplit(proxy.url)
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5)
        conn.request("GET", "/bucket/key")
        response = conn.getresponse()
        text = response.read().decode()
    assert response.status == 502
    assert dead in text and "GET /bucket/key" in text


def test_rejects_bad_arguments_with_a_reason():
    with pytest.raises(ValueError, match="exactly one of"):
        FaultRule(every=2, first=3)
    with pytest.raises(ValueError, match="exactly one of"):
        FaultRule()
    with pytest.raises(ValueError, match="pass code"):
        FaultRule(every=1, status=500)
    with pytest.raises(ValueError, match="not an http"):
        Proxy("127.0.0.1:5000")
    with pytest.raises(ValueError, match="latency"):
        Proxy("http://127.0.0.1:5000", latency=-1)


def test_command_line_prints_its_url_and_forwards(moto_url, bucket):
    command = [
        sys.executable,
        "-m",
        "confluence.emulator.proxy",
        "--target",
        moto_url,
        "--latency",
        "0.001",
        "--fail-first",
        "1",
    ]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), url
        client = s3(url)
        with pytest.raises(ClientError, match="SlowDown"):
            client.list_objects_v2(Bucket=bucket)
        assert client.list_objects_v2(Bucket=bucket)["KeyCount"] == 0
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert '"GET": 2' in err
