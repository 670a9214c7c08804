"""Streamed, sorted listings of both sides and their merge.

Both sides come as generators in UTF-8 binary order of the relative path (the order S3
lists keys in; for valid UTF-8 it is also Python's ``str`` order), so a sync walks the two in
step and never holds a whole listing in memory. The local walk sorts each directory's
entries with ``name + "/"`` for directories: every path below a directory starts with that
string, so per-directory order is the global order.

Listing speed: an S3 listing is cut into key ranges at the local side's paths and the
ranges are listed in parallel (:func:`list_s3`); its pages are parsed by
:class:`ResponseParser`, which reads the XML directly instead of through botocore's shape
model, and timestamps by :func:`parse_timestamp`. The local walk runs a thread ahead.
"""

from __future__ import annotations

import itertools
import os
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from fnmatch import fnmatchcase
from xml.etree import ElementTree

import botocore.handlers
from botocore.parsers import DEFAULT_TIMESTAMP_PARSER, RestXMLParser
from botocore.parsers import ResponseParserFactory as BotocoreParserFactory

from confluence.sync.atomic import PARTIAL_SUFFIX
from confluence.sync.cache import Identity
from confluence.sync.locations import LocalDir, S3Prefix, check_relative


@dataclass(slots=True)
class LocalFile:
    rel: str
    path: str
    identity: Identity

    @property
    def size(self) -> int:
        return self.identity.size


@dataclass(slots=True)
class RemoteObject:
    rel: str
    bucket: str
    key: str
    size: int
    etag: str  # without quotes
    last_modified: datetime | None


Entry = LocalFile | RemoteObject
ErrorHandler = Callable[[str, str], None]
_END = object()  # closes a queue of listing batches


class ListingOrderError(RuntimeError):
    """A listing came out of order; merging it could delete or skip the wrong files."""


class Filters:
    """``--include``/``--exclude`` rules, applied in order with the last match winning (like
    ``aws s3 sync``); everything is included when no rule matches. Patterns are shell globs
    on the relative path, where ``*`` also matches ``/``."""

    def __init__(self, rules: Sequence[tuple[str, str]] = ()) -> None:
        for kind, pattern in rules:
            if kind not in ("include", "exclude"):
                raise ValueError(f"filter kind must be 'include' or 'exclude', got {kind!r}")
            if not pattern:
                raise ValueError(f"empty --{kind} pattern")
        self.rules = list(rules)

    def __call__(self, rel: str) -> bool:
        for kind, pattern in reversed(self.rules):
            if fnmatchcase(rel, pattern):
                return kind == "include"
        return True


def walk_local(
    root: str, on_error: ErrorHandler, on_partial: Callable[[str], None] | None = None
) -> Iterator[LocalFile]:
    """Regular files below ``root`` (symbolic links to files followed, to directories not).

    The walk runs in a thread a few hundred files ahead of the consumer: its ``stat`` calls
    release the GIL, so they overlap with the work on the files already listed."""
    if not os.path.isdir(root):
        return
    batches: queue.Queue = queue.Queue(maxsize=8)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                batches.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        batch: list[LocalFile] = []
        try:
            for entry in _walk(root, "", on_error, on_partial):
                batch.append(entry)
                if len(batch) >= WALK_BATCH:
                    if not put(batch):
                        return
                    batch = []
            if put(batch):
                put(_END)
        except BaseException as err:  # handed to the consumer, which raises it
            put(err)

    thread = threading.Thread(target=produce, name=f"walk-{root}", daemon=True)
    thread.start()
    try:
        while True:
            item = batches.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield from item
    finally:
        stop.set()


WALK_BATCH = 256


def _walk(directory, rel_dir, on_error, on_partial) -> Iterator[LocalFile]:
    try:
        with os.scandir(directory) as scan:
            children = list(scan)
    except OSError as err:
        on_error(directory, f"cannot list directory: {err.strerror or err}")
        return
    for is_dir, child in _in_key_order(children):
        rel = rel_dir + child.name
        try:
            rel.encode("utf-8")
        except UnicodeEncodeError:
            on_error(child.path, "file name is not valid UTF-8 (S3 keys must be); rename it")
            continue
        if is_dir:
            yield from _walk(child.path, rel + "/", on_error, on_partial)
            continue
        if child.name.endswith(PARTIAL_SUFFIX):
            if on_partial is not None:
                on_partial(child.path)
            continue
        try:
            if not child.is_file():
                continue  # sockets, fifos, devices, dangling links
            st = child.stat()
        except FileNotFoundError:
            continue  # removed while listing (e.g. another writer's temporary file)
        except OSError as err:
            on_error(child.path, f"cannot stat: {err.strerror or err}")
            continue
        yield LocalFile(rel, child.path, Identity.of(st))


