"""A loopback HTTP reverse proxy that makes an emulated endpoint behave more like real S3.

moto answers in a few milliseconds, so on plain loopback a client's concurrency and per-file
overhead hardly show. Put this proxy in front of it and every request waits ``latency``
seconds first, as it would on the way to a real S3 region; requests are counted by method;
a :class:`FaultPlan` answers chosen requests with S3's throttling errors (503 SlowDown, 429
TooManyRequests) or flips one byte in chosen download bodies, so retries and checksum checks
can be tested against a real server.

    with Proxy("http://127.0.0.1:5000", latency=0.02) as proxy:
        client = boto3.client("s3", endpoint_url=proxy.url)
        ...
        proxy.counts  # {"PUT": 12, "GET": 3}

The proxy binds 127.0.0.1 on a free port, serves each client connection in its own thread
(keep-alive, chunked transfer encoding and streaming in both directions), keeps one upstream
connection per client connection, and forwards the request line and headers unchanged (the
Host header too, so a server that checks SigV4 signatures still accepts them). It stops on
leaving the ``with`` block, on :meth:`Proxy.stop`, or at interpreter exit.

Command line, for manual use (prints the URL, runs until interrupted):

    python -m confluence.emulator.proxy --target http://127.0.0.1:5000 --latency 0.02
"""

from __future__ import annotations

import argparse
import atexit
import http.client
import json
import random
import re
import signal
import socket
import sys
import threading
import time
import uuid
import weakref
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

BLOCK = 256 * 1024

# Connection-level headers (RFC 9110 section 7.6.1) apply to one hop only. Expect is handled
# here: the proxy answers 100 Continue itself and then streams the body upstream.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "expect",
    }
)

DEFAULT_CODES = {503: "SlowDown", 429: "TooManyRequests"}
MESSAGES = {
    "SlowDown": "Please reduce your request rate.",
    "TooManyRequests": "Too many requests, please slow down.",
}


@dataclass
class FaultRule:
    """Which requests a fault applies to, and (for throttling) how to answer them.

    Exactly one of ``every`` (the Nth, 2Nth, ... matching request), ``first`` (the first K
    matching requests) or ``probability`` (each matching request independently, drawn from a
    generator seeded with ``seed``) selects requests. ``method`` (e.g. "PUT") and ``path`` (a
    regular expression searched in the request target, path and query) narrow what matches.
    ``status`` and ``code`` make the error answer: 503 defaults to SlowDown, 429 to
    TooManyRequests; other statuses need a ``code``.

    Under concurrent clients the order in which requests reach a rule is not fixed, so which
    request is hit can vary, but how many are hit (every/first) does not.
    """

    every: int = 0
    first: int = 0
    probability: float = 0.0
    method: str | None = None
    path: str | None = None
    status: int = 503
    code: str | None = None
    seed: int = 0
    _matched: int = field(default=0, init=False, repr=False)
    _random: random.Random = field(init=False, repr=False)
    _pattern: re.Pattern | None = field(init=False, repr=False)

    def __post_init__(self) -> None:
        chosen = [name for name in ("every", "first", "probability") if getattr(self, name)]
        if len(chosen) != 1:
            raise ValueError(
                "FaultRule: set exactly one of every=N, first=K, probability=P "
                f"(got {', '.join(chosen) or 'none'})"
            )
        if self.every < 0 or self.first < 0:
            raise ValueError(f"FaultRule: every and first must be positive (got {self})")
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"FaultRule: probability must be in [0, 1], got {self.probability}")
        if self.code is None:
            if self.status not in DEFAULT_CODES:
                raise ValueError(
                    f"FaultRule: status {self.status} has no default error code; pass code=..."
                )
            self.code = DEFAULT_CODES[self.status]
        self.method = self.method.upper() if self.method else None
        self._random = random.Random(self.seed)
        self._pattern = re.compile(self.path) if self.path else None

    def hits(self, method: str, target: str) -> bool:
        """Whether this request is one of the chosen ones (advances the rule's state)."""
        if self.method is not None and method != self.method:
            return False
        if self._pattern is not None and not self._pattern.search(target):
            return False
        self._matched += 1
        if self.every:
            return self._matched % self.every == 0
        if self.first:
            return self._matched <= self.first
        return self._random.random() < self.probability


