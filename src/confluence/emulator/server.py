"""``confluence emulator``: a local AWS endpoint whose Batch jobs really run, for end-to-end
tests of the AWS Batch executor on one machine (loopback only, no Docker).

moto's threaded server answers Batch, S3, EFS, IAM, EC2, CloudWatch Logs, ... on
127.0.0.1; confluence.emulator.batch makes its Batch jobs run as local processes;
confluence.emulator.account creates the configuration's queues, job definitions, file
systems and buckets. In front of moto sits a small WSGI layer that

- records every request as {"time", "service", "action", "status"}: served at
  ``GET /confluence-emulator/requests`` (``DELETE`` clears it) and appended to
  ``--request-log`` as JSON lines;
- injects faults: ``POST /confluence-emulator/faults`` with
  ``{"action": "DescribeJobs", "count": 3, "status": 429, "code": "TooManyRequestsException"}``
  (optional "service", "message") answers the next ``count`` such requests with that error,
  in the service's own error format; ``GET`` lists, ``DELETE`` clears;
- serves job status histories and process IDs at ``GET /confluence-emulator/jobs``.

Emulator-only conveniences: ``--time-scale F`` multiplies every job timeout (and the
SIGTERM->SIGKILL grace) by F, so AWS's 60 s minimum timeout can fire in a test;
``--image IMAGE=COMMAND`` runs jobs of IMAGE as COMMAND + the job's command (empty COMMAND:
the job's command alone), for images that are not the project's.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import signal
import sys
import tempfile
import threading
import time
import uuid
from functools import lru_cache
from pathlib import Path
from urllib.parse import parse_qs
from xml.sax.saxutils import escape

from confluence.emulator import batch as batch_jobs
from confluence.emulator.batch import ImageMap, Settings, fake_credentials

CONTROL = "/confluence-emulator/"
#: SigV4 signing names that differ from botocore's service names.
SIGNING_NAMES = {"elasticfilesystem": "efs", "monitoring": "cloudwatch"}
JSON_PROTOCOLS = ("json", "rest-json", "smithy-rpc-v2-cbor")


# --- which request is this ----------------------------------------------------------------


@lru_cache(maxsize=64)
def _service_model(service: str):
    import botocore.session

    try:
        return botocore.session.get_session().get_service_model(service)
    except Exception:  # an unknown service is recorded by its HTTP method and path
        return None


@lru_cache(maxsize=64)
def _routes(service: str) -> list[tuple]:
    """(method, path regex, required query keys/values, required headers, literal length,
    operation) for every operation of a REST service, from botocore's model."""
    model = _service_model(service)
    routes = []
    for name in model.operation_names:
        operation = model.operation_model(name)
        method, uri = operation.http["method"], operation.http["requestUri"]
        path, _, query = uri.partition("?")
        pattern = re.sub(r"\\\{[^/]+?\\\+\\\}", "(.+)", re.escape(path))
        pattern = re.sub(r"\\\{[^/]+?\\\}", "([^/]+)", pattern)
        required_query = {}
        for part in filter(None, query.split("&")):
            key, _, value = part.partition("=")
            required_query[key] = value or None
        required_headers = []
        shape = operation.input_shape
        if shape is not None:
            for member in shape.required_members:
                serial = shape.members[member].serialization
                if serial.get("location") == "querystring":
                    required_query.setdefault(serial.get("name", member), None)
                elif serial.get("location") == "header":
                    required_headers.append(serial.get("name", member).lower())
        literal = len(re.sub(r"\{[^}]*\}", "", path))
        routes.append(
            (method, re.compile(pattern + "/?"), required_query, required_headers, literal, name)
        )
    return routes


def _rest_operation(service: str, environ: dict) -> str | None:
    """The REST operation a request calls: method and path must match; of those whose
    required query keys and headers are present, the most specific wins."""
    method = environ.get("REQUEST_METHOD", "")
    # The raw path keeps a label's encoded "/" (a Batch ARN in /v1/tags/{resourceArn}).
    raw = environ.get("REQUEST_URI") or environ.get("RAW_URI")
    path = raw.split("?", 1)[0] if raw else environ.get("PATH_INFO", "") or "/"
    query = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
    headers = {k[5:].replace("_", "-").lower() for k in environ if k.startswith("HTTP_")}
    best, best_score = None, None
    for route_method, pattern, required_query, required_headers, literal, name in _routes(service):
        if route_method != method or not pattern.fullmatch(path):
            continue
        if any(
            key not in query or (value is not None and value not in query[key])
            for key, value in required_query.items()
        ):
            continue
        if any(header not in headers for header in required_headers):
            continue
        score = (len(required_query) + len(required_headers), literal)
        if best_score is None or score > best_score:
            best, best_score = name, score
    return best


