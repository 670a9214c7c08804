"""Temporary S3 credentials of PO.DAAC (NASA Earthdata), renewed into SSM Parameter Store.

The input stage reads SWOT files from PO.DAAC's buckets with temporary credentials that last
an hour. A Lambda function (handler ``confluence.podaac.lambda_handler``) renews them every
50 minutes while a run is going on: it reads the Earthdata login from SSM, asks the PO.DAAC
credentials endpoint (which sends it through Earthdata Login and back), checks the answer
and only then writes all four parameters. ``confluence credentials renew|enable|disable``
does the same by hand and switches the schedule (an EventBridge rule) on and off.

Parameters under the prefix (default ``/confluence/podaac``):

- read: ``earthdata/username``, ``earthdata/password`` (SecureString)
- written: ``s3/access_key_id``, ``s3/secret_access_key``, ``s3/session_token`` (SecureString)
  and ``s3/expiration`` (String, ISO 8601 in UTC)
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import sys
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.cookiejar import CookieJar
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from confluence.batch import names

#: Environment variables of the Lambda function (all optional; the defaults are PO.DAAC's).
ENV_SSM_PREFIX = "CONFLUENCE_SSM_PREFIX"
ENV_CREDENTIALS_ENDPOINT = "CONFLUENCE_CREDENTIALS_ENDPOINT"
ENV_LOGIN_HOST = "CONFLUENCE_EARTHDATA_LOGIN_HOST"
ENV_HTTP_TIMEOUT = "CONFLUENCE_HTTP_TIMEOUT"

DEFAULT_SSM_PREFIX = "/confluence/podaac"
DEFAULT_CREDENTIALS_ENDPOINT = "https://archive.podaac.earthdata.nasa.gov/s3credentials"
DEFAULT_LOGIN_HOST = "urs.earthdata.nasa.gov"
DEFAULT_HTTP_TIMEOUT = 30.0

#: Credentials expiring sooner than this are refused: the next renewal would come too late.
MIN_VALIDITY = timedelta(minutes=1)
#: A credentials answer is a few hundred bytes; anything far larger is not one.
MAX_ANSWER_BYTES = 64 * 1024
_ANSWER_KEYS = ("accessKeyId", "secretAccessKey", "sessionToken", "expiration")
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


class CredentialsError(RuntimeError):
    """Renewal failed; the message names what failed and what to do. Nothing was written."""


class LoginRefused(CredentialsError):
    """Earthdata Login refused the username and password."""


@dataclass(frozen=True)
class ParameterNames:
    username: str
    password: str
    access_key_id: str
    secret_access_key: str
    session_token: str
    expiration: str

    @classmethod
    def under(cls, prefix: str) -> ParameterNames:
        prefix = prefix.rstrip("/")
        if not prefix.startswith("/") or len(prefix) < 2:
            raise CredentialsError(
                f"SSM prefix {prefix!r} (config key aws.podaac.ssm_prefix, or {ENV_SSM_PREFIX} "
                f"in the Lambda function) must be a path such as {DEFAULT_SSM_PREFIX}"
            )
        return cls(
            username=f"{prefix}/earthdata/username",
            password=f"{prefix}/earthdata/password",
            access_key_id=f"{prefix}/s3/access_key_id",
            secret_access_key=f"{prefix}/s3/secret_access_key",
            session_token=f"{prefix}/s3/session_token",
            expiration=f"{prefix}/s3/expiration",
        )


@dataclass(frozen=True)
class Settings:
    ssm_prefix: str = DEFAULT_SSM_PREFIX
    credentials_endpoint: str = DEFAULT_CREDENTIALS_ENDPOINT
    login_host: str = DEFAULT_LOGIN_HOST
    timeout: float = DEFAULT_HTTP_TIMEOUT

    @classmethod
    def from_environment(cls, environ=None) -> Settings:
        environ = os.environ if environ is None else environ
        timeout = environ.get(ENV_HTTP_TIMEOUT) or DEFAULT_HTTP_TIMEOUT
        try:
            timeout = float(timeout)
        except ValueError:
            raise CredentialsError(f"{ENV_HTTP_TIMEOUT}={timeout!r} is not a number") from None
        return cls(
            ssm_prefix=environ.get(ENV_SSM_PREFIX) or DEFAULT_SSM_PREFIX,
            credentials_endpoint=environ.get(ENV_CREDENTIALS_ENDPOINT)
            or DEFAULT_CREDENTIALS_ENDPOINT,
            login_host=environ.get(ENV_LOGIN_HOST) or DEFAULT_LOGIN_HOST,
            timeout=timeout,
        )

    @classmethod
    def from_config(cls, config: dict, environ=None) -> Settings:
        """aws.podaac of the configuration; login host and timeout from the environment."""
        base = cls.from_environment(environ)
        section = config["aws"]["podaac"]
        return cls(
            ssm_prefix=section["ssm_prefix"],
            credentials_endpoint=section["credentials_endpoint"],
            login_host=base.login_host,
            timeout=base.timeout,
        )

    @property
    def parameters(self) -> ParameterNames:
        return ParameterNames.under(self.ssm_prefix)


def enabled_section(config: dict) -> dict | None:
    """aws.podaac of a validated configuration when renewal is enabled, else None."""
    section = config["aws"]["podaac"]
    return section if section["enabled"] else None


@dataclass(frozen=True, repr=False)
class Credentials:
    access_key_id: str
    secret_access_key: str
    session_token: str
    expiration: datetime

    def __repr__(self) -> str:
        # Never let a log line or traceback carry the secrets.
        return f"Credentials(access_key_id=..., expiration={self.expiration.isoformat()})"


# --- HTTP ---------------------------------------------------------------------------------


def _safe_url(url: str) -> str:
    """The URL without query and fragment: redirects carry one-time login codes there."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def _is_login_host(url: str, login_host: str) -> bool:
    parts, login = urlsplit(url), urlsplit("//" + login_host)
    if (parts.hostname or "").lower() != (login.hostname or "").lower():
        return False
    return login.port is None or login.port == parts.port


