"""PO.DAAC credentials renewal against a real moto server (SSM, EventBridge) and a loopback
stand-in for the credentials endpoint and Earthdata Login (redirects, Basic auth, cookie)."""

from __future__ import annotations

import base64
import json
import secrets
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import yaml
from s3_server import S3Server

from confluence import cli, podaac
from confluence import config as config_mod
from confluence.batch import names

USER, PASSWORD = "swot-user", "correct horse"
SESSION_COOKIE = "podaac-session"


# --- loopback stand-ins ---------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    """Routes by the server's role: "endpoint" (PO.DAAC) or "login" (Earthdata Login)."""

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        fake: FakeEarthdata = self.server.fake
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        fake.requests.append((self.server.role, url.path, self.headers.get("Authorization")))
        if self.server.role == "login":
            return self._login(fake, url.path, query)
        return self._endpoint(fake, url.path, query)

    def _login(self, fake, path, query) -> None:
        expected = "Basic " + base64.b64encode(f"{USER}:{fake.password}".encode()).decode()
        if path != "/oauth/authorize":
            return self._send(404, b"not found")
        if self.headers.get("Authorization") != expected:
            return self._send(
                401, b"Unauthorized", {"WWW-Authenticate": 'Basic realm="Earthdata Login"'}
            )
        code = secrets.token_hex(8)
        fake.codes.add(code)
        self._send(302, b"", {"Location": f"{query['redirect_uri']}?code={code}"})

    def _endpoint(self, fake, path, query) -> None:
        if path == "/redirect":
            if query.get("code") not in fake.codes:
                return self._send(400, b"bad code")
            cookie = f"{SESSION_COOKIE}={secrets.token_hex(8)}; Path=/"
            return self._send(302, b"", {"Location": "/s3credentials", "Set-Cookie": cookie})
        if path != "/s3credentials":
            return self._send(404, b"not found")
        if SESSION_COOKIE not in (self.headers.get("Cookie") or ""):
            target = urlencode(
                {
                    "client_id": "podaac",
                    "response_type": "code",
                    "redirect_uri": f"{fake.endpoint_base}/redirect",
                }
            )
            return self._send(302, b"", {"Location": f"{fake.login_base}/oauth/authorize?{target}"})
        if fake.delay:
            time.sleep(fake.delay)
        self._send(200, fake.answer, {"Content-Type": "application/json"})

    def _send(self, status: int, body: bytes, headers: dict | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class FakeEarthdata:
    """Two loopback servers: the credentials endpoint and the login host (another port, so
    the code must tell them apart by host and port)."""

    def __init__(self) -> None:
        self.password = PASSWORD
        self.answer = b""
        self.delay = 0.0
        self.codes: set[str] = set()
        self.requests: list[tuple[str, str, str | None]] = []
        self._servers = []
        for role in ("endpoint", "login"):
            server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
            server.daemon_threads = True
            server.block_on_close = False
            server.role, server.fake = role, self
            # A short poll keeps shutdown() (it waits for the next poll) from costing 0.5 s.
            threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True).start()
            self._servers.append(server)
        self.endpoint_base = f"http://127.0.0.1:{self._servers[0].server_address[1]}"
        self.login_host = f"127.0.0.1:{self._servers[1].server_address[1]}"
        self.login_base = f"http://{self.login_host}"
        self.answer_with()

    def answer_with(self, expires_in=timedelta(hours=1), drop=(), **fields) -> None:
        doc = {
            "accessKeyId": "ASIAFAKEKEY",
            "secretAccessKey": "fake-secret",
            "sessionToken": "fake-token",
            "expiration": (datetime.now(UTC) + expires_in).strftime("%Y-%m-%d %H:%M:%S+00:00"),
            **fields,
        }
        self.answer = json.dumps({k: v for k, v in doc.items() if k not in drop}).encode()

    def close(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()


@pytest.fixture(scope="module")
def moto():
    with S3Server() as server:  # moto serves every service; S3Server also sets AWS_* vars
        yield server


@pytest.fixture
def earthdata():
    fake = FakeEarthdata()
    yield fake
    fake.close()


@pytest.fixture
def ssm(moto):
    return podaac._client("ssm")


@pytest.fixture
def settings(moto, earthdata, ssm, monkeypatch):
    """Handler settings (environment variables) on a fresh prefix holding the login."""
    prefix = f"/test/{uuid.uuid4().hex[:8]}/podaac"
    for name, value in {
        podaac.ENV_SSM_PREFIX: prefix,
        podaac.ENV_CREDENTIALS_ENDPOINT: f"{earthdata.endpoint_base}/s3credentials",
        podaac.ENV_LOGIN_HOST: earthdata.login_host,
        podaac.ENV_HTTP_TIMEOUT: "5",
    }.items():
        monkeypatch.setenv(name, value)
    result = podaac.Settings.from_environment()
    ssm.put_parameter(Name=result.parameters.username, Value=USER, Type="String")
    ssm.put_parameter(Name=result.parameters.password, Value=PASSWORD, Type="SecureString")
    return result


def stored(ssm, names_: podaac.ParameterNames) -> dict[str, tuple[str, str]]:
    wanted = [names_.access_key_id, names_.secret_access_key, names_.session_token]
    wanted.append(names_.expiration)
    answer = ssm.get_parameters(Names=wanted, WithDecryption=True)
    return {p["Name"]: (p["Value"], p["Type"]) for p in answer["Parameters"]}


def seed_previous(ssm, names_: podaac.ParameterNames) -> dict:
    for name, value, kind in [
        (names_.access_key_id, "OLDKEY", "SecureString"),
        (names_.secret_access_key, "old-secret", "SecureString"),
        (names_.session_token, "old-token", "SecureString"),
        (names_.expiration, "2030-01-01T00:00:00+00:00", "String"),
    ]:
        ssm.put_parameter(Name=name, Value=value, Type=kind, Overwrite=True)
    return stored(ssm, names_)


# --- renewal --------------------------------------------------------------------------------


def test_handler_stores_the_four_parameters(settings, ssm, earthdata):
    result = podaac.lambda_handler({}, None)

    names_ = settings.parameters
    values = stored(ssm, names_)
    assert values[names_.access_key_id] == ("ASIAFAKEKEY", "SecureString")
    assert values[names_.secret_access_key] == ("fake-secret", "SecureString")
    assert values[names_.session_token] == ("fake-token", "SecureString")
    expiration, kind = values[names_.expiration]
    assert kind == "String" and expiration == result["expiration"]
    assert datetime.fromisoformat(expiration) > datetime.now(UTC) + timedelta(minutes=55)
    assert "fake" not in json.dumps(result) and PASSWORD not in json.dumps(result)
    # The full dance happened, and the password went to the login host only.
    paths = [(role, path) for role, path, _ in earthdata.requests]
    assert paths == [
        ("endpoint", "/s3credentials"),
        ("login", "/oauth/authorize"),
        ("endpoint", "/redirect"),
        ("endpoint", "/s3credentials"),
    ]
    assert [auth is not None for role, _, auth in earthdata.requests] == [0, 1, 0, 0]


def test_refused_login_names_the_parameter_and_keeps_old_credentials(settings, ssm, earthdata):
    before = seed_previous(ssm, settings.parameters)
    earthdata.password = "changed on the website"

    with pytest.raises(podaac.LoginRefused) as caught:
        podaac.lambda_handler({}, None)

    message = str(caught.value)
    assert f"Earthdata login refused for user {USER}" in message
    assert f"update the password in SSM parameter {settings.parameters.password}" in message
    assert PASSWORD not in message
    assert stored(ssm, settings.parameters) == before


def test_expired_answer_is_refused_and_old_credentials_stay(settings, ssm, earthdata):
    before = seed_previous(ssm, settings.parameters)
    earthdata.answer_with(expires_in=timedelta(minutes=-5))

    with pytest.raises(podaac.CredentialsError, match="which is past"):
        podaac.renew(settings, ssm=ssm)

    assert stored(ssm, settings.parameters) == before


@pytest.mark.parametrize(
    "answer, expected",
    [
        (dict(drop=("sessionToken",)), "lacks sessionToken"),
        (dict(drop=("expiration", "accessKeyId")), "lacks accessKeyId, expiration"),
        (dict(sessionToken=""), "lacks sessionToken"),
        (dict(expiration="tomorrow-ish"), "unreadable expiration"),
        (b'{"error": "User not authorized for PO.DAAC"}', "User not authorized"),
        (b"<html>maintenance</html>", "is not JSON"),
        (b'["not", "an", "object"]', "not an object"),
    ],
)
def test_malformed_answer_is_refused_and_old_credentials_stay(
    settings, ssm, earthdata, answer, expected
):
    before = seed_previous(ssm, settings.parameters)
    if isinstance(answer, bytes):
        earthdata.answer = answer
    else:
        earthdata.answer_with(**answer)

    with pytest.raises(podaac.CredentialsError, match=expected):
        podaac.renew(settings, ssm=ssm)

    assert stored(ssm, settings.parameters) == before


def test_first_failed_renewal_writes_nothing(settings, ssm, earthdata):
    earthdata.answer_with(drop=("secretAccessKey",))
    with pytest.raises(podaac.CredentialsError):
        podaac.renew(settings, ssm=ssm)
    assert stored(ssm, settings.parameters) == {}


def test_missing_login_parameter_says_how_to_create_it(moto, earthdata, ssm):
    settings = podaac.Settings(
        ssm_prefix=f"/test/{uuid.uuid4().hex[:8]}",
        credentials_endpoint=f"{earthdata.endpoint_base}/s3credentials",
        login_host=earthdata.login_host,
    )
    with pytest.raises(podaac.CredentialsError, match="put-parameter --type SecureString"):
        podaac.renew(settings, ssm=ssm)
    assert earthdata.requests == []


def test_slow_endpoint_times_out_clearly(settings, ssm, earthdata):
    earthdata.delay = 1.0
    quick = podaac.Settings(**{**settings.__dict__, "timeout": 0.3})
    with pytest.raises(podaac.CredentialsError, match=r"could not reach .*\(timeout 0.3 s\)"):
        podaac.renew(quick, ssm=ssm)
    assert stored(ssm, settings.parameters) == {}


class _FailingPuts:
    """The real SSM client, except that put_parameter fails from the ``fail_at``-th call."""

    def __init__(self, ssm, fail_at: int) -> None:
        self._ssm, self._fail_at, self.puts = ssm, fail_at, 0

    def __getattr__(self, name):
        return getattr(self._ssm, name)

    def put_parameter(self, **kwargs):
        from botocore.exceptions import ClientError

        self.puts += 1
        if self.puts == self._fail_at:
            error = {"Error": {"Code": "ThrottlingException", "Message": "Rate exceeded"}}
            raise ClientError(error, "PutParameter")
        return self._ssm.put_parameter(**kwargs)


@pytest.mark.parametrize("previous", [True, False])
def test_failed_write_puts_back_what_it_wrote(settings, ssm, earthdata, previous):
    before = seed_previous(ssm, settings.parameters) if previous else {}

    with pytest.raises(podaac.CredentialsError, match="previous values were put back"):
        podaac.renew(settings, ssm=_FailingPuts(ssm, fail_at=3))

    assert stored(ssm, settings.parameters) == before


# --- pure parts -------------------------------------------------------------------------------


def test_answer_times_are_read_as_utc():
    now = datetime(2025, 1, 1, 12, tzinfo=UTC)
    for text in ("2025-01-01 13:00:00+00:00", "2025-01-01T13:00:00Z", "2025-01-01T13:00:00"):
        body = json.dumps(
            {"accessKeyId": "AK", "secretAccessKey": "SK", "sessionToken": "TK", "expiration": text}
        ).encode()
        parsed = podaac.parse_answer(body, "https://x/s3credentials", now=now)
        assert parsed.expiration == datetime(2025, 1, 1, 13, tzinfo=UTC)
        assert not {"AK", "SK", "TK"} & set(repr(parsed).replace("(", " ").split())


def test_password_goes_only_to_the_login_host_over_https():
    auth = podaac._LoginAuthorization("urs.example.org", "u", "p")
    elsewhere = auth.https_request(urllib.request.Request("https://archive.example.org/x"))
    assert not elsewhere.has_header("Authorization")
    login = auth.https_request(urllib.request.Request("https://urs.example.org/oauth/authorize"))
    assert login.unredirected_hdrs["Authorization"] == "Basic " + base64.b64encode(b"u:p").decode()
    with pytest.raises(podaac.CredentialsError, match="plain http"):
        auth.http_request(urllib.request.Request("http://urs.example.org/oauth/authorize"))


def test_prefix_must_be_a_path():
    with pytest.raises(podaac.CredentialsError, match="must be a path"):
        podaac.ParameterNames.under("confluence/podaac")
    assert podaac.ParameterNames.under("/a/b/").password == "/a/b/earthdata/password"


def test_rule_name_takes_the_prefix():
    assert names.podaac_rule({"aws": {"prefix": ""}}) == "podaac-credentials"
    assert names.podaac_rule({"aws": {"prefix": "dev-"}}) == "dev-podaac-credentials"


# --- schedule and CLI -----------------------------------------------------------------------


def test_set_schedule_toggles_the_rule(moto):
    events = podaac._client("events")
    rule = f"test-{uuid.uuid4().hex[:8]}-podaac-credentials"
    events.put_rule(Name=rule, ScheduleExpression="rate(50 minutes)", State="DISABLED")

    assert podaac.set_schedule(rule, True, client=events) == "ENABLED"
    assert events.describe_rule(Name=rule)["State"] == "ENABLED"
    assert podaac.set_schedule(rule, False) == "DISABLED"
    assert events.describe_rule(Name=rule)["State"] == "DISABLED"
    with pytest.raises(podaac.CredentialsError, match="does not exist: deploy"):
        podaac.set_schedule(rule + "-missing", True, client=events)


def _write_config(tmp_path, aws: dict):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"aws": aws}))
    return str(path)