def _read_body(environ: dict) -> bytes:
    """The request body, put back so the application can read it again."""
    stream = environ.get("wsgi.input")
    if stream is None:
        return b""
    if environ.get("wsgi.input_terminated"):
        body = stream.read()
    else:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = stream.read(length) if length > 0 else b""
    environ["wsgi.input"] = io.BytesIO(body)
    environ["CONTENT_LENGTH"] = str(len(body))
    return body


def identify(environ: dict) -> tuple[str, str]:
    """(service, action) of a request, e.g. ("batch", "SubmitJob"), ("s3", "PutObject")."""
    path = environ.get("PATH_INFO", "")
    if path.startswith("/moto-api"):
        return "moto-api", path
    auth = environ.get("HTTP_AUTHORIZATION", "")
    credential = ""
    if "Credential=" in auth:
        credential = auth.split("Credential=", 1)[1].split(",", 1)[0]
    else:
        credential = parse_qs(environ.get("QUERY_STRING", "")).get("X-Amz-Credential", [""])[0]
    parts = credential.split("/")
    signing = parts[3] if len(parts) >= 5 else ""
    service = SIGNING_NAMES.get(signing, signing)
    model = _service_model(service) if service else None
    fallback = f"{environ.get('REQUEST_METHOD', '')} {path}"
    if model is None:
        return service or "unknown", fallback
    target = environ.get("HTTP_X_AMZ_TARGET")
    if target:
        return service, target.rsplit(".", 1)[-1]
    if model.protocol in ("query", "ec2"):
        action = parse_qs(environ.get("QUERY_STRING", "")).get("Action")
        if not action and "form-urlencoded" in environ.get("CONTENT_TYPE", ""):
            action = parse_qs(_read_body(environ).decode("utf-8", "replace")).get("Action")
        return service, action[0] if action else fallback
    if model.protocol == "smithy-rpc-v2-cbor":
        return service, path.rstrip("/").rsplit("/", 1)[-1]
    return service, _rest_operation(service, environ) or fallback


def error_response(service: str, code: str, message: str) -> tuple[list, bytes]:
    """Headers and body of an AWS error in the service's protocol, as botocore parses it."""
    model = _service_model(service)
    protocol = model.protocol if model is not None else "rest-json"
    request_id = str(uuid.uuid4())
    if protocol in JSON_PROTOCOLS:
        content_type = "application/x-amz-json-1.1" if protocol == "json" else "application/json"
        body = json.dumps({"__type": code, "message": message}).encode()
        headers = [
            ("Content-Type", content_type),
            ("x-amzn-ErrorType", code),
            ("x-amzn-RequestId", request_id),
        ]
        return headers, body
    code_xml, message_xml = escape(code), escape(message)
    if protocol == "rest-xml":
        body = (
            f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code_xml}</Code>"
            f"<Message>{message_xml}</Message><RequestId>{request_id}</RequestId></Error>"
        )
    elif protocol == "ec2":
        body = (
            f"<?xml version='1.0' encoding='UTF-8'?><Response><Errors><Error><Code>{code_xml}"
            f"</Code><Message>{message_xml}</Message></Error></Errors>"
            f"<RequestID>{request_id}</RequestID></Response>"
        )
    else:
        body = (
            f"<ErrorResponse><Error><Type>Sender</Type><Code>{code_xml}</Code>"
            f"<Message>{message_xml}</Message></Error><RequestId>{request_id}</RequestId>"
            "</ErrorResponse>"
        )
    return [("Content-Type", "text/xml"), ("x-amzn-RequestId", request_id)], body.encode()


# --- request log and faults ---------------------------------------------------------------