class _LoginAuthorization(urllib.request.BaseHandler):
    """Sends the Earthdata password (Basic auth) to the login host and to no other host."""

    def __init__(self, login_host: str, username: str, password: str) -> None:
        self.login_host = login_host
        token = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
        self._header = f"Basic {token}"

    def http_request(self, request: urllib.request.Request) -> urllib.request.Request:
        url = request.full_url
        if _is_login_host(url, self.login_host):
            parts = urlsplit(url)
            if parts.scheme != "https" and parts.hostname not in _LOOPBACK:
                raise CredentialsError(
                    f"refusing to send the Earthdata password over plain {parts.scheme} to "
                    f"{_safe_url(url)}: the login host must be reached over https"
                )
            # Unredirected: urllib copies ordinary headers onto a redirect to another host.
            request.add_unredirected_header("Authorization", self._header)
        return request

    https_request = http_request


def fetch_answer(settings: Settings, username: str, password: str) -> tuple[bytes, str]:
    """GET the credentials endpoint through the Earthdata Login redirects.

    Returns the final answer's body and URL. Cookies of the round trip stay in a jar of this
    call only; Basic auth goes only to ``settings.login_host``.
    """
    names_ = settings.parameters
    opener = urllib.request.build_opener(
        urllib.request.HTTPCookieProcessor(CookieJar()),
        _LoginAuthorization(settings.login_host, username, password),
    )
    request = urllib.request.Request(
        settings.credentials_endpoint, headers={"Accept": "application/json"}
    )
    endpoint = _safe_url(settings.credentials_endpoint)
    try:
        with opener.open(request, timeout=settings.timeout) as answer:
            return answer.read(MAX_ANSWER_BYTES + 1), answer.geturl()
    except urllib.error.HTTPError as err:
        url = err.geturl() or settings.credentials_endpoint
        err.close()
        if err.code in (401, 403) and _is_login_host(url, settings.login_host):
            raise LoginRefused(
                f"Earthdata login refused for user {username} (HTTP {err.code} from "
                f"{_safe_url(url)}): update the password in SSM parameter {names_.password} "
                f"(or the username in {names_.username}) and check that the account is active"
            ) from None
        if err.code in (401, 403):
            raise CredentialsError(
                f"the credentials endpoint {_safe_url(url)} refused user {username} after "
                f"login (HTTP {err.code}): log in once at https://{settings.login_host} and "
                "approve the PO.DAAC application for this account"
            ) from None
        raise CredentialsError(
            f"getting PO.DAAC credentials from {endpoint} failed: HTTP {err.code} "
            f"({err.reason}) at {_safe_url(url)}; try again later"
        ) from None
    except (OSError, http.client.HTTPException) as err:
        reason = getattr(err, "reason", err)
        raise CredentialsError(
            f"could not reach the PO.DAAC credentials endpoint {endpoint} (timeout "
            f"{settings.timeout:g} s): {reason}; check the network and "
            f"{ENV_CREDENTIALS_ENDPOINT} / aws.podaac.credentials_endpoint"
        ) from None