class FaultPlan:
    """Throttling answers and corrupted downloads to inject, each chosen by :class:`FaultRule`.

    ``throttle`` rules are tried in order on every request; the first that hits answers it
    with its error instead of forwarding it (later rules do not see that request).
    ``corrupt`` rules see only GET responses with a body and status 200 or 206; a hit flips
    one byte of the body (the middle byte when the length is known, else the first), keeping
    its length, so only a checksum can tell.
    """

    def __init__(self, throttle=(), corrupt=()) -> None:
        self.throttle: list[FaultRule] = list(throttle)
        self.corrupt: list[FaultRule] = list(corrupt)
        self._lock = threading.Lock()
        self.injected: Counter[str] = Counter()

    @classmethod
    def every(cls, n: int, *, method: str | None = None, status: int = 503) -> FaultPlan:
        """Throttle every Nth request (of ``method``, if given)."""
        return cls(throttle=[FaultRule(every=n, method=method, status=status)])

    @classmethod
    def first(cls, k: int, *, method: str | None = None, status: int = 503) -> FaultPlan:
        """Throttle the first K requests (of ``method``, if given)."""
        return cls(throttle=[FaultRule(first=k, method=method, status=status)])

    @classmethod
    def random(
        cls, probability: float, *, seed: int = 0, method: str | None = None, status: int = 503
    ) -> FaultPlan:
        """Throttle each request with ``probability``, drawn from a generator seeded ``seed``."""
        rule = FaultRule(probability=probability, seed=seed, method=method, status=status)
        return cls(throttle=[rule])

    def throttle_rule(self, method: str, target: str) -> FaultRule | None:
        with self._lock:
            for rule in self.throttle:
                if rule.hits(method, target):
                    self.injected[f"{rule.status} {rule.code}"] += 1
                    return rule
        return None

    def corrupts(self, method: str, target: str) -> bool:
        with self._lock:
            for rule in self.corrupt:
                if rule.hits(method, target):
                    self.injected["corrupted"] += 1
                    return True
        return False


def error_body(rule: FaultRule, content_type: str, resource: str) -> tuple[bytes, str]:
    """The error document S3 (XML) or a JSON API (Batch) would send, and its content type."""
    request_id = uuid.uuid4().hex[:16].upper()
    message = MESSAGES.get(rule.code, f"{rule.code} (injected by the test proxy)")
    if "json" in content_type:
        doc = {"__type": rule.code, "message": message}
        return json.dumps(doc).encode(), "application/json"
    xml = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{rule.code}</Code><Message>{message}</Message>"
        f"<Resource>{_xml_escape(resource)}</Resource><RequestId>{request_id}</RequestId>"
        f"<HostId>{request_id}</HostId></Error>"
    )
    return xml.encode(), "application/xml"


