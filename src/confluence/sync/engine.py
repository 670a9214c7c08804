"""The sync engine: merge two sorted listings, decide per file, transfer in parallel, verify.

Per file (path in both listings, same size), sameness is decided without reading or
requesting anything when it can be: a local file's digest comes from the cache, an S3
object's from its listed ETag (the MD5, or the multipart ETag for this engine's part size).
Only what cannot be decided that way goes to a worker thread, which hashes (and caches) the
file or asks S3 with a HEAD (an ETag that is not an MD5: SSE-KMS, another part size), and
copies when it differs.

Files below the multipart threshold take one request each (PutObject, GetObject with
If-Match, CopyObject), sent directly; uploads of up to 2 MiB after the first go out through
:class:`confluence.sync.direct.DirectPut`, which signs and sends them for a third of
botocore's CPU time per request. Larger ones go through one s3transfer ``TransferManager``
(parallel parts; it is handed the listed size and ETag, so it sends no HEAD of its own and
pins every ranged GET to the listed version). Every transfer is verified: a single-part
upload's returned ETag against the MD5 of the bytes read, a multipart upload's composite
CRC-32 against the one of the parts as they were read (see ``_upload_parts``), with S3
checking the CRC-32 sent with each request either way (for SSE-KMS objects, whose ETag is
no MD5, that checksum is the check); a download's bytes (hashed in order as they are
written) against the listed ETag, a copy's ETag against the source's. Local files appear
under their name only when complete and verified (see :mod:`confluence.sync.atomic`).
Uploads are invisible until complete (single PUT or completed multipart upload); on an
error or interrupt the multipart upload is aborted. Deletions (``delete=True``) run last,
and only when both listings were read completely.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import platform
import random
import secrets
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime

import boto3
import botocore
import botocore.session
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, FlexibleChecksumError
from s3transfer.exceptions import RetriesExceededError, S3DownloadFailedError
from s3transfer.manager import TransferConfig, TransferManager
from s3transfer.subscribers import BaseSubscriber

from confluence.sync import checksums as cs
from confluence.sync.atomic import AtomicFile
from confluence.sync.cache import DigestCache, Identity, written_settled
from confluence.sync.direct import DirectPut
from confluence.sync.listing import (
    Filters,
    ListingOrderError,
    LocalFile,
    RemoteObject,
    ResponseParserFactory,
    clean_file_list,
    common_folder,
    head_s3,
    list_s3,
    merge,
    sample_local,
    skip_listing_200_check,
    stat_local,
    walk_local,
)
from confluence.sync.locations import (
    LocalDir,
    Location,
    S3Prefix,
    local_name_problem,
    overlap,
    parse_location,
)
from confluence.sync.progress import ProgressBar

# Retries of a whole file after botocore's own retries (10 attempts each request) gave up,
# e.g. when its retry quota ran dry under sustained throttling.
FILE_ATTEMPTS = 4
DELETE_BATCH = 1000  # DeleteObjects' limit
KMS = ("aws:kms", "aws:kms:dsse")
# A named temporary file untouched for this long belongs to a sync that was killed.
STALE_PARTIAL_SECONDS = 3600
_THROTTLING = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "TooManyRequests",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "RequestThrottled",
    "ServiceUnavailable",
    "InternalError",
    "RequestTimeout",
}

ProgressCallback = Callable[[str, str, int], None]


def default_concurrency() -> int:
    """Transfers in flight: 32 per core, at most 256. Each transfer mostly waits on a round
    trip (tens of milliseconds to S3), so many fit on one core; 64 on 2 cores measured best
    in bench/sync.py. Multipart uploads keep s3transfer's 10 parts in memory anyway."""
    return min(256, 32 * (os.cpu_count() or 1))