def parse_answer(
    body: bytes, source: str, *, login_host: str = DEFAULT_LOGIN_HOST, now: datetime | None = None
) -> Credentials:
    """Check an answer of the credentials endpoint completely; raise CredentialsError if any
    part is missing, malformed or already expired."""
    where = _safe_url(source)
    if len(body) > MAX_ANSWER_BYTES:
        raise CredentialsError(f"the answer from {where} is too large to be credentials")
    try:
        doc = json.loads(body)
    except ValueError:
        if _is_login_host(source, login_host):
            raise CredentialsError(
                f"Earthdata Login answered with a page instead of credentials ({where}): log in "
                f"once at https://{login_host} and approve the PO.DAAC application"
            ) from None
        raise CredentialsError(
            f"the answer from {where} is not JSON (starts {body[:80]!r}); expected "
            f"{', '.join(_ANSWER_KEYS)}"
        ) from None
    if not isinstance(doc, dict):
        raise CredentialsError(f"the answer from {where} is JSON but not an object")
    missing = [k for k in _ANSWER_KEYS if not isinstance(doc.get(k), str) or not doc[k].strip()]
    if missing:
        # The endpoint reports its own failures as JSON, e.g. {"error": "..."}.
        error = doc.get("error") or doc.get("message") or doc.get("errorMessage")
        detail = f": the endpoint says {str(error)[:200]!r}" if error else ""
        raise CredentialsError(
            f"the answer from {where} lacks {', '.join(missing)}{detail}; "
            "nothing was stored, the previous credentials stay in place"
        )
    try:
        expiration = datetime.fromisoformat(doc["expiration"].strip().replace("Z", "+00:00"))
    except ValueError:
        raise CredentialsError(
            f"the answer from {where} has an unreadable expiration {doc['expiration'][:60]!r}"
        ) from None
    if expiration.tzinfo is None:
        # PO.DAAC writes UTC; a time without an offset is read as UTC too.
        expiration = expiration.replace(tzinfo=UTC)
    expiration = expiration.astimezone(UTC)
    now = now or datetime.now(UTC)
    if expiration <= now + MIN_VALIDITY:
        raise CredentialsError(
            f"the answer from {where} expires at {expiration.isoformat()}, which is past or less "
            f"than {MIN_VALIDITY} away (now {now.isoformat(timespec='seconds')}); check the "
            "clock and the endpoint, then renew again"
        )
    return Credentials(
        access_key_id=doc["accessKeyId"].strip(),
        secret_access_key=doc["secretAccessKey"].strip(),
        session_token=doc["sessionToken"].strip(),
        expiration=expiration,
    )


# --- SSM ----------------------------------------------------------------------------------


def _client(service: str, region: str | None = None):
    import boto3
    from botocore.config import Config

    # boto3 honours AWS_ENDPOINT_URL itself, so the emulator needs nothing here.
    return boto3.client(service, region_name=region, config=Config(retries={"mode": "standard"}))


def _aws_errors():
    from botocore.exceptions import BotoCoreError, ClientError

    return (BotoCoreError, ClientError)


