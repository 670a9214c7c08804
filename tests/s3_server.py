"""A real S3 endpoint for tests: moto's threaded server on 127.0.0.1, on a free port.

    with S3Server() as server:          # sets the AWS_* environment, restores it on exit
        client = server.client()
        client.create_bucket(Bucket="b")
        ...                             # anything using boto3 reaches the server too

The environment points every boto3 client (and the aws CLI, and subprocesses started inside
the block) at the server through ``AWS_ENDPOINT_URL``, with fake credentials and no config
files, so a test can never reach a real AWS account.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import urllib.request

import boto3
from botocore.config import Config
from moto.server import ThreadedMotoServer

REGION = "us-east-1"


def fake_aws_environment(endpoint_url: str) -> dict[str, str]:
    """Variables that send boto3 to ``endpoint_url`` with credentials that open nothing real."""
    return {
        "AWS_ENDPOINT_URL": endpoint_url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
        "AWS_EC2_METADATA_DISABLED": "true",
    }


class S3Server:
    """moto's S3 on 127.0.0.1 (never 0.0.0.0), started on entry and stopped on exit."""

    def __init__(self) -> None:
        self._server: ThreadedMotoServer | None = None
        self._saved_env: dict[str, str | None] = {}
        self._session = None
        self.url = ""

    def start(self) -> S3Server:
        # werkzeug logs every request to stderr; tests want their own output only.
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        # Port 0: the kernel picks a free port, so parallel test runs cannot collide.
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.url = f"http://{host}:{port}"
        environment = fake_aws_environment(self.url)
        self._saved_env = {name: os.environ.get(name) for name in environment}
        os.environ.update(environment)
        # Ready means answering HTTP, not only listening.
        with urllib.request.urlopen(f"{self.url}/moto-api/config", timeout=10) as answer:
            answer.read()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None
        for name, value in self._saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        self._saved_env = {}

    def client(self, endpoint_url: str | None = None):
        """A plain S3 client on the server (or on ``endpoint_url``, e.g. a proxy in front)."""
        if self._session is None:
            self._session = boto3.session.Session()
        return self._session.client(
            "s3",
            endpoint_url=endpoint_url or self.url,
            region_name=REGION,
            config=Config(retries={"mode": "standard", "max_attempts": 3}),
        )

    def seed(self, bucket: str, objects: dict[str, bytes]) -> None:
        """Store objects straight into the running server's state, in this process.

        moto answers about 100 requests a second, so a listing test that needs more than a
        page (1,000 keys) would spend seconds on PUTs alone. The objects are real server
        state (listed, read and compared over HTTP like any other, with ETag = MD5), only
        not sent over HTTP. The bucket must exist.
        """
        from moto.core import DEFAULT_ACCOUNT_ID
        from moto.s3.models import s3_backends

        backend = s3_backends[os.environ.get("MOTO_ACCOUNT_ID", DEFAULT_ACCOUNT_ID)]["aws"]
        for key, body in objects.items():
            backend.put_object(bucket, key, body)

    def seed_encrypted(self, bucket: str, key: str, body: bytes, checksum: bool = True) -> str:
        """Store an object the way real S3 stores one under SSE-KMS: its ETag is not the
        MD5 of its bytes; with ``checksum``, it has a stored SHA-256 checksum. (moto keeps
        the MD5 as the ETag of SSE-KMS objects, so this state cannot be reached over HTTP.)
        Returns the ETag."""
        from moto.core import DEFAULT_ACCOUNT_ID
        from moto.s3.models import s3_backends

        backend = s3_backends[os.environ.get("MOTO_ACCOUNT_ID", DEFAULT_ACCOUNT_ID)]["aws"]
        etag = hashlib.md5(b"not the content: " + body).hexdigest()
        value = base64.b64encode(hashlib.sha256(body).digest()).decode() if checksum else None
        stored = backend.put_object(
            bucket, key, body, etag=etag, encryption="aws:kms", checksum_value=value
        )
        stored.checksum_algorithm = "SHA256" if checksum else None
        return etag

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