def _xml_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and bodies go out in separate writes; without this, Nagle's algorithm and
    # delayed ACKs add tens of milliseconds to small responses and spoil the latency figures.
    disable_nagle_algorithm = True
    server: _ProxyServer

    def setup(self) -> None:
        super().setup()
        self.upstream: http.client.HTTPConnection | None = None

    def finish(self) -> None:
        self._drop_upstream()
        try:
            super().finish()
        except OSError:
            pass  # the client or stop() already closed the socket

    def log_message(self, format, *args) -> None:
        pass  # a benchmark sends tens of thousands of requests: no access log

    def handle_one_request(self) -> None:
        # The base class dispatches to do_<METHOD>; a proxy forwards any method instead.
        try:
            self.raw_requestline = self.rfile.readline(65537)
        except OSError:
            self.close_connection = True
            return
        if len(self.raw_requestline) > 65536:
            self.send_error(414)
            return
        if not self.raw_requestline:
            self.close_connection = True
            return
        if not self.parse_request():
            return
        try:
            self.relay()
            self.wfile.flush()
        except OSError:
            # The client went away (or stop() closed its socket) mid-request.
            self.close_connection = True
            self._drop_upstream()

    # -- request side -----------------------------------------------------------------------

    def relay(self) -> None:
        method, target = self.command, self._origin_form(self.path)
        self.server.count(method)
        if self.server.latency > 0:
            time.sleep(self.server.latency)
        plan = self.server.faults
        rule = plan.throttle_rule(method, target) if plan else None
        if rule is not None:
            for _ in self._request_body():
                pass  # read and drop the body so the connection stays usable
            body, content_type = error_body(rule, self.headers.get("Content-Type", ""), target)
            self._send_simple(rule.status, body, content_type)
            return
        try:
            response = self._forward(method, target)
        except (OSError, http.client.HTTPException) as err:
            self._drop_upstream()
            message = (
                f"proxy: forwarding {method} {target} to {self.server.target_url} failed: "
                f"{type(err).__name__}: {err}; is the target server running?"
            )
            # The request body may be half read: answer, say so, and close.
            self.close_connection = True
            self._send_simple(502, message.encode(), "text/plain")
            return
        self._relay_response(method, target, response)

    def _origin_form(self, target: str) -> str:
        # A client configured to use this as a forward proxy sends absolute URIs.
        if target.startswith(("http://", "https://")):
            parts = urlsplit(target)
            target = parts.path + (f"?{parts.query}" if parts.query else "")
        return self.server.base_path + (target or "/")

    def _request_body(self):
        """The request body, in blocks, undoing chunked framing; empty if there is none."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            yield from self._dechunk()
            return
        remaining = int(self.headers.get("Content-Length") or 0)
        while remaining > 0:
            block = self.rfile.read(min(BLOCK, remaining))
            if not block:
                raise ConnectionError("client closed the connection inside a request body")
            remaining -= len(block)
            yield block

    def _dechunk(self):
        while True:
            size_line = self.rfile.readline(1024)
            if not size_line:
                raise ConnectionError("client closed the connection inside a chunked body")
            try:
                size = int(size_line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise ConnectionError(f"bad chunk size line {size_line[:40]!r}") from None
            if size == 0:
                break
            remaining = size
            while remaining > 0:
                block = self.rfile.read(min(BLOCK, remaining))
                if not block:
                    raise ConnectionError("client closed the connection inside a chunk")
                remaining -= len(block)
                yield block
            self.rfile.readline(16)  # the CRLF after the chunk data
        self.trailers = []
        while True:
            line = self.rfile.readline(65537)
            if line in (b"\r\n", b"\n", b""):
                break
            self.trailers.append(line)

    def _connection(self) -> http.client.HTTPConnection:
        if self.upstream is not None and self.upstream.sock is not None and self._upstream_closed():
            self._drop_upstream()
        if self.upstream is None or self.upstream.sock is None:
            self.upstream = self.server.connect()
        return self.upstream

    def _upstream_closed(self) -> bool:
        # An idle keep-alive connection with something to read has been closed by the server
        # (a non-blocking peek: select() fails on descriptors above 1024 under many clients).
        sock = self.upstream.sock
        sock.settimeout(0)  # with a timeout, Python polls before recv and would wait for data
        try:
            sock.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            return False
        except OSError:
            return True
        finally:
            sock.settimeout(self.server.upstream_timeout)
        return True  # end of file, or stray bytes: either way the connection is not reusable

    def _forward(self, method: str, target: str) -> http.client.HTTPResponse:
        conn = self._connection()
        chunked = "chunked" in self.headers.get("Transfer-Encoding", "").lower()
        dropped = self._connection_tokens() | ({"content-length"} if chunked else set())
        conn.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
        if "Host" not in self.headers:
            conn.putheader("Host", self.server.target_host)
        for name, value in self.headers.items():
            if name.lower() not in dropped:
                conn.putheader(name, value)
        if chunked:
            conn.putheader("Transfer-Encoding", "chunked")
        conn.endheaders()
        self.trailers = []
        for block in self._request_body():
            conn.send(b"%x\r\n%s\r\n" % (len(block), block) if chunked else block)
        if chunked:
            conn.send(b"0\r\n" + b"".join(self.trailers) + b"\r\n")
        return conn.getresponse()

    def _connection_tokens(self) -> set[str]:
        named = self.headers.get("Connection", "")
        return HOP_BY_HOP | {token.strip().lower() for token in named.split(",") if token}

    # -- response side ----------------------------------------------------------------------

    def _relay_response(self, method: str, target: str, response) -> None:
        has_body = method != "HEAD" and response.status not in (204, 304) and response.status >= 200
        length = response.getheader("Content-Length")
        framed_by_length = length is not None and not response.chunked
        chunk_out = has_body and not framed_by_length and self.request_version == "HTTP/1.1"
        if has_body and not framed_by_length and not chunk_out:
            self.close_connection = True  # an HTTP/1.0 client reads until the connection closes
        flip_at = -1
        plan = self.server.faults
        if (
            plan is not None
            and has_body
            and method == "GET"
            and response.status in (200, 206)
            and plan.corrupts(method, target)
        ):
            flip_at = int(length) // 2 if framed_by_length else 0

        self.send_response_only(response.status, response.reason)
        dropped = HOP_BY_HOP | {
            t.strip().lower() for t in (response.getheader("Connection") or "").split(",") if t
        }
        for name, value in response.getheaders():
            if name.lower() not in dropped:
                self.send_header(name, value)
        if chunk_out:
            self.send_header("Transfer-Encoding", "chunked")
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()

        offset = 0
        while has_body:
            block = response.read1(BLOCK)
            if not block:
                break
            if offset <= flip_at < offset + len(block):
                block = bytearray(block)
                block[flip_at - offset] ^= 0xFF
                block = bytes(block)
            offset += len(block)
            self.wfile.write(b"%x\r\n%s\r\n" % (len(block), block) if chunk_out else block)
        if chunk_out:
            self.wfile.write(b"0\r\n\r\n")
        response.close()  # keeps the upstream socket, frees the connection for the next request
        if response.will_close:
            self._drop_upstream()

    def _send_simple(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response_only(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Date", self.date_time_string())
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":  # a HEAD answer has headers only, or the next one breaks
            self.wfile.write(body)

    def _drop_upstream(self) -> None:
        if self.upstream is not None:
            self.upstream.close()
            self.upstream = None


class _ProxyServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # stop() closes client sockets and joins the threads itself
    # The default backlog of 5 drops SYNs when many clients connect at once, and each dropped
    # one costs the client a 1 s retransmission: fatal to latency figures.
    request_queue_size = 1024

    def __init__(self, target_url: str, latency: float, faults: FaultPlan | None, timeout: float):
        parts = urlsplit(target_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                f"Proxy: target {target_url!r} is not an http(s)://host[:port] URL "
                "(e.g. http://127.0.0.1:5000)"
            )
        if latency < 0:
            raise ValueError(f"Proxy: latency must be >= 0 seconds, got {latency}")
        self.target_url = target_url
        self.target_scheme = parts.scheme
        self.target_hostname = parts.hostname
        self.target_port = parts.port or (443 if parts.scheme == "https" else 80)
        self.target_host = parts.netloc
        self.base_path = parts.path.rstrip("/")
        self.latency = latency
        self.faults = faults
        self.upstream_timeout = timeout
        self.stopping = False
        self.counts: Counter[str] = Counter()
        self.connections = 0
        self._lock = threading.Lock()
        self._clients: dict[threading.Thread, socket.socket] = {}
        super().__init__(("127.0.0.1", 0), _Handler)

    def count(self, method: str) -> None:
        with self._lock:
            self.counts[method] += 1

    def connect(self) -> http.client.HTTPConnection:
        kind = (
            http.client.HTTPSConnection
            if self.target_scheme == "https"
            else http.client.HTTPConnection
        )
        conn = kind(self.target_hostname, self.target_port, timeout=self.upstream_timeout)
        conn.connect()
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn

    def process_request(self, request, client_address) -> None:
        thread = threading.Thread(
            target=self._serve_client,
            args=(request, client_address),
            name=f"confluence-proxy-{self.server_address[1]}-client",
            daemon=True,
        )
        with self._lock:
            self.connections += 1
            self._clients[thread] = request
        thread.start()

    def _serve_client(self, request, client_address) -> None:
        try:
            self.process_request_thread(request, client_address)
        finally:
            with self._lock:
                self._clients.pop(threading.current_thread(), None)

    def handle_error(self, request, client_address) -> None:
        if not self.stopping:
            super().handle_error(request, client_address)

    def close_clients(self, wait: float) -> None:
        """Cut every client connection and wait for their threads to end."""
        with self._lock:
            clients = dict(self._clients)
        for sock in clients.values():
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        deadline = time.monotonic() + wait
        for thread in clients:
            thread.join(max(0.0, deadline - time.monotonic()))


_RUNNING: weakref.WeakSet[Proxy] = weakref.WeakSet()


class Proxy:
    """A running reverse proxy on 127.0.0.1 in front of ``target_url`` (see the module doc).

    ``latency``: seconds added before each request is forwarded (or answered with a fault).
    ``faults``: a :class:`FaultPlan`, or None. ``timeout``: seconds to wait on the target.
    ``counts`` (requests by method, faulted ones included), ``injected`` (faults by kind) and
    ``connections`` (client connections accepted) are snapshots; ``reset_counts()`` zeroes
    the first two.
    """

    def __init__(
        self,
        target_url: str,
        latency: float = 0.0,
        faults: FaultPlan | None = None,
        timeout: float = 300.0,
    ) -> None:
        self._server = _ProxyServer(target_url, latency, faults, timeout)
        self.faults = faults
        host, port = self._server.server_address[:2]
        self.url = f"http://{host}:{port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"confluence-proxy-{port}",
            daemon=True,
        )
        self._thread.start()
        self._stopped = False
        _RUNNING.add(self)

    @property
    def counts(self) -> dict[str, int]:
        with self._server._lock:
            return dict(self._server.counts)

    @property
    def injected(self) -> dict[str, int]:
        return dict(self.faults.injected) if self.faults else {}

    @property
    def connections(self) -> int:
        with self._server._lock:
            return self._server.connections

    @property
    def latency(self) -> float:
        return self._server.latency

    def reset_counts(self) -> None:
        with self._server._lock:
            self._server.counts.clear()
        if self.faults:
            self.faults.injected.clear()

    def stop(self, wait: float = 5.0) -> None:
        """Stop accepting, cut open connections, and wait up to ``wait`` s for the threads."""
        if self._stopped:
            return
        self._stopped = True
        self._server.stopping = True
        self._server.shutdown()
        self._server.server_close()
        self._server.close_clients(wait)
        self._thread.join(wait)
        _RUNNING.discard(self)

    def __enter__(self) -> Proxy:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "stopped" if self._stopped else "running"
        return f"Proxy({self.url} -> {self._server.target_url}, latency={self.latency}, {state})"


@atexit.register
def _stop_all() -> None:
    for proxy in list(_RUNNING):
        proxy.stop(wait=1.0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m confluence.emulator.proxy",
        description="Loopback reverse proxy with added latency and injected S3 faults.",
    )
    parser.add_argument("--target", required=True, help="server to forward to, e.g. moto's URL")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added per request")
    parser.add_argument("--fail-every", type=int, default=0, metavar="N", help="throttle every Nth")
    parser.add_argument("--fail-first", type=int, default=0, metavar="K", help="throttle first K")
    parser.add_argument(
        "--fail-probability", type=float, default=0.0, metavar="P", help="throttle at random"
    )
    parser.add_argument("--fail-method", help="throttle only this method, e.g. PUT")
    parser.add_argument("--status", type=int, default=503, choices=(503, 429))
    parser.add_argument("--seed", type=int, default=0, help="seed for --fail-probability")
    parser.add_argument(
        "--corrupt-every", type=int, default=0, metavar="N", help="flip a byte in every Nth GET"
    )
    return parser


def plan_from_args(args: argparse.Namespace) -> FaultPlan | None:
    throttle, corrupt = [], []
    if args.fail_every or args.fail_first or args.fail_probability:
        throttle.append(
            FaultRule(
                every=args.fail_every,
                first=args.fail_first,
                probability=args.fail_probability,
                method=args.fail_method,
                status=args.status,
                seed=args.seed,
            )
        )
    if args.corrupt_every:
        corrupt.append(FaultRule(every=args.corrupt_every, method="GET"))
    return FaultPlan(throttle, corrupt) if throttle or corrupt else None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        faults = plan_from_args(args)
        proxy = Proxy(args.target, latency=args.latency, faults=faults)
    except ValueError as err:
        print(err, file=sys.stderr)
        return 2
    done = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: done.set())
    print(proxy.url, flush=True)
    with proxy:
        while not done.wait(0.5):
            pass
    print(f"requests: {json.dumps(proxy.counts)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