def read_login(ssm, names_: ParameterNames) -> tuple[str, str]:
    """The Earthdata username and password from SSM."""
    wanted = [names_.username, names_.password]
    try:
        answer = ssm.get_parameters(Names=wanted, WithDecryption=True)
    except _aws_errors() as err:
        raise CredentialsError(
            f"could not read SSM parameters {', '.join(wanted)}: {err}; the caller needs "
            "ssm:GetParameters on them (and kms:Decrypt for SecureString)"
        ) from None
    values = {p["Name"]: p["Value"] for p in answer.get("Parameters", [])}
    missing = [n for n in wanted if not values.get(n, "").strip()]
    if missing:
        raise CredentialsError(
            f"SSM parameter(s) {', '.join(missing)} missing or empty: create them, e.g. "
            f"aws ssm put-parameter --type SecureString --name {missing[0]} --value ..."
        )
    return values[names_.username].strip(), values[names_.password]


def _stored(ssm, wanted: list[str]) -> dict[str, tuple[str, str]]:
    answer = ssm.get_parameters(Names=wanted, WithDecryption=True)
    return {p["Name"]: (p["Value"], p["Type"]) for p in answer.get("Parameters", [])}


def store(ssm, names_: ParameterNames, credentials: Credentials) -> None:
    """Write the four parameters; if a write fails, put back the ones already written."""
    updates = [
        (names_.access_key_id, credentials.access_key_id, "SecureString"),
        (names_.secret_access_key, credentials.secret_access_key, "SecureString"),
        (names_.session_token, credentials.session_token, "SecureString"),
        # Last, so a reader that sees the new expiration also finds the new key set.
        (names_.expiration, credentials.expiration.isoformat(timespec="seconds"), "String"),
    ]
    errors = _aws_errors()
    try:
        previous = _stored(ssm, [name for name, _, _ in updates])
    except errors as err:
        raise CredentialsError(
            f"could not read the stored credentials under {names_.expiration.rsplit('/', 1)[0]}"
            f" (kept for a rollback): {err}; nothing was written"
        ) from None
    written: list[str] = []
    try:
        for name, value, kind in updates:
            ssm.put_parameter(Name=name, Value=value, Type=kind, Overwrite=True)
            written.append(name)
    except errors as err:
        leftover = _roll_back(ssm, written, previous)
        state = (
            "the previous values were put back"
            if not leftover
            else f"could not put back {', '.join(leftover)}: renew again before a run"
        )
        raise CredentialsError(f"writing SSM parameters failed: {err}; {state}") from None


def _roll_back(ssm, written: list[str], previous: dict[str, tuple[str, str]]) -> list[str]:
    leftover = []
    for name in written:
        try:
            if name in previous:
                value, kind = previous[name]
                ssm.put_parameter(Name=name, Value=value, Type=kind, Overwrite=True)
            else:
                ssm.delete_parameter(Name=name)
        except _aws_errors():
            leftover.append(name)
    return leftover


# --- entry points -------------------------------------------------------------------------


def renew(settings: Settings, ssm=None, now: datetime | None = None) -> dict:
    """Obtain fresh credentials and store them. Returns what a log may show (no secrets)."""
    ssm = ssm or _client("ssm")
    names_ = settings.parameters
    username, password = read_login(ssm, names_)
    body, source = fetch_answer(settings, username, password)
    credentials = parse_answer(body, source, login_host=settings.login_host, now=now)
    store(ssm, names_, credentials)
    return {
        "expiration": credentials.expiration.isoformat(timespec="seconds"),
        "ssm_prefix": settings.ssm_prefix.rstrip("/"),
        "username": username,
    }


def lambda_handler(event, context) -> dict:
    """The Lambda function: renew with the settings of its environment variables."""
    result = renew(Settings.from_environment())
    # Lambda sends stdout to CloudWatch Logs; the result holds no secret.
    print(f"renewed PO.DAAC S3 credentials: {json.dumps(result)}")
    return result