def stat_local(root: LocalDir, rels: Iterable[str], on_missing: ErrorHandler | None):
    """The given files of ``root``, in order; a missing one is reported (or skipped when
    ``on_missing`` is None)."""
    for rel in rels:
        path = root.path(rel)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            if on_missing is not None:
                on_missing(path, "listed in the file list but missing in the source")
            continue
        except OSError as err:
            if on_missing is not None:
                on_missing(path, f"cannot stat: {err.strerror or err}")
            continue
        if not os.path.isfile(path):
            if on_missing is not None:
                on_missing(path, "listed in the file list but not a regular file")
            continue
        yield LocalFile(rel, path, Identity.of(st))


PAGE_SIZE = 1000  # keys per ListObjectsV2 page (S3's maximum and default)
PARALLEL_LISTINGS = 8  # key ranges listed at once


def list_s3(
    client,
    location: S3Prefix,
    sub_prefix: str = "",
    splits: Iterable[str] = (),
    parallel: int = PARALLEL_LISTINGS,
) -> Iterator[RemoteObject]:
    """Objects under the location (and ``sub_prefix``, a relative folder ending in "/"), in
    key order. Folder placeholder keys (ending in "/") are skipped.

    ``splits``: sorted relative paths at which the key space is cut into ranges, listed
    ``parallel`` at a time in threads (each a page or two ahead of the consumer) and
    yielded one range after the other. Each page costs a round trip and its parsing, so a
    sequential listing of a large prefix is bound by latency; with splits every
    ``PAGE_SIZE - 1`` keys of the other side (see :func:`sample_local`) each range is one
    page when both sides hold the same keys, and the request count stays that of a
    sequential listing. Without splits one page is still fetched ahead of the consumer.
    """
    prefix = location.list_prefix + sub_prefix
    bounds = [prefix + rel for rel in splits]
    edges = [None, *bounds, None]
    ranges = [
        _KeyRange(client, location.bucket, prefix, lo, hi)
        for lo, hi in zip(edges, edges[1:], strict=False)
    ]
    window = max(1, parallel)
    try:
        for index, current in enumerate(ranges):
            objects = current.objects()
            if index == 0:
                # The other ranges start once the first page shows there is more to list,
                # so a push into an empty or small prefix sends one request, not one per range.
                head = next(objects, None)
                objects = itertools.chain(() if head is None else (head,), objects)
            if not current.reached_end:
                for ahead in ranges[index + 1 : index + window]:
                    ahead.start()
            for obj in objects:
                key = obj["Key"]
                if key.endswith("/"):
                    continue
                yield RemoteObject(
                    location.rel(key),
                    location.bucket,
                    key,
                    int(obj["Size"]),
                    obj.get("ETag", "").strip('"'),
                    obj.get("LastModified"),
                )
            if current.reached_end:
                return  # nothing after this range's last key: the later ranges are empty
    finally:
        for each in ranges:
            each.stop.set()


class _KeyRange:
    """Keys ``lo <= key < hi`` under a prefix (None: unbounded), listed in a thread that
    keeps up to two pages ready for :meth:`objects`."""

    def __init__(self, client, bucket: str, prefix: str, lo: str | None, hi: str | None):
        self.client, self.bucket, self.prefix, self.lo, self.hi = client, bucket, prefix, lo, hi
        self.pages: queue.Queue = queue.Queue(maxsize=2)
        self.stop = threading.Event()
        self.reached_end = False  # no key after this range's last page: later ranges are empty
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._produce, name=f"list-s3://{self.bucket}", daemon=True
            )
            self._thread.start()

    def _produce(self) -> None:
        lo, hi = self.lo, self.hi
        request = {"Bucket": self.bucket, "Prefix": self.prefix, "MaxKeys": PAGE_SIZE}
        if lo:
            # Strictly after a string just below lo: the few keys between are dropped below.
            request["StartAfter"] = lo[:-1]
        try:
            while not self.stop.is_set():
                page = self.client.list_objects_v2(**request)
                items = page.get("Contents", [])
                inside = [
                    obj
                    for obj in items
                    if (lo is None or obj["Key"] >= lo) and (hi is None or obj["Key"] < hi)
                ]
                past_end = hi is not None and items and items[-1]["Key"] >= hi
                truncated = page.get("IsTruncated")
                self.reached_end = not past_end and not truncated
                if not self._put(inside):
                    return
                if past_end or not truncated:
                    break
                request.pop("StartAfter", None)
                request["ContinuationToken"] = page["NextContinuationToken"]
            self._put(_END)
        except BaseException as err:  # handed to the consumer, which raises it
            self._put(err)

    def _put(self, item) -> bool:
        while not self.stop.is_set():
            try:
                self.pages.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def objects(self) -> Iterator[dict]:
        self.start()
        while True:
            item = self.pages.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield from item