class SyncFailure(Exception):
    """One file could not be synced; the message says why and what to do.
    ``transient``: worth another attempt (data damaged in transit)."""

    def __init__(self, message: str, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


@dataclass
class SyncResult:
    """What a sync did. ``entries`` lists every file with its action (copied, skipped,
    deleted; in a dry run: copy, skipped, delete), size and checksum. ``hashed_files`` and
    ``hashed_bytes``: files read only to compare them (not found in the digest cache).
    ``retried``: (file, reason) for each transfer attempt that failed and was made again."""

    source: str
    destination: str
    dry_run: bool = False
    copied: int = 0
    skipped: int = 0
    deleted: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    bytes: int = 0
    seconds: float = 0.0
    hashed_files: int = 0
    hashed_bytes: int = 0
    retried: list[tuple[str, str]] = field(default_factory=list)
    _rows: list[tuple] = field(default_factory=list, repr=False)
    _locations: tuple | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return not self.failed

    @property
    def entries(self) -> list[dict]:
        source, destination = self._locations or (None, None)
        out = []
        for rel, size, checksum, kind, action in sorted(self._rows, key=lambda r: r[0]):
            entry = {
                "path": rel,
                "source": source.display(rel) if source else rel,
                "destination": destination.display(rel) if destination else rel,
                "size": size,
                "checksum": checksum,
                "checksum_type": None,
                "action": action,
            }
            if kind:
                name, part_size = cs.describe_kind(kind)
                entry["checksum_type"] = name
                if part_size:
                    entry["part_size"] = part_size
            out.append(entry)
        return out

    def summary(self) -> str:
        failed = f", {len(self.failed)} failed" if self.failed else ""
        if self.dry_run:
            return (
                f"dry run {self.source} -> {self.destination}: {self.copied} to copy, "
                f"{self.skipped} skipped, {self.deleted} to delete, {self.bytes} bytes to copy"
                f"{failed}"
            )
        rate = self.bytes / 1e6 / self.seconds if self.seconds > 0 else 0.0
        return (
            f"synced {self.source} -> {self.destination}: {self.copied} copied, "
            f"{self.skipped} skipped, {self.deleted} deleted, {self.bytes} bytes in "
            f"{self.seconds:.1f} s ({rate:.1f} MB/s){failed}"
        )


def sync(
    src: str,
    dst: str,
    *,
    delete: bool = False,
    dry_run: bool = False,
    include: Sequence[str] | str = (),
    exclude: Sequence[str] | str = (),
    concurrency: int | None = None,
    files: Iterable[str] | None = None,
    manifest: str | os.PathLike | None = None,
    progress: ProgressCallback | bool | None = None,
    rules: Sequence[tuple[str, str]] | None = None,
) -> SyncResult:
    """Make ``dst`` hold what ``src`` holds (local directories or ``s3://bucket/prefix``).

    ``include``/``exclude``: globs on relative paths; given this way, excludes apply first
    and includes override them. ``rules``: ("include"|"exclude", glob) pairs applied in order,
    the last match winning (the CLI's order); use either ``rules`` or include/exclude.
    ``files``: sync exactly these relative paths (the source is not listed; a missing one is
    a failure); not combinable with ``delete``. ``manifest``: JSON file to write listing every
    file copied or already in place. ``progress``: a callable (see
    :mod:`confluence.sync.progress`), True for a bar on an interactive stderr, or None/False.

    Raises ValueError for unusable arguments (bad location, missing source directory);
    per-file problems are collected in ``SyncResult.failed`` instead.
    """
    source, destination = parse_location(src), parse_location(dst)
    if overlap(source, destination):
        raise ValueError(
            f"source {source.display()} and destination {destination.display()} overlap; "
            "one would be synced into itself"
        )
    if isinstance(source, LocalDir) and not os.path.isdir(source.root):
        raise ValueError(f"source directory {source.root} does not exist (or is not a directory)")
    if isinstance(destination, LocalDir) and os.path.exists(destination.root):
        if not os.path.isdir(destination.root):
            raise ValueError(f"destination {destination.root} exists and is not a directory")
    if files is not None and delete:
        raise ValueError("delete cannot be combined with a file list (--files-from)")
    include = (include,) if isinstance(include, str) else tuple(include)
    exclude = (exclude,) if isinstance(exclude, str) else tuple(exclude)
    if rules is not None and (include or exclude):
        raise ValueError("give filter rules either as rules=... or as include/exclude, not both")
    if rules is None:
        rules = [("exclude", p) for p in exclude] + [("include", p) for p in include]
    concurrency = default_concurrency() if concurrency is None else int(concurrency)
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, got {concurrency}")
    own_bar = ProgressBar.if_interactive() if progress is True else None
    if progress is True or progress is False:
        progress = own_bar
    engine = _Engine(
        source,
        destination,
        delete=delete,
        dry_run=dry_run,
        filters=Filters(rules),
        concurrency=concurrency,
        files=None if files is None else clean_file_list(files),
        progress=progress,
    )
    try:
        result = engine.run()
    finally:
        if own_bar is not None:
            own_bar.close()
    if manifest is not None and not dry_run:
        write_manifest(manifest, result)
    return result


def write_manifest(path: str | os.PathLike, result: SyncResult) -> None:
    """The JSON manifest: every file copied or already in place, with its checksum."""
    doc = {
        "source": result.source,
        "destination": result.destination,
        "written": datetime.now(UTC).isoformat(timespec="seconds"),
        "ok": result.ok,
        "multipart_threshold": cs.MULTIPART_THRESHOLD,
        "part_size": cs.PART_SIZE,
        "checksum_types": {
            "md5": "hex MD5 of the content (the ETag of a single-part upload)",
            "s3-multipart-etag": "hex MD5 of the concatenated part MD5s, '-' part count",
            "sha256": "base64 SHA-256 of the content",
            "crc32": "base64 big-endian CRC-32 of the content",
            "sha256-composite": "base64 SHA-256 of the concatenated part SHA-256s, '-' part count",
            "crc32-composite": "base64 CRC-32 of the concatenated part CRC-32s, '-' part count",
        },
        "files": [
            {k: v for k, v in entry.items() if k not in ("action", "source")}
            for entry in result.entries
            if entry["action"] in ("copied", "skipped")
        ],
        "failed": [{"path": path_, "reason": reason} for path_, reason in result.failed],
    }
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    temporary = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(4)}.tmp")
    with open(temporary, "w") as handle:
        json.dump(doc, handle, indent=1)
        handle.write("\n")
    os.replace(temporary, path)


_session = None
_session_lock = threading.Lock()
# A fixed User-Agent: botocore otherwise assembles it from a dozen parts twice per request,
# a tenth of its CPU time per small PutObject.
USER_AGENT = f"confluence-sync Boto3/{boto3.__version__} Python/{platform.python_version()}"


def _new_session():
    """A boto3 session whose clients parse listings fast (see listing.ResponseParser)."""
    core = botocore.session.get_session()
    core.register_component("response_parser_factory", ResponseParserFactory())
    return boto3.session.Session(botocore_session=core)


def make_client(concurrency: int):
    """An S3 client honouring AWS_ENDPOINT_URL and the usual AWS configuration, with
    botocore's standard retry mode (backoff with jitter on throttling and 5xx answers).

    Request checksums are botocore's default (CRC32, checked by S3 before it stores
    anything). The payload is not signed: botocore signs it (a SHA-256 over every byte) only
    on plain-http endpoints, never on https with a checksum, and this engine verifies every
    upload by its MD5 ETag or the checksum S3 checked.

    One boto3 session serves every sync of the process: a new session loads botocore's
    service models again (about 0.1 s). The endpoint is still read at each client's creation.
    """
    global _session
    config = Config(
        max_pool_connections=concurrency + 8,
        retries={"mode": "standard", "max_attempts": 10},
        connect_timeout=10,
        read_timeout=120,
        tcp_keepalive=True,
        user_agent=USER_AGENT,
        s3={"payload_signing_enabled": False},
        # Every upload carries its CRC-32 for S3 to check, whatever the user's AWS settings.
        request_checksum_calculation="when_supported",
    )
    with _session_lock:  # creating clients from one session is not thread-safe
        if _session is None:
            _session = _new_session()
        client = _session.client("s3", config=config)
    # Last among the handlers of "before-call.s3", after botocore's, which adds the header.
    client.meta.events.register_last("before-call.s3", _no_expect_for_small_bodies)
    skip_listing_200_check(client)
    return client


def _credentials():
    """The credentials of the session every client is made from (botocore resolves them
    once per session, so they are the clients' own)."""
    with _session_lock:
        return _session.get_credentials() if _session is not None else None