def set_schedule(rule_name: str, enabled: bool, client=None) -> str:
    """Enable or disable the renewal schedule's EventBridge rule; returns its new state."""
    client = client or _client("events")
    try:
        if enabled:
            client.enable_rule(Name=rule_name)
        else:
            client.disable_rule(Name=rule_name)
        return client.describe_rule(Name=rule_name)["State"]
    except client.exceptions.ResourceNotFoundException:
        raise CredentialsError(
            f"EventBridge rule {rule_name} does not exist: deploy the infrastructure template "
            "(it creates the rule) or check aws.prefix"
        ) from None


def start_run(config: dict) -> str | None:
    """At the start of a Batch run with aws.podaac.enabled: renew now (the input stage may
    start within minutes) and enable the 50-minute schedule. Returns what to log, or None
    when renewal is not configured. Raises CredentialsError with what to do."""
    if enabled_section(config) is None:
        return None
    region = config["aws"]["region"]
    try:
        result = renew(Settings.from_config(config), ssm=_client("ssm", region))
        rule = names.podaac_rule(config)
        set_schedule(rule, True, client=_client("events", region))
    except _aws_errors() as err:
        raise CredentialsError(f"PO.DAAC credentials: AWS call failed: {err}") from err
    return (
        f"PO.DAAC S3 credentials renewed under {result['ssm_prefix']}/s3/ (valid until "
        f"{result['expiration']}); renewal schedule {rule} enabled for this run"
    )


def end_run(config: dict) -> str | None:
    """At the end of the run: disable the schedule, so nothing renews between runs."""
    if enabled_section(config) is None:
        return None
    rule = names.podaac_rule(config)
    try:
        set_schedule(rule, False, client=_client("events", config["aws"]["region"]))
    except _aws_errors() as err:
        raise CredentialsError(f"PO.DAAC credentials: AWS call failed: {err}") from err
    return f"PO.DAAC renewal schedule {rule} disabled"


#: What the Lambda function imports (stdlib and the runtime's boto3 besides).
PACKAGE_MODULES = ("__init__.py", "podaac.py", "batch/__init__.py", "batch/names.py")


def write_package(path: Path) -> list[str]:
    """The renewal function's deployment package: a zip of the few package files the
    handler imports, so it runs on the plain Python runtime. Returns the archive's names."""
    root = Path(__file__).parent
    names_ = [f"confluence/{module}" for module in PACKAGE_MODULES]
    tmp = path.with_name(f".{path.name}.tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
        for module, name in zip(PACKAGE_MODULES, names_, strict=True):
            archive.write(root / module, name)
    os.replace(tmp, path)
    return names_


def package_cli(args) -> int:
    """``confluence infra podaac-package [-o FILE]``."""
    path = Path(args.output)
    write_package(path)
    print(
        f"wrote {path}. Upload it, then pass its place as PodaacCodeBucket and PodaacCodeKey:\n"
        f"  aws s3 cp {path} s3://BUCKET/{path.name}",
        file=sys.stderr,
    )
    return 0


def cli(args) -> int:
    """``confluence credentials renew|enable|disable [--configfile F ...]``."""
    from confluence import config as config_mod

    action = args.action
    try:
        config = config_mod.load(args.configfile)
    except config_mod.ConfigError as err:
        print(f"confluence credentials {action}: {err}", file=sys.stderr)
        return 2
    region = config["aws"]["region"]
    try:
        if action == "renew":
            settings = Settings.from_config(config)
            result = renew(settings, ssm=_client("ssm", region))
            print(
                f"renewed the PO.DAAC S3 credentials of {result['username']} under "
                f"{result['ssm_prefix']}/s3/, valid until {result['expiration']}"
            )
        else:
            rule = names.podaac_rule(config)
            state = set_schedule(rule, action == "enable", client=_client("events", region))
            print(f"EventBridge rule {rule}: {state}")
    except CredentialsError as err:
        print(f"confluence credentials {action}: {err}", file=sys.stderr)
        return 1
    except _aws_errors() as err:
        print(f"confluence credentials {action}: AWS call failed: {err}", file=sys.stderr)
        return 1
    return 0
