"""PutObject of small files without botocore's per-request machinery.

botocore spends 1.5 to 2 ms of CPU on each PutObject (parameter validation, endpoint rules,
a dozen event hooks, header dictionaries, signing, urllib3), more than it takes to read,
hash and send a small file; on thousands of small files that CPU time bounds a sync, as
the GIL lets only one thread run it at a time. A PutObject of bytes already in memory needs
little of it: :class:`DirectPut` signs the request itself (AWS Signature Version 4 with an
unsigned payload and a CRC-32 checksum header that S3 checks before storing anything, as
botocore sends it) and sends it on a keep-alive connection of its own, for about a third
of the CPU time.

It only repeats what botocore has done once: the first small upload to a bucket goes
through botocore, and its request (endpoint, addressing style, signing region, access key)
is the template for the next ones. Anything unusual stays with botocore: a proxy, a client
certificate, TLS verification turned off, a request header this module does not know, a
signature other than SigV4. Any answer but 200 and any connection error send that upload
again through botocore, which handles redirects, clock skew, errors and retries; after
three such fall-backs in a row the bucket stays with botocore for the rest of the sync.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import http.client
import os
import re
import socket
import ssl
import threading
import time
import zlib
from dataclasses import dataclass
from urllib.parse import urlsplit

from botocore.httpsession import get_cert_path
from botocore.utils import get_environ_proxies, percent_encode

UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
# Headers botocore may put on a PutObject of bytes, none of which changes what S3 does
# with the object; a template request with any other header stays with botocore.
KNOWN_HEADERS = frozenset(
    {
        "amz-sdk-invocation-id",
        "amz-sdk-request",
        "authorization",
        "content-encoding",
        "content-length",
        "content-md5",
        "expect",
        "transfer-encoding",
        "user-agent",
        "x-amz-checksum-crc32",
        "x-amz-content-sha256",
        "x-amz-date",
        "x-amz-decoded-content-length",
        "x-amz-sdk-checksum-algorithm",
        "x-amz-security-token",
        "x-amz-trailer",
    }
)
_CREDENTIAL = re.compile(
    r"^AWS4-HMAC-SHA256 Credential=([^/,]+)/(\d{8})/([^/,]+)/([^/,]+)/aws4_request,"
)
MAX_STRIKES = 3  # fall-backs in a row after which a bucket stays with botocore


@dataclass(frozen=True)
class Template:
    """Where and how a bucket's PutObject requests go, as botocore sent one."""

    scheme: str
    hostname: str
    port: int
    host: str  # the Host header (and signed host): the port only when not the default
    path_prefix: str  # before the percent-encoded key: "/bucket/" or "/"
    region: str
    service: str
    access_key: str

    def path(self, key: str) -> str:
        return self.path_prefix + percent_encode(key, safe="/~")