# Bodies up to this size go without "Expect: 100-continue", which costs a round trip
# before the body may be sent (the AWS SDK for Go's threshold too).
EXPECT_THRESHOLD = 2 * cs.MiB


def _no_expect_for_small_bodies(model, params, **_) -> None:
    if model.name != "PutObject" or "Expect" not in params.get("headers", {}):
        return
    body = params.get("body")
    try:
        size = len(body.getbuffer()) if hasattr(body, "getbuffer") else len(body)
    except TypeError:
        return  # a stream of unknown length: keep the header
    if size <= EXPECT_THRESHOLD:
        params.get("headers", {}).pop("Expect", None)


class _ResponseLog:
    """What S3 answered when s3transfer completed a multipart upload or copy (the ETag),
    which its futures do not return: botocore's event hooks carry the target from the call's
    parameters to its parsed answer through the per-call context."""

    OPERATIONS = ("CompleteMultipartUpload",)
    _TARGET = "confluence_sync_target"

    def __init__(self, client) -> None:
        self._answers: dict[tuple[str, str], dict] = {}
        self._lock = threading.Lock()
        for operation in self.OPERATIONS:
            client.meta.events.register(f"provide-client-params.s3.{operation}", self._before)
            client.meta.events.register(f"after-call.s3.{operation}", self._after)

    def _before(self, params, context, **_) -> None:
        context[self._TARGET] = (params.get("Bucket"), params.get("Key"))

    def _after(self, parsed, context, **_) -> None:
        target = context.get(self._TARGET)
        if target is None or "Error" in parsed:
            return
        with self._lock:
            self._answers[target] = _answer_of(parsed)

    def pop(self, bucket: str, key: str) -> dict:
        with self._lock:
            return self._answers.pop((bucket, key), {})


def _answer_of(parsed: dict) -> dict:
    """ETag, encryption and the checksum S3 checked (kind, value) from a PutObject,
    CopyObject or CompleteMultipartUpload answer."""
    body = parsed.get("CopyObjectResult") or parsed
    return {
        "ETag": cs.normalize_etag(body.get("ETag")),
        "ServerSideEncryption": parsed.get("ServerSideEncryption"),
        "Checksum": cs.answered_checksum(body),
    }


class _Known(BaseSubscriber):
    """Hands s3transfer the size (and ETag) the listing gave, so it sends no HEAD, and
    forwards its byte counts to the progress callback."""

    def __init__(self, size: int, etag: str | None, on_bytes: Callable[[int], None]) -> None:
        self._size = size
        self._etag = etag
        self._on_bytes = on_bytes

    def on_queued(self, future, **kwargs) -> None:
        future.meta.provide_transfer_size(self._size)
        if self._etag:
            # Pins every ranged GET / part copy to the listed version (If-Match).
            future.meta.provide_object_etag(f'"{self._etag}"')

    def on_progress(self, future, bytes_transferred, **kwargs) -> None:
        self._on_bytes(bytes_transferred)


#: Bytes of single-part bodies held in memory at once, whatever the concurrency: 256
#: transfers of 8 MiB files would otherwise hold 2 GiB.
BODY_BYTES_IN_FLIGHT = 256 * 1024 * 1024


class _ByteBudget:
    """A semaphore counted in bytes; a request larger than the whole budget waits for all."""

    def __init__(self, limit: int) -> None:
        self.limit, self.free = limit, limit
        self._cond = threading.Condition()

    @contextlib.contextmanager
    def hold(self, size: int):
        size = min(size, self.limit)
        with self._cond:
            self._cond.wait_for(lambda: self.free >= size)
            self.free -= size
        try:
            yield
        finally:
            with self._cond:
                self.free += size
                self._cond.notify_all()


class _HashingReader:
    """The file as s3transfer reads it for an upload, hashed on the way: what is hashed is
    exactly what is sent. It has no ``seek``, so s3transfer reads it once, in order."""

    def __init__(self, handle, kinds: Iterable[str], size: int) -> None:
        self._handle = handle
        self._left = size
        self.digests = cs.StreamDigests(kinds)

    def read(self, amount: int | None = -1) -> bytes:
        if amount is None or amount < 0 or amount > self._left:
            amount = self._left
        data = self._handle.read(amount) if amount else b""
        self._left -= len(data)
        self.digests.update(data)
        return data


class _PartReader:
    """The file as s3transfer reads it for a multipart upload: one ``read`` per part, in
    order (it has no ``seek``), each part's CRC-32 computed as it is read (base64, by part
    number), so what is checked is exactly what is sent."""

    def __init__(self, handle, size: int) -> None:
        self._handle = handle
        self._left = size
        self.count = 0
        self.checksums: dict[int, str] = {}
        self._raw: list[bytes] = []

    def read(self, amount: int | None = -1) -> bytes:
        if amount is None or amount < 0 or amount > self._left:
            amount = self._left
        data = self._handle.read(amount) if amount else b""
        if data:
            self._left -= len(data)
            self.count += len(data)
            raw = zlib.crc32(data).to_bytes(4, "big")
            self._raw.append(raw)
            self.checksums[len(self._raw)] = base64.b64encode(raw).decode()
        return data

    def composite(self) -> str:
        """S3's composite checksum of the parts read: CRC-32 of their CRC-32s, "-N"."""
        combined = zlib.crc32(b"".join(self._raw)).to_bytes(4, "big")
        return f"{base64.b64encode(combined).decode()}-{len(self._raw)}"


class _HashingWriter:
    """A download target without ``seek``: s3transfer then delivers the parts it fetches in
    parallel in order (buffering a bounded window), so the bytes are hashed as written."""

    def __init__(self, handle, kinds: Iterable[str]) -> None:
        self._handle = handle
        self.digests = cs.StreamDigests(kinds)

    def write(self, data) -> int:
        self._handle.write(data)
        self.digests.update(data)
        return len(data)


class _ListingError(Exception):
    def __init__(self, where: str, message: str) -> None:
        super().__init__(message)
        self.where = where


def _annotated(entries, where: str):
    """The entries; a listing error re-raised naming the location it happened in."""
    try:
        yield from entries
    except ListingOrderError as err:
        raise _ListingError(where, str(err)) from err
    except (ClientError, BotoCoreError, OSError) as err:
        raise _ListingError(where, f"listing failed: {describe_error(err)}") from err