class RequestLog:
    """Every request's {"time", "service", "action", "status"}, and the pending faults."""

    def __init__(self, path: str | Path | None = None) -> None:
        self._lock = threading.Lock()
        self._entries: list[dict] = []
        self._faults: list[dict] = []
        self._file = open(path, "a", buffering=1) if path else None  # noqa: SIM115

    def record(self, service: str, action: str, status: int) -> None:
        entry = {"time": time.time(), "service": service, "action": action, "status": status}
        with self._lock:
            self._entries.append(entry)
            if self._file is not None:
                self._file.write(json.dumps(entry) + "\n")

    def entries(self) -> list[dict]:
        with self._lock:
            return list(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def add_fault(self, fault: dict) -> dict:
        if not isinstance(fault, dict) or not isinstance(fault.get("action"), str):
            raise ValueError('a fault needs "action", e.g. {"action": "DescribeJobs"}')
        fault = {
            "action": fault["action"],
            "service": fault.get("service"),
            "count": int(fault.get("count", 1)),
            "status": int(fault.get("status", 429)),
            "code": str(fault.get("code", "TooManyRequestsException")),
            "message": str(fault.get("message", "Too Many Requests (injected by the emulator)")),
        }
        with self._lock:
            self._faults.append(fault)
        return fault

    def take_fault(self, service: str, action: str) -> dict | None:
        """The first pending fault for this request, counted down."""
        with self._lock:
            for fault in self._faults:
                if fault["action"] == action and fault["service"] in (None, service):
                    fault["count"] -= 1
                    if fault["count"] <= 0:
                        self._faults.remove(fault)
                    return dict(fault)
        return None

    def faults(self) -> list[dict]:
        with self._lock:
            return [dict(f) for f in self._faults]

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class EmulatorApp:
    """WSGI layer in front of moto: control endpoints, request log, fault injection."""

    def __init__(self, app, log: RequestLog, runner: batch_jobs.Runner) -> None:
        self.app = app
        self.log = log
        self.runner = runner

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path.startswith(CONTROL):
            return self._control(environ, start_response, path[len(CONTROL) :].strip("/"))
        try:
            service, action = identify(environ)
        except Exception:  # never let bookkeeping break a request
            service, action = "unknown", f"{environ.get('REQUEST_METHOD')} {path}"
        fault = self.log.take_fault(service, action)
        if fault is not None:
            _read_body(environ)  # drain it, or the connection's next request is garbage
            headers, body = error_response(service, fault["code"], fault["message"])
            self.log.record(service, action, fault["status"])
            start_response(f"{fault['status']} Injected", [*headers, _length(body)])
            return [body]

        def recording_start_response(status, headers, exc_info=None):
            self.log.record(service, action, int(status.split()[0]))
            return start_response(status, headers, exc_info)

        return self.app(environ, recording_start_response)

    def _control(self, environ, start_response, route: str):
        method = environ.get("REQUEST_METHOD", "GET")
        try:
            if route == "requests" and method == "GET":
                return _json(start_response, 200, self.log.entries())
            if route == "requests" and method == "DELETE":
                self.log.clear()
                return _json(start_response, 200, [])
            if route == "faults" and method == "GET":
                return _json(start_response, 200, self.log.faults())
            if route == "faults" and method == "POST":
                fault = self.log.add_fault(json.loads(_read_body(environ) or b"null"))
                return _json(start_response, 200, fault)
            if route == "faults" and method == "DELETE":
                self.log.clear_faults()
                return _json(start_response, 200, [])
            if route == "jobs" and method == "GET":
                return _json(start_response, 200, self.runner.history())
        except (ValueError, TypeError) as err:
            return _json(start_response, 400, {"error": str(err)})
        return _json(start_response, 404, {"error": f"no {method} {CONTROL}{route}"})


def _length(body: bytes) -> tuple[str, str]:
    return ("Content-Length", str(len(body)))


def _json(start_response, status: int, value) -> list[bytes]:
    body = json.dumps(value).encode()
    reason = {200: "OK", 400: "Bad Request", 404: "Not Found"}[status]
    start_response(f"{status} {reason}", [("Content-Type", "application/json"), _length(body)])
    return [body]


# --- the emulator ---------------------------------------------------------------------------


class Emulator:
    """moto's server on 127.0.0.1 with local Batch jobs and the configuration's account.

        emulator = Emulator(config, efs=Path("data/efs"))
        emulator.start()        # url, account, runner are set from here on
        ...
        emulator.stop()

    Only one Emulator per process: the Batch patch is process-wide.
    """

    def __init__(
        self,
        config: dict,
        *,
        efs: Path,
        workdir: Path | None = None,
        port: int = 0,
        max_running: int | None = None,
        time_scale: float = 1.0,
        images: dict[str, str | list[str]] | None = None,
        request_log: str | Path | None = None,
    ) -> None:
        self.config = config
        self.region = config["aws"]["region"]
        self.port = port
        self._own_workdir = workdir is None
        workdir = Path(workdir or tempfile.mkdtemp(prefix="confluence-emulator-"))
        image_map = ImageMap.from_config(config)
        for image, argv in (images or {}).items():
            image_map.add(image, argv)
        self.settings = Settings(
            efs=Path(efs).resolve(),
            workdir=workdir.resolve(),
            images=image_map,
            log_group=config["aws"]["log_group"],
            max_running=max_running or os.cpu_count() or 1,
            time_scale=time_scale,
        )
        self.log = RequestLog(request_log)
        self.url = ""
        self.account: dict = {}
        self.runner: batch_jobs.Runner | None = None
        self._server = None

    def start(self) -> Emulator:
        from moto.server import ThreadedMotoServer

        # werkzeug logs every request to stderr; the request log is the record.
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self.settings.efs.mkdir(parents=True, exist_ok=True)
        self.settings.workdir.mkdir(parents=True, exist_ok=True)
        # Before the server starts: no job may ever reach moto's Docker code.
        self.runner = batch_jobs.install(self.settings)
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()
        # The WSGI server reads its app per request, so wrapping it now covers every request.
        self._server._server.app = EmulatorApp(self._server._server.app, self.log, self.runner)
        host, port = self._server.get_host_and_port()
        self.url = f"http://{host}:{port}"
        self.settings.endpoint_url = self.url
        from confluence.emulator.account import prepare_account

        self.account = prepare_account(self.config, self.url)
        return self

    def environment(self) -> dict[str, str]:
        """Variables that point boto3 and the aws CLI at this emulator."""
        return fake_credentials(self.url, self.region)

    def stop(self) -> None:
        if self.runner is not None:
            self.runner.kill_all()
        if self._server is not None:
            self._server.stop()
            self._server = None
        self.log.close()
        batch_jobs.uninstall()
        if self._own_workdir:
            import shutil

            shutil.rmtree(self.settings.workdir, ignore_errors=True)

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _parse_images(values: list[str]) -> dict[str, str]:
    images = {}
    for value in values or []:
        image, sep, command = value.partition("=")
        if not sep or not image:
            raise ValueError(f"--image {value!r}: expected IMAGE=COMMAND")
        images[image] = command
    return images


def cli(args) -> int:
    """``confluence emulator``: run until SIGINT/SIGTERM (or stdin EOF with
    --exit-with-stdin), then stop every job and exit 0."""
    from confluence import config as config_module

    try:
        config = config_module.load(args.configfile)
        images = _parse_images(args.image)
        if args.time_scale <= 0:
            raise ValueError(f"--time-scale {args.time_scale}: must be above 0")
        if args.max_running is not None and args.max_running < 1:
            raise ValueError(f"--max-running {args.max_running}: must be at least 1")
    except ValueError as err:
        print(f"confluence emulator: {err}", file=sys.stderr)
        return 2
    emulator = Emulator(
        config,
        efs=Path(args.efs or config["paths"]["efs"]),
        workdir=Path(args.workdir) if args.workdir else None,
        port=args.port,
        max_running=args.max_running,
        time_scale=args.time_scale,
        images=images,
        request_log=args.request_log,
    )
    done = threading.Event()

    def on_signal(signum, frame) -> None:
        done.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    if args.exit_with_stdin:

        def watch_stdin() -> None:
            # A test's pipe closes when the test process dies, however it dies.
            while os.read(sys.stdin.fileno(), 4096):
                pass
            done.set()

        threading.Thread(target=watch_stdin, daemon=True).start()
    try:
        emulator.start()
        print(f"AWS_ENDPOINT_URL={emulator.url}", flush=True)
        hint = " ".join(f"{k}={v}" for k, v in emulator.environment().items())
        print(
            f"confluence emulator: AWS on {emulator.url} (region {emulator.region}), jobs run "
            f"locally with EFS under {emulator.settings.efs}. Point clients at it with:\n"
            f"  export {hint}\nStop with Ctrl-C.",
            flush=True,
        )
        while not done.wait(0.5):
            pass
    finally:
        emulator.stop()
    return 0