def sample_local(root: str, every: int = PAGE_SIZE - 1) -> list[str]:
    """Every ``every``-th relative path below ``root`` in listing order (names only, no
    stat): where to split the listing of the other side (see :func:`list_s3`)."""
    out: list[str] = []
    if every < 1 or not os.path.isdir(root):
        return out
    count = 0
    for rel in _names(root, ""):
        count += 1
        if count % every == 0:
            out.append(rel)
    return out


def _in_key_order(children: list[os.DirEntry]) -> list[tuple[bool, os.DirEntry]]:
    """(is directory, entry) sorted as their keys sort: a folder as its name + "/"."""
    keyed = []
    for child in children:
        try:
            is_dir = child.is_dir(follow_symlinks=False)
        except OSError:
            is_dir = False
        keyed.append((child.name + "/" if is_dir else child.name, is_dir, child))
    keyed.sort(key=lambda item: item[0])
    return [(is_dir, child) for _, is_dir, child in keyed]


def _names(directory: str, rel_dir: str) -> Iterator[str]:
    try:
        with os.scandir(directory) as scan:
            children = list(scan)
    except OSError:
        return  # the walk proper reports it
    for is_dir, child in _in_key_order(children):
        try:
            child.name.encode("utf-8")
        except UnicodeEncodeError:
            continue  # not a possible key; the walk proper reports it
        if is_dir:
            yield from _names(child.path, rel_dir + child.name + "/")
        elif not child.name.endswith(PARTIAL_SUFFIX):
            yield rel_dir + child.name


def head_s3(client, location: S3Prefix, rels: Iterable[str], on_missing: ErrorHandler, pool):
    """The given objects, in order, from HEAD requests run ``pool``-parallel in batches."""
    from botocore.exceptions import ClientError

    def head(rel: str):
        key = location.key(rel)
        try:
            answer = client.head_object(Bucket=location.bucket, Key=key)
        except ClientError as err:
            status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status == 404:
                return rel, None, "listed in the file list but missing in the source"
            return rel, None, f"HEAD failed: {err}"
        obj = RemoteObject(
            rel,
            location.bucket,
            key,
            int(answer["ContentLength"]),
            answer.get("ETag", "").strip('"'),
            answer.get("LastModified"),
        )
        return rel, obj, None

    batch: list[str] = []
    for rel in list(rels) + [None]:
        if rel is not None:
            batch.append(rel)
            if len(batch) < 256:
                continue
        for rel_done, obj, problem in pool.map(head, batch):
            if obj is None:
                on_missing(location.display(rel_done), problem)
            else:
                yield obj
        batch = []


def clean_file_list(files: Iterable[str]) -> list[str]:
    """Relative paths of a file list, checked, sorted and without duplicates."""
    cleaned = set()
    for rel in files:
        try:
            cleaned.add(check_relative(str(rel)))
        except ValueError as err:
            raise ValueError(f"file list: {err}") from None
    return sorted(cleaned)


def common_folder(rels: Sequence[str]) -> str:
    """The deepest folder (ending in "/", or "") containing every one of the sorted ``rels``."""
    if not rels:
        return ""
    first, last = rels[0].split("/")[:-1], rels[-1].split("/")[:-1]
    common = []
    for a, b in zip(first, last, strict=False):
        if a != b:
            break
        common.append(a)
    return "/".join(common) + "/" if common else ""


def merge(
    source: Iterator[Entry], destination: Iterator[Entry]
) -> Iterator[tuple[str, Entry | None, Entry | None]]:
    """(relative path, source entry or None, destination entry or None) in path order."""
    src = _ordered(source, "source")
    dst = _ordered(destination, "destination")
    s = next(src, None)
    d = next(dst, None)
    while s is not None or d is not None:
        if d is None or (s is not None and s.rel < d.rel):
            yield s.rel, s, None
            s = next(src, None)
        elif s is None or d.rel < s.rel:
            yield d.rel, None, d
            d = next(dst, None)
        else:
            yield s.rel, s, d
            s = next(src, None)
            d = next(dst, None)


def _ordered(entries: Iterator[Entry], side: str) -> Iterator[Entry]:
    previous = None
    for entry in entries:
        if previous is not None and entry.rel <= previous:
            raise ListingOrderError(
                f"the {side} listing is not in UTF-8 binary order ({previous!r} then "
                f"{entry.rel!r}); refusing to continue, as merging it could skip or delete "
                "the wrong files"
            )
        previous = entry.rel
        yield entry


# -- parsing listing pages -------------------------------------------------------------------

_TEXT = {"Name", "Prefix", "Delimiter", "EncodingType", "ContinuationToken"}
_TEXT |= {"NextContinuationToken", "StartAfter"}
_OBJECT_TEXT = {"Key", "ETag", "StorageClass", "ChecksumType"}