def describe_error(err: BaseException) -> str:
    if isinstance(err, ClientError):
        info = err.response.get("Error", {})
        status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        code = info.get("Code") or status
        operation = getattr(err, "operation_name", "request")
        return f"{operation} answered {code} ({status}): {info.get('Message') or err}"
    if isinstance(err, FlexibleChecksumError):
        return f"the bytes received do not match the object's stored checksum ({err}): " + (
            "corrupted in transit; not written"
        )
    if isinstance(err, S3DownloadFailedError) and "did not match expected ETag" in str(err):
        return "the object changed after it was listed (its ETag no longer matches); rerun"
    if isinstance(err, OSError) and err.strerror:
        where = f" ({err.filename})" if err.filename else ""
        return f"{err.strerror}{where}"
    return f"{type(err).__name__}: {err}"


def _retryable(err: BaseException) -> bool:
    if isinstance(err, SyncFailure):
        return err.transient
    if isinstance(err, ClientError):
        code = err.response.get("Error", {}).get("Code", "")
        status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        return code in _THROTTLING or status == 429 or status >= 500
    return isinstance(err, BotoCoreError | RetriesExceededError | ConnectionError)


def _mtime_ns(moment: datetime | None) -> int | None:
    if moment is None:
        return None
    whole = int(moment.replace(microsecond=0).timestamp())
    return whole * 1_000_000_000 + moment.microsecond * 1000