def host_header(url: str) -> str:
    """The Host botocore signs for ``url``: hostname, with the port unless the default."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.port is not None and parts.port != {"http": 80, "https": 443}.get(parts.scheme):
        host = f"{host}:{parts.port}"
    return host


def template_from_request(url: str, headers, key: str) -> Template | None:
    """The template of a PutObject request botocore prepared for ``key``; None when it has
    anything this module would not reproduce exactly."""
    names = {str(name).lower() for name in headers.keys()}
    if not names <= KNOWN_HEADERS:
        return None
    authorization = headers.get("Authorization")
    if isinstance(authorization, bytes):
        authorization = authorization.decode("latin-1")
    match = _CREDENTIAL.match(authorization or "")
    if match is None:
        return None
    access_key, _, region, service = match.groups()
    parts = urlsplit(url)
    encoded = percent_encode(key, safe="/~")
    if parts.scheme not in ("http", "https") or parts.query or not parts.hostname:
        return None
    if not parts.path.endswith(encoded):
        return None
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return Template(
        parts.scheme,
        parts.hostname,
        port,
        host_header(url),
        parts.path[: len(parts.path) - len(encoded)],
        region,
        service,
        access_key,
    )


@functools.lru_cache(maxsize=16)
def signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    key = hmac.new(f"AWS4{secret}".encode(), date.encode(), hashlib.sha256).digest()
    for part in (region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def authorization(
    method: str,
    path: str,
    headers: dict[str, str],
    *,
    access_key: str,
    secret_key: str,
    region: str,
    service: str,
    amz_date: str,
) -> str:
    """The SigV4 Authorization header for a request without query string whose payload is
    not signed. ``path`` is the URI path as sent (S3 does not normalize it); every header in
    ``headers`` (lower-case names, host included) is signed."""
    names = sorted(headers)
    canonical = "\n".join(
        (
            method,
            path,
            "",
            "".join(f"{name}:{' '.join(headers[name].split())}\n" for name in names),
            ";".join(names),
            UNSIGNED_PAYLOAD,
        )
    )
    scope = f"{amz_date[:8]}/{region}/{service}/aws4_request"
    to_sign = "\n".join(
        ("AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest())
    )
    key = signing_key(secret_key, amz_date[:8], region, service)
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    return (
        f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, "
        f"SignedHeaders={';'.join(names)}, Signature={signature}"
    )


class DirectPut:
    """Sends small PutObject requests itself once botocore has sent one (see the module doc).

    :meth:`put` returns S3's answer, keyed as botocore's parsed PutObject answer, or None
    when the caller must use :meth:`through_botocore` instead, which also learns the
    template. ``direct`` and ``fallbacks`` count the uploads each way went.
    """

    def __init__(self, client, credentials, verify, user_agent: str, timeouts=(10, 120)):
        self._client = client
        self._credentials = credentials
        self._verify = verify
        self._user_agent = user_agent
        self._connect_timeout, self._read_timeout = timeouts
        self._templates: dict[str, Template | None] = {}  # None: this bucket stays with botocore
        self._strikes: dict[str, int] = {}
        self._lock = threading.Lock()
        self._local = threading.local()
        self._connections: list[http.client.HTTPConnection] = []
        self._ssl: ssl.SSLContext | None = None
        self.direct = 0
        self.fallbacks = 0
        client.meta.events.register("before-send.s3.PutObject", self._learn)

    @classmethod
    def for_client(cls, client, credentials, user_agent: str) -> DirectPut | None:
        """A DirectPut for ``client``, or None when its setup is one this module does not
        reproduce (a client certificate, a proxy, unverified TLS, no credentials)."""
        session = getattr(getattr(client, "_endpoint", None), "http_session", None)
        # botocore's private attributes: without them, leave every request to botocore.
        if session is None or not hasattr(session, "_verify"):
            return None
        verify = session._verify
        if verify is False or client.meta.config.client_cert or os.path.isdir(str(verify)):
            return None
        proxies = getattr(session, "_proxy_config", None)
        url = client.meta.endpoint_url
        if proxies is None or proxies.proxy_url_for(url) or get_environ_proxies(url):
            return None
        if credentials is None:
            return None
        config = client.meta.config
        timeouts = (config.connect_timeout, config.read_timeout)
        return cls(client, credentials, verify, user_agent, timeouts)

    # -- learning ---------------------------------------------------------------------------

    def through_botocore(self, bucket: str, key: str, body: bytes) -> dict:
        """PutObject through botocore (its parsed answer), learning the bucket's template."""
        self._local.target = (bucket, key)
        try:
            return self._client.put_object(Bucket=bucket, Key=key, Body=body)
        finally:
            self._local.target = None

    def _learn(self, request, **_) -> None:
        target = getattr(self._local, "target", None)
        if target is None:
            return
        bucket, key = target
        with self._lock:
            if bucket in self._templates:
                return
        template = template_from_request(request.url, request.headers, key)
        if template is not None:
            frozen = self._credentials.get_frozen_credentials()
            url = f"{template.scheme}://{template.host}/"
            if frozen.access_key != template.access_key or get_environ_proxies(url):
                template = None
        with self._lock:
            self._templates.setdefault(bucket, template)

    # -- sending ----------------------------------------------------------------------------

    def put(self, bucket: str, key: str, body: bytes) -> dict | None:
        with self._lock:
            template = self._templates.get(bucket)
        if template is None:
            return None
        frozen = self._credentials.get_frozen_credentials()
        path = template.path(key)
        crc = base64.b64encode(zlib.crc32(body).to_bytes(4, "big")).decode()
        amz_date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        signed = {
            "host": template.host,
            "x-amz-checksum-crc32": crc,
            "x-amz-content-sha256": UNSIGNED_PAYLOAD,
            "x-amz-date": amz_date,
        }
        if frozen.token:
            signed["x-amz-security-token"] = frozen.token
        signed["authorization"] = authorization(
            "PUT",
            path,
            signed,
            access_key=frozen.access_key,
            secret_key=frozen.secret_key,
            region=template.region,
            service=template.service,
            amz_date=amz_date,
        )
        signed["user-agent"] = self._user_agent
        signed["content-length"] = str(len(body))
        answer = self._send(template, path, signed, body)
        with self._lock:
            if answer is None:
                self.fallbacks += 1
                self._strikes[bucket] = strikes = self._strikes.get(bucket, 0) + 1
                if strikes >= MAX_STRIKES:
                    self._templates[bucket] = None
            else:
                self.direct += 1
                self._strikes[bucket] = 0
        return answer

    def _send(self, template: Template, path: str, headers: dict, body: bytes) -> dict | None:
        for attempt in range(2):
            try:
                conn, reused = self._connection(template)
            except (OSError, ValueError):  # refused, DNS, TLS, CA bundle: botocore's turn
                return None
            try:
                conn.request("PUT", path, body=body, headers=headers)
                response = conn.getresponse()
                response.read()
            except (OSError, http.client.HTTPException):
                conn.close()
                if reused and attempt == 0:
                    continue  # the server closed an idle keep-alive connection: once more
                return None
            if response.will_close:
                conn.close()
            if response.status != 200:
                return None
            # The keys of botocore's parsed PutObject answer, so one reader serves both.
            return {
                "ETag": response.getheader("ETag"),
                "ServerSideEncryption": response.getheader("x-amz-server-side-encryption"),
                "ChecksumCRC32": response.getheader("x-amz-checksum-crc32"),
            }
        return None

    def _connection(self, template: Template) -> tuple[http.client.HTTPConnection, bool]:
        """This thread's connection to the template's server, and whether it was used before."""
        pool = getattr(self._local, "connections", None)
        if pool is None:
            pool = self._local.connections = {}
        where = (template.scheme, template.hostname, template.port)
        conn = pool.get(where)
        if conn is not None and conn.sock is not None:
            return conn, True
        if conn is None:
            if template.scheme == "https":
                conn = http.client.HTTPSConnection(
                    template.hostname, template.port, context=self._ssl_context()
                )
            else:
                conn = http.client.HTTPConnection(template.hostname, template.port)
            pool[where] = conn
            with self._lock:
                self._connections.append(conn)
        conn.timeout = self._connect_timeout
        conn.connect()
        conn.sock.settimeout(self._read_timeout)
        # Headers and body go out in two writes: without this, Nagle's algorithm holds the
        # body back until the headers are acknowledged (up to 40 ms with delayed ACKs).
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn, False

    def _ssl_context(self) -> ssl.SSLContext:
        with self._lock:
            if self._ssl is None:
                # The CA bundle botocore verifies with (AWS_CA_BUNDLE, config or its default).
                self._ssl = ssl.create_default_context(cafile=get_cert_path(self._verify))
            return self._ssl

    def close(self) -> None:
        with self._lock:
            connections, self._connections = self._connections, []
        for conn in connections:
            conn.close()