def parse_timestamp(value):
    """botocore's timestamp parser, fast for the ISO 8601 form S3 lists LastModified in.

    botocore parses every timestamp with dateutil, about half of its time parsing a listing
    page; ``datetime.fromisoformat`` reads "2024-01-01T00:00:00.000Z" some 30 times faster.
    Other forms (HTTP dates of HEAD answers, epoch seconds) go to botocore's parser."""
    if isinstance(value, str) and len(value) >= 20 and value[10:11] == "T":
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            pass
    return DEFAULT_TIMESTAMP_PARSER(value)


class ResponseParser(RestXMLParser):
    """botocore's S3 response parser, with a direct reading of ListObjectsV2 pages.

    botocore turns each element of a page into Python through its shape model, about
    25 ms per 1,000 keys; reading the few elements a page has straight from the XML tree
    takes a fifth of that. The result is the same dictionary (botocore's handlers then
    decode the URL-encoded keys as usual); a page with any element not handled here goes
    to botocore's own parsing."""

    _root = None

    def parse(self, response, shape):
        if is_listing(shape) and response.get("status_code") == 200:
            # What botocore's _handle_200_error does for S3 (its second parse of every page
            # is skipped for listings, see skip_listing_200_check): an error document or
            # a truncated body under a 200 is a 500, to be retried.
            try:
                self._root = ElementTree.fromstring(response.get("body") or b"")
            except (ElementTree.ParseError, TypeError, ValueError):
                self._root = None
            if self._root is None or _local_name(self._root.tag) == "Error":
                response["status_code"] = 500
        return super().parse(response, shape)

    def _parse_payload(self, response, shape, member_shapes, final_parsed):
        if is_listing(shape) and self._root is not None:
            parsed = self._list_page(self._root)
            if parsed is not None:
                final_parsed.update(parsed)
                return
        super()._parse_payload(response, shape, member_shapes, final_parsed)

    def _list_page(self, root) -> dict | None:
        if _local_name(root.tag) != "ListBucketResult":
            return None
        out: dict = {}
        contents, prefixes = [], []
        for child in root:
            tag = _local_name(child.tag)
            text = child.text or ""
            if tag == "Contents":
                item = self._object(child)
                if item is None:
                    return None
                contents.append(item)
            elif tag == "CommonPrefixes":
                inner = list(child)
                if len(inner) != 1 or _local_name(inner[0].tag) != "Prefix":
                    return None
                prefixes.append({"Prefix": inner[0].text or ""})
            elif tag in _TEXT:
                out[tag] = text
            elif tag in ("MaxKeys", "KeyCount"):
                out[tag] = int(text)
            elif tag == "IsTruncated":
                out[tag] = text.strip().lower() == "true"
            else:
                return None
        if contents:
            out["Contents"] = contents
        if prefixes:
            out["CommonPrefixes"] = prefixes
        return out

    def _object(self, element) -> dict | None:
        item: dict = {}
        for field in element:
            name = _local_name(field.tag)
            text = field.text or ""
            if name in _OBJECT_TEXT:
                item[name] = text
            elif name == "Size":
                item[name] = int(text)
            elif name == "LastModified":
                item[name] = self._timestamp_parser(text)
            elif name == "ChecksumAlgorithm":
                item.setdefault(name, []).append(text)
            elif name == "Owner":
                item[name] = {_local_name(e.tag): e.text or "" for e in field}
            else:
                return None
        return item


def _local_name(tag: str) -> str:
    return tag.rpartition("}")[2]


def is_listing(shape) -> bool:
    return shape is not None and shape.name == "ListObjectsV2Output"


def skip_listing_200_check(client) -> None:
    """Have ``client`` skip botocore's check of S3's 200 answers for an error document for
    ListObjectsV2 only, which :class:`ResponseParser` makes while parsing the page once:
    botocore parses the whole XML a second time for it (a fifth of a listing's CPU time)."""
    check = getattr(botocore.handlers, "_handle_200_error", None)
    if check is None:
        return  # another botocore: keep its check as it is

    def other_operations(operation_model, **kwargs):
        if not is_listing(operation_model.output_shape):
            check(operation_model=operation_model, **kwargs)

    client.meta.events.unregister("before-parse.s3.*", check)
    client.meta.events.register_first("before-parse.s3.*", other_operations)


class ResponseParserFactory(BotocoreParserFactory):
    """Makes :class:`ResponseParser` for S3 (with :func:`parse_timestamp`) and botocore's
    parsers, with that timestamp parser, for everything else."""

    def __init__(self) -> None:
        super().__init__()
        self.set_parser_defaults(timestamp_parser=parse_timestamp)

    def create_parser(self, protocol_name):
        if protocol_name == "rest-xml":
            return ResponseParser(timestamp_parser=parse_timestamp)
        return super().create_parser(protocol_name)