class _Engine:
    def __init__(
        self,
        source: Location,
        destination: Location,
        *,
        delete: bool,
        dry_run: bool,
        filters: Filters,
        concurrency: int,
        files: list[str] | None,
        progress: ProgressCallback | None,
    ) -> None:
        self.src = source
        self.dst = destination
        self.delete = delete
        self.dry_run = dry_run
        self.filters = filters
        self.concurrency = concurrency
        self.files = files
        self.progress = progress
        self.result = SyncResult(
            source.display(), destination.display(), dry_run, _locations=(source, destination)
        )
        self._lock = threading.Lock()
        self._progress_lock = threading.Lock()
        self._deletions: list = []
        self._listing_incomplete = False
        self.client = None
        self.tm: TransferManager | None = None
        self.responses: _ResponseLog | None = None
        self.direct: DirectPut | None = None
        self._part_checksums: dict[tuple[str, str], dict[int, str]] = {}

    # -- the run ------------------------------------------------------------------------------

    def run(self) -> SyncResult:
        started = time.monotonic()
        if isinstance(self.dst, LocalDir) and not self.dry_run:
            os.makedirs(self.dst.root, exist_ok=True)
        if self.src.is_s3 or self.dst.is_s3:
            self.client = make_client(self.concurrency)
            self.responses = _ResponseLog(self.client)
            self.client.meta.events.register(
                "before-parameter-build.s3.UploadPart", self._part_checksum
            )
            self.tm = TransferManager(
                self.client,
                TransferConfig(
                    multipart_threshold=cs.MULTIPART_THRESHOLD,
                    multipart_chunksize=cs.PART_SIZE,
                    max_request_concurrency=self.concurrency,
                    max_submission_concurrency=max(5, self.concurrency // 2),
                ),
            )
            if isinstance(self.dst, S3Prefix) and isinstance(self.src, LocalDir):
                self.direct = DirectPut.for_client(self.client, _credentials(), USER_AGENT)
        self.cache = DigestCache()
        self.pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="confluence-sync")
        self.head_pool = ThreadPoolExecutor(min(16, self.concurrency), "confluence-sync-head")
        self._slot_count = self.concurrency * 4
        self._slots = threading.BoundedSemaphore(self._slot_count)
        self._body_budget = _ByteBudget(BODY_BYTES_IN_FLIGHT)
        interrupted = True
        try:
            self._plan_all()
            for _ in range(self._slot_count):  # every slot back: every worker task done
                self._slots.acquire()
            self._delete_all()
            interrupted = False
        finally:
            self._shutdown(cancel=interrupted)
            self.result.seconds = time.monotonic() - started
        return self.result

    def _shutdown(self, cancel: bool) -> None:
        if self.tm is not None:
            # Leaving the manager's context with an exception cancels the transfers in
            # progress and aborts their multipart uploads. (Its shutdown(cancel=True) is
            # broken in s3transfer 0.19.3: it passes its arguments in the wrong order.)
            if cancel:
                stop = KeyboardInterrupt("sync interrupted")
                self.tm.__exit__(KeyboardInterrupt, stop, None)
            else:
                self.tm.__exit__(None, None, None)
        self.pool.shutdown(wait=True, cancel_futures=cancel)
        self.head_pool.shutdown(wait=True, cancel_futures=cancel)
        if self.direct is not None:
            self.direct.close()
        self.cache.close()

    def _plan_all(self) -> None:
        source = _annotated(self._source_entries(), self.src.display())
        dest = _annotated(self._destination_entries(), self.dst.display())
        try:
            for rel, s, d in merge(source, dest):
                if not self.filters(rel):
                    continue
                if s is None:
                    if self.delete and self.files is None:
                        self._deletions.append(d)
                    continue
                self._plan(s, d)
        except _ListingError as err:
            self._listing_incomplete = True
            self._fail(err.where, str(err))

    def _source_entries(self):
        if self.files is not None:
            if isinstance(self.src, LocalDir):
                return stat_local(self.src, self.files, self._fail)
            return head_s3(self.client, self.src, self.files, self._fail, self.head_pool)
        if isinstance(self.src, LocalDir):
            return walk_local(self.src.root, self._listing_problem)
        return list_s3(self.client, self.src, splits=self._splits(self.dst))

    def _destination_entries(self):
        if isinstance(self.dst, LocalDir):
            if self.files is not None:
                return stat_local(self.dst, self.files, None)
            return walk_local(self.dst.root, self._listing_problem, self._stale_partial)
        if self.files is not None:
            return list_s3(self.client, self.dst, common_folder(self.files))
        return list_s3(self.client, self.dst, splits=self._splits(self.src))

    @staticmethod
    def _splits(other: Location) -> list[str]:
        """Where to cut an S3 listing into ranges listed in parallel: every page's worth of
        the local side's paths, as the two sides mostly hold the same ones."""
        return sample_local(other.root) if isinstance(other, LocalDir) else []

    def _listing_problem(self, path: str, reason: str) -> None:
        self._listing_incomplete = True
        self._fail(path, reason)

    def _stale_partial(self, path: str) -> None:
        """A hidden temporary file of a killed sync: removed once clearly abandoned."""
        if self.dry_run:
            return
        try:
            if time.time() - os.stat(path).st_mtime > STALE_PARTIAL_SECONDS:
                os.unlink(path)
        except OSError:
            pass

    def _plan(self, s, d) -> None:
        if d is not None and s.size == d.size:
            same = self._quick_compare(s, d)
            if same is not None:
                self._record(s.rel, s.size, same[1], same[0], "skipped")
                return
        self._slots.acquire()
        try:
            self.pool.submit(self._task, s, d)
        except BaseException:
            self._slots.release()
            raise

    def _task(self, s, d) -> None:
        try:
            if d is not None and s.size == d.size:
                same = self._compare(s, d)
                if same is not None:
                    self._record(s.rel, s.size, same[1], same[0], "skipped")
                    return
            self._emit("copy", s.rel, s.size)
            if self.dry_run:
                self._record(s.rel, s.size, None, None, "copy")
                return
            kind, checksum = self._with_retries(lambda: self._transfer(s), self.src.display(s.rel))
            self._record(s.rel, s.size, checksum, kind, "copied")
        except Exception as err:
            self._fail(self.src.display(s.rel), err)
        finally:
            self._slots.release()

    def _with_retries(self, action, what: str):
        for attempt in range(FILE_ATTEMPTS):
            try:
                return action()
            except Exception as err:
                if attempt + 1 == FILE_ATTEMPTS or not _retryable(err):
                    raise
                reason = str(err) if isinstance(err, SyncFailure) else describe_error(err)
                with self._lock:
                    self.result.retried.append((what, reason))
                time.sleep(random.uniform(0, min(20.0, 0.25 * 2**attempt)))
        raise AssertionError("unreachable")

    # -- bookkeeping --------------------------------------------------------------------------

    def _record(self, rel: str, size: int, checksum, kind, action: str) -> None:
        with self._lock:
            result = self.result
            if action in ("copied", "copy"):
                result.copied += 1
                result.bytes += size
            elif action == "skipped":
                result.skipped += 1
            else:
                result.deleted += 1
            result._rows.append((rel, size, checksum, kind, action))
        self._emit(action, rel, size)

    def _fail(self, path: str, reason) -> None:
        text = reason if isinstance(reason, str) else describe_error(reason)
        if isinstance(reason, SyncFailure):
            text = str(reason)
        with self._lock:
            self.result.failed.append((path, text))
        self._emit("failed", path, 0)

    def _emit(self, event: str, path: str, size: int) -> None:
        if self.progress is not None:
            with self._progress_lock:
                self.progress(event, path, size)

    def _bytes_callback(self, rel: str) -> Callable[[int], None]:
        return lambda n: self._emit("bytes", rel, n)

    # -- sameness -----------------------------------------------------------------------------

    def _quick_compare(self, s, d):
        """(kind, checksum) when the pair is known to be the same without reading or asking
        anything; None when undecided (a worker then looks closer)."""
        if isinstance(s, RemoteObject) and isinstance(d, RemoteObject):
            if cs.normalize_etag(s.etag) == cs.normalize_etag(d.etag) and self._is_digest(s):
                return self._etag_kind(s), cs.normalize_etag(s.etag)
            return None
        if isinstance(s, LocalFile) and isinstance(d, LocalFile):
            kind = cs.upload_kind(s.size)
            a = self.cache.get(s.path, s.identity).get(kind)
            if a is not None and a == self.cache.get(d.path, d.identity).get(kind):
                return kind, a
            return None
        local, remote = (s, d) if isinstance(s, LocalFile) else (d, s)
        kind = cs.kind_for_etag(remote.etag, remote.size)
        if kind is None:
            return None
        value = self.cache.get(local.path, local.identity).get(kind)
        if value is not None and value == cs.normalize_etag(remote.etag):
            return kind, value
        return None

    @staticmethod
    def _is_digest(obj: RemoteObject) -> bool:
        return cs.is_md5_etag(obj.etag) or cs.multipart_etag_parts(obj.etag) is not None

    @staticmethod
    def _etag_kind(obj: RemoteObject) -> str:
        return cs.kind_for_etag(obj.etag, obj.size) or (
            "md5" if cs.is_md5_etag(obj.etag) else "etag"
        )

    def _compare(self, s, d):
        """Like :meth:`_quick_compare`, but hashing files and asking S3 as needed; None
        means different."""
        if isinstance(s, LocalFile) and isinstance(d, LocalFile):
            kind = cs.upload_kind(s.size)
            a, b = self._digest(s, kind), self._digest(d, kind)
            return (kind, a) if a == b else None
        if isinstance(s, RemoteObject) and isinstance(d, RemoteObject):
            return self._compare_remote(s, d)
        local, remote = (s, d) if isinstance(s, LocalFile) else (d, s)
        kind = cs.kind_for_etag(remote.etag, remote.size)
        etag = cs.normalize_etag(remote.etag)
        if kind is not None and self._digest(local, kind) == etag:
            return kind, etag
        for kind, expected in self._remote_checks(remote):
            if self._digest(local, kind) == expected:
                return kind, expected
        return None

    def _compare_remote(self, s: RemoteObject, d: RemoteObject):
        if cs.normalize_etag(s.etag) == cs.normalize_etag(d.etag) and self._is_digest(s):
            return self._etag_kind(s), cs.normalize_etag(s.etag)
        a, b = self._head(s), self._head(d)
        if a is None or b is None:
            return None
        stored_a = cs.stored_checksum(a, s.etag)
        stored_b = cs.stored_checksum(b, d.etag)
        if stored_a is not None and stored_a == stored_b:
            algorithm, value, parts = stored_a
            if parts is None:
                return algorithm, value
            return f"{algorithm}-composite", f"{value}-{parts}"
        return None

    def _digest(self, f: LocalFile, kind: str) -> str:
        """A digest of a local file, from the cache or by reading it (and caching it)."""
        cached = self.cache.get(f.path, f.identity)
        if kind in cached:
            return cached[kind]
        kinds = {kind, cs.upload_kind(f.size)}
        started = time.time_ns()
        digests, count = cs.hash_file(f.path, kinds)
        if Identity.of(os.stat(f.path)) != f.identity or count != f.size:
            raise SyncFailure(f"{f.path} changed while it was being read; rerun the sync")
        with self._lock:
            self.result.hashed_files += 1
            self.result.hashed_bytes += count
        self.cache.put(f.path, f.identity, digests, started)
        return digests[kind]

    def _head(self, obj: RemoteObject, part_number: int | None = None) -> dict | None:
        """HEAD of the listed version (If-Match), with stored checksums (or of one part);
        None if the object changed or vanished since it was listed."""
        if part_number:
            # No If-Match here: some servers (moto) compare it with the part's ETag. A part
            # size from a newer version only yields an ETag that matches nothing.
            extra = {"PartNumber": part_number}
        else:
            extra = {"ChecksumMode": "ENABLED", "IfMatch": f'"{obj.etag}"'}
        try:
            return self.client.head_object(Bucket=obj.bucket, Key=obj.key, **extra)
        except ClientError as err:
            status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status in (404, 412):
                return None
            raise

    def _part_size(self, obj: RemoteObject, parts: int) -> int | None:
        """The part size of a multipart object: its first part's length."""
        if parts == 1:
            return max(obj.size, 1)
        head = self._head(obj, part_number=1)
        return int(head["ContentLength"]) if head else None

    def _remote_checks(self, obj: RemoteObject) -> list[tuple[str, str]]:
        """(kind, expected digest) pairs a local copy of ``obj`` must match one of, learnt
        with HEAD requests. An unencrypted object's ETag is MD5-based and decides alone,
        once the real part size of a multipart ETag is known; the stored checksum is the
        check when the ETag is no MD5 (SSE-KMS, SSE-C, or a server's own ETag form)."""
        head = self._head(obj)
        if head is None:
            return []
        etag = cs.normalize_etag(obj.etag)
        parts = cs.multipart_etag_parts(etag)
        encrypted = head.get("ServerSideEncryption") in KMS or head.get("SSECustomerAlgorithm")
        if not encrypted:
            if parts is not None:
                part_size = self._part_size(obj, parts)
                return [(f"etag:{part_size}", etag)] if part_size else []
            if cs.is_md5_etag(etag):
                return []  # compared already: the MD5 differs
        stored = cs.stored_checksum(head, etag)
        if stored is None:
            return []
        algorithm, value, count = stored
        if count is None:
            return [(algorithm, value)]
        part_size = self._part_size(obj, count)
        return [(f"{algorithm}:{part_size}", f"{value}-{count}")] if part_size else []

    # -- transfers ----------------------------------------------------------------------------

    def _transfer(self, s):
        if isinstance(s, LocalFile):
            if isinstance(self.dst, S3Prefix):
                return self._upload(s)
            return self._copy_local(s)
        if isinstance(self.dst, S3Prefix):
            return self._copy_remote(s)
        return self._download(s)

    def _upload(self, s: LocalFile) -> tuple[str, str]:
        bucket, key = self.dst.bucket, self.dst.key(s.rel)
        started = time.time_ns()
        with open(s.path, "rb") as handle:
            before = Identity.of(os.fstat(handle.fileno()))
            if cs.is_multipart(before.size):
                return self._upload_parts(s, handle, before, started)
            kind = cs.upload_kind(before.size)
            reader = _HashingReader(handle, [kind], before.size)
            # One PutObject is all s3transfer would send too; calling it directly saves its
            # per-file machinery (futures, thread hand-offs): a third of the client CPU time
            # per small file, which bounds the rate on many small files.
            with self._body_budget.hold(before.size):
                body = reader.read()
                answer = self._put_small(bucket, key, body)
            self._emit("bytes", s.rel, len(body))
        digest = reader.digests.result()[kind]
        if Identity.of(os.stat(s.path)) != before or reader.digests.count != before.size:
            raise SyncFailure(
                f"{s.path} changed while it was being uploaded; rerun the sync to send the "
                "new content"
            )
        if answer.get("ServerSideEncryption") in KMS:
            # The ETag of an SSE-KMS object is no MD5; S3 checked the checksum botocore
            # computed over the same bytes this engine hashed, and stores it.
            checksum = answer.get("Checksum")
            if not checksum:
                raise SyncFailure(
                    f"s3://{bucket}/{key}: SSE-KMS object and no checksum in S3's answer, so "
                    "the upload cannot be verified"
                )
            self.cache.put(s.path, before, {kind: digest}, started)
            return checksum  # a single PUT's: over the whole object
        if answer.get("ETag") != digest:
            raise SyncFailure(
                f"s3://{bucket}/{key}: S3 reports ETag {answer.get('ETag') or 'none'} but the "
                f"bytes sent have {cs.describe_kind(kind)[0]} {digest}; the data was altered "
                "on the way",
                transient=True,
            )
        self.cache.put(s.path, before, {kind: digest}, started)
        return kind, digest

    def _upload_parts(self, s: LocalFile, handle, before: Identity, started: int):
        """A multipart upload, verified by CRC-32: each part's is computed here as s3transfer
        reads the part and sent with it (botocore then computes none), S3 checks it before
        storing the part and answers the composite of them all, compared with this engine's.
        The content is then known to be what was read, so S3's multipart ETag is its digest
        for the next sync (cached with the CRC-32). A server that answers no checksum gets
        the file read again for its ETag. CRC-32 runs at 2 GB/s, MD5 at 0.7 GB/s: hashing
        every byte with MD5 as well would double this engine's CPU time per byte sent."""
        bucket, key = self.dst.bucket, self.dst.key(s.rel)
        part_size = cs.part_size_for(before.size)
        reader = _PartReader(handle, before.size)
        self._part_checksums[(bucket, key)] = reader.checksums
        try:
            future = self.tm.upload(
                reader,
                bucket,
                key,
                extra_args={"ChecksumAlgorithm": "CRC32"},
                subscribers=[_Known(before.size, None, self._bytes_callback(s.rel))],
            )
            future.result()
        finally:
            self._part_checksums.pop((bucket, key), None)
        answer = self.responses.pop(bucket, key)
        if Identity.of(os.stat(s.path)) != before or reader.count != before.size:
            raise SyncFailure(
                f"{s.path} changed while it was being uploaded; rerun the sync to send the "
                "new content"
            )
        ours = reader.composite()
        crc_kind, etag_kind = f"crc32:{part_size}", f"etag:{part_size}"
        checksum = answer.get("Checksum")
        # Some servers leave out the "-N" of a composite checksum.
        if checksum is not None and (
            checksum[0] != "crc32" or checksum[1].partition("-")[0] != ours.partition("-")[0]
        ):
            raise SyncFailure(
                f"s3://{bucket}/{key}: S3 reports checksum {checksum[1]} but the bytes sent "
                f"have CRC-32 {ours}; the data was altered on the way",
                transient=True,
            )
        etag = answer.get("ETag")
        if answer.get("ServerSideEncryption") in KMS:
            if checksum is None:
                raise SyncFailure(
                    f"s3://{bucket}/{key}: SSE-KMS object and no checksum in S3's answer, so "
                    "the upload cannot be verified"
                )
            self.cache.put(s.path, before, {crc_kind: ours}, started)
            return crc_kind, ours
        if checksum is None:
            # No checksum answered (some S3-compatible servers): the ETag decides.
            digests, count = cs.hash_file(s.path, [etag_kind])
            if count != before.size or Identity.of(os.stat(s.path)) != before:
                raise SyncFailure(f"{s.path} changed while it was being uploaded; rerun")
            if digests[etag_kind] != etag:
                raise SyncFailure(
                    f"s3://{bucket}/{key}: S3 reports ETag {etag or 'none'} but the file has "
                    f"{digests[etag_kind]}; the data was altered on the way",
                    transient=True,
                )
        digests = {crc_kind: ours}
        if cs.kind_for_etag(etag, before.size) == etag_kind:
            digests[etag_kind] = etag
        self.cache.put(s.path, before, digests, started)
        return (etag_kind, etag) if etag_kind in digests else (crc_kind, ours)

    def _part_checksum(self, params, **_) -> None:
        """Hands botocore the CRC-32 :class:`_PartReader` computed for an UploadPart."""
        checksums = self._part_checksums.get((params.get("Bucket"), params.get("Key")))
        value = checksums.get(params.get("PartNumber")) if checksums else None
        if value is not None:
            params["ChecksumCRC32"] = value

    def _put_small(self, bucket: str, key: str, body: bytes) -> dict:
        direct = self.direct if len(body) <= EXPECT_THRESHOLD else None
        if direct is None:
            return _answer_of(self.client.put_object(Bucket=bucket, Key=key, Body=body))
        answer = direct.put(bucket, key, body)
        if answer is None:
            answer = direct.through_botocore(bucket, key, body)
        return _answer_of(answer)

    def _download(self, s: RemoteObject) -> tuple[str, str]:
        problem = local_name_problem(s.rel)
        if problem:
            raise SyncFailure(f"cannot be written locally: {problem}")
        etag = cs.normalize_etag(s.etag)
        expected_kind = cs.kind_for_etag(etag, s.size)
        if expected_kind is None and cs.multipart_etag_parts(etag) is not None:
            part_size = self._part_size(s, cs.multipart_etag_parts(etag))
            if part_size is None:
                raise SyncFailure("the object changed after it was listed; rerun the sync")
            expected_kind = f"etag:{part_size}"
        own_kind = cs.upload_kind(s.size)
        kinds = {own_kind} | ({expected_kind} if expected_kind else set())
        path = self.dst.path(s.rel)
        out = AtomicFile(path)
        try:
            writer = _HashingWriter(out.file, kinds)
            if cs.is_multipart(s.size):
                future = self.tm.download(
                    s.bucket,
                    s.key,
                    writer,
                    subscribers=[_Known(s.size, etag, self._bytes_callback(s.rel))],
                )
                future.result()
            else:
                self._get_small(s, etag, writer)
            out.file.flush()
            digests = writer.digests.result()
            if writer.digests.count != s.size:
                raise SyncFailure(
                    f"received {writer.digests.count} bytes but the listing said {s.size}; "
                    "the object changed after it was listed, rerun the sync"
                )
            if expected_kind and digests[expected_kind] == etag:
                verified = (expected_kind, etag)
            else:
                verified = self._verify_by_checksum(s, out.fd)
            mtime_ns = _mtime_ns(s.last_modified)
            st = out.commit(mtime_ns)
        except BaseException:
            out.abort()
            raise
        if mtime_ns is not None:
            self._cache_written(path, st, mtime_ns, digests)
        return verified

    def _cache_written(self, path: str, st: os.stat_result, mtime_ns: int, digests) -> None:
        """Cache the digests of a file this engine just put in place, if the file there is
        still the one written (same inode and explicit mtime) and its mtime is safely old."""
        final = os.stat(path)
        identity = Identity.of(final)
        if final.st_ino == st.st_ino and final.st_mtime_ns == mtime_ns:
            if written_settled(identity, time.time_ns()):
                self.cache.put(path, identity, digests, None)

    def _get_small(self, s: RemoteObject, etag: str, writer: _HashingWriter) -> None:
        """One GetObject of the listed version (If-Match), streamed into ``writer``."""
        try:
            answer = self.client.get_object(Bucket=s.bucket, Key=s.key, IfMatch=f'"{etag}"')
        except ClientError as err:
            if err.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 412:
                raise SyncFailure("the object changed after it was listed; rerun the sync") from err
            raise
        body = answer["Body"]
        try:
            for chunk in body.iter_chunks(256 * 1024):
                writer.write(chunk)
                self._emit("bytes", s.rel, len(chunk))
        finally:
            body.close()

    def _verify_by_checksum(self, s: RemoteObject, fd: int) -> tuple[str, str]:
        """A downloaded file whose bytes did not give the ETag: accepted only if it matches
        the checksum S3 stores (the ETag of an SSE-KMS object is no MD5)."""
        head = self._head(s)
        if head is None:
            raise SyncFailure("the object changed after it was listed; rerun the sync")
        stored = cs.stored_checksum(head, s.etag)
        if stored is not None:
            algorithm, value, parts = stored
            kind, expected, part_size = algorithm, value, None
            if parts is not None:
                part_size = self._part_size(s, parts)
                kind, expected = f"{algorithm}:{part_size}", f"{value}-{parts}"
            if parts is None or part_size is not None:
                digests, _ = cs.hash_file("", [kind], fd=fd)
                if digests[kind] == expected:
                    return kind, expected
        encrypted = head.get("ServerSideEncryption") in KMS or head.get("SSECustomerAlgorithm")
        if stored is None and (encrypted or not self._is_digest(s)):
            others = sorted(k[8:] for k in head if k.startswith("Checksum") and k[8:].isupper())
            raise SyncFailure(
                f"cannot verify the download: the ETag {s.etag} is no MD5 "
                f"({'encrypted object' if encrypted else 'server-specific ETag'}) and the "
                f"object has no stored checksum this engine computes (SHA256, CRC32)"
                + (f"; it has {', '.join(others)}" if others else "")
                + "; not written"
            )
        raise SyncFailure(
            f"downloaded bytes do not match the listed ETag {s.etag}"
            + (" or the stored checksum" if stored else "")
            + ": corrupted in transit; not written",
            transient=True,
        )

    def _copy_remote(self, s: RemoteObject) -> tuple[str, str]:
        bucket, key = self.dst.bucket, self.dst.key(s.rel)
        etag = cs.normalize_etag(s.etag)
        source = {"Bucket": self.src.bucket, "Key": s.key}
        common = {"CopySourceIfMatch": f'"{etag}"'}
        if cs.multipart_etag_parts(etag) is None and s.size <= cs.MAX_SINGLE_COPY:
            # One CopyObject keeps a single-part object single-part, so its ETag (the MD5)
            # carries over and the next sync compares the two from the listings alone.
            answer = _answer_of(
                self.client.copy_object(CopySource=source, Bucket=bucket, Key=key, **common)
            )
            self._emit("bytes", s.rel, s.size)
        else:
            future = self.tm.copy(
                source,
                bucket,
                key,
                extra_args=common,
                subscribers=[_Known(s.size, etag, self._bytes_callback(s.rel))],
            )
            future.result()
            answer = self.responses.pop(bucket, key)
        new = answer.get("ETag")
        if new == etag:
            return self._etag_kind(s), etag
        if answer.get("ServerSideEncryption") in KMS or (
            cs.multipart_etag_parts(etag) is not None and cs.kind_for_etag(etag, s.size) is None
        ):
            # No comparable ETag (encrypted, or the source has another part size): the
            # server-side copy was pinned to the listed source version by If-Match.
            return "etag", new
        raise SyncFailure(
            f"the copy s3://{bucket}/{key} has ETag {new or 'none'}, the source {etag}",
            transient=True,
        )

    def _copy_local(self, s: LocalFile) -> tuple[str, str]:
        path = self.dst.path(s.rel)
        started = time.time_ns()
        with open(s.path, "rb", buffering=0) as handle:
            before = Identity.of(os.fstat(handle.fileno()))
            kind = cs.upload_kind(before.size)
            digests = cs.StreamDigests([kind])
            out = AtomicFile(path)
            try:
                buffer = memoryview(bytearray(cs.MiB))
                while n := handle.readinto(buffer):
                    out.file.write(buffer[:n])
                    digests.update(buffer[:n])
                    self._emit("bytes", s.rel, n)
                digest = digests.result()[kind]
                if Identity.of(os.stat(s.path)) != before or digests.count != before.size:
                    raise SyncFailure(f"{s.path} changed while it was being copied; rerun")
                known = self.cache.get(s.path, before).get(kind)
                if known is not None and known != digest:
                    raise SyncFailure(
                        f"{s.path} read back with {kind} {digest}, not the {known} recorded for "
                        "it unchanged: a read error",
                        transient=True,
                    )
                st = out.commit(before.mtime_ns)
            except BaseException:
                out.abort()
                raise
        self.cache.put(s.path, before, {kind: digest}, started)
        self._cache_written(path, st, before.mtime_ns, {kind: digest})
        return kind, digest

    # -- deletions ----------------------------------------------------------------------------

    def _delete_all(self) -> None:
        if not self._deletions:
            return
        if self._listing_incomplete:
            self._fail(
                self.dst.display(),
                f"{len(self._deletions)} deletions skipped: a listing was incomplete (see the "
                "errors above), so absence from the source proves nothing; fix them and rerun",
            )
            return
        if self.dry_run:
            for d in self._deletions:
                self._record(d.rel, d.size, None, None, "delete")
            return
        if isinstance(self.dst, LocalDir):
            for d in self._deletions:
                try:
                    os.unlink(d.path)
                except FileNotFoundError:
                    pass
                except OSError as err:
                    self._fail(d.path, f"cannot delete: {describe_error(err)}")
                    continue
                self._record(d.rel, d.size, None, None, "deleted")
            return
        for start in range(0, len(self._deletions), DELETE_BATCH):
            self._delete_batch(self._deletions[start : start + DELETE_BATCH])

    def _delete_batch(self, batch: list[RemoteObject]) -> None:
        objects = [{"Key": d.key} for d in batch]
        try:
            answer = self._with_retries(
                lambda: self.client.delete_objects(
                    Bucket=self.dst.bucket, Delete={"Objects": objects, "Quiet": True}
                ),
                self.dst.display(),
            )
        except Exception as err:
            for d in batch:
                self._fail(self.dst.display(d.rel), f"cannot delete: {describe_error(err)}")
            return
        errors = {e.get("Key"): e for e in answer.get("Errors", [])}
        for d in batch:
            error = errors.get(d.key)
            if error is None:
                self._record(d.rel, d.size, None, None, "deleted")
            else:
                self._fail(
                    self.dst.display(d.rel),
                    f"cannot delete: {error.get('Code')}: {error.get('Message')}",
                )