def test_cli_enables_and_disables_the_rule(moto, tmp_path, capsys):
    prefix = f"t{uuid.uuid4().hex[:6]}-"
    configfile = _write_config(tmp_path, {"prefix": prefix, "region": "us-west-2"})
    events = podaac._client("events", "us-west-2")
    rule = names.podaac_rule({"aws": {"prefix": prefix}})
    events.put_rule(Name=rule, ScheduleExpression="rate(50 minutes)", State="DISABLED")

    assert cli.main(["credentials", "enable", "--configfile", configfile]) == 0
    assert events.describe_rule(Name=rule)["State"] == "ENABLED"
    assert cli.main(["credentials", "disable", "--configfile", configfile]) == 0
    assert events.describe_rule(Name=rule)["State"] == "DISABLED"
    assert "DISABLED" in capsys.readouterr().out

    other = _write_config(tmp_path, {"prefix": "nothing-deployed-"})
    assert cli.main(["credentials", "enable", "--configfile", other]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_cli_renews_with_the_config_section(moto, earthdata, tmp_path, monkeypatch, capsys):
    prefix = f"/test/{uuid.uuid4().hex[:8]}/podaac"
    section = {"credentials_endpoint": f"{earthdata.endpoint_base}/s3credentials"}
    section["ssm_prefix"] = prefix
    configfile = _write_config(tmp_path, {"region": "us-west-2", "podaac": section})
    monkeypatch.setenv(podaac.ENV_LOGIN_HOST, earthdata.login_host)
    ssm = podaac._client("ssm", "us-west-2")
    names_ = podaac.ParameterNames.under(prefix)
    ssm.put_parameter(Name=names_.username, Value=USER, Type="String")
    ssm.put_parameter(Name=names_.password, Value=PASSWORD, Type="SecureString")

    assert cli.main(["credentials", "renew", "--configfile", configfile]) == 0
    assert stored(ssm, names_)[names_.session_token] == ("fake-token", "SecureString")
    assert "valid until" in capsys.readouterr().out

    earthdata.password = "rotated"
    assert cli.main(["credentials", "renew", "--configfile", configfile]) == 1
    assert names_.password in capsys.readouterr().err


def test_a_run_renews_and_enables_then_disables(moto, earthdata, tmp_path, monkeypatch):
    """What the executor plugin does around a Batch run (start_run, end_run)."""
    prefix = f"/test/{uuid.uuid4().hex[:8]}/podaac"
    aws_prefix = f"t{uuid.uuid4().hex[:6]}-"
    section = {"enabled": True, "ssm_prefix": prefix}
    section["credentials_endpoint"] = f"{earthdata.endpoint_base}/s3credentials"
    aws = {"prefix": aws_prefix, "region": "us-west-2", "podaac": section}
    config = config_mod.load([_write_config(tmp_path, aws)])
    monkeypatch.setenv(podaac.ENV_LOGIN_HOST, earthdata.login_host)
    ssm, events = podaac._client("ssm", "us-west-2"), podaac._client("events", "us-west-2")
    names_ = podaac.ParameterNames.under(prefix)
    ssm.put_parameter(Name=names_.username, Value=USER, Type="String")
    ssm.put_parameter(Name=names_.password, Value=PASSWORD, Type="SecureString")

    with pytest.raises(podaac.CredentialsError, match="does not exist: deploy"):
        podaac.start_run(config)  # no rule deployed yet
    rule = names.podaac_rule({"aws": {"prefix": aws_prefix}})
    events.put_rule(Name=rule, ScheduleExpression="rate(50 minutes)", State="DISABLED")
    ssm.delete_parameter(Name=names_.session_token)

    assert "enabled for this run" in podaac.start_run(config)
    assert stored(ssm, names_)[names_.session_token] == ("fake-token", "SecureString")
    assert events.describe_rule(Name=rule)["State"] == "ENABLED"
    assert rule in podaac.end_run(config)
    assert events.describe_rule(Name=rule)["State"] == "DISABLED"

    config["aws"]["podaac"]["enabled"] = False
    assert podaac.start_run(config) is None and podaac.end_run(config) is None


def test_deployment_package_holds_a_working_handler(tmp_path):
    """The zip imports on a bare interpreter (no site-packages: what Lambda's runtime lacks,
    it lacks too, except boto3, which the handler imports only when called)."""
    package = tmp_path / "podaac.zip"
    assert cli.main(["infra", "podaac-package", "-o", str(package)]) == 0
    probe = (
        "import sys; sys.path.insert(0, sys.argv[1]); import confluence.podaac as p; "
        "assert callable(p.lambda_handler); print(p.__file__)"
    )
    result = subprocess.run(
        [sys.executable, "-S", "-c", probe, str(package)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith(str(package))
