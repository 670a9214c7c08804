"""Streamed, sorted listings of both sides and their merge.

Both sides come as generators in UTF-8 binary order of the relative path (the order S3
lists keys in; for valid UTF-8 it is also Python's ``str`` order), so a sync walks the two in
step and never holds a whole listing in memory. The local walk sorts each directory's
entries with ``name + "/"`` for directories: every path below a directory starts with that
string, so per-directory order is the global order.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from fnmatch import fnmatchcase

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
    """Regular files below ``root`` (symbolic links to files followed, to directories not)."""
    if not os.path.isdir(root):
        return
    yield from _walk(root, "", on_error, on_partial)


def _walk(directory, rel_dir, on_error, on_partial) -> Iterator[LocalFile]:
    try:
        with os.scandir(directory) as scan:
            children = list(scan)
    except OSError as err:
        on_error(directory, f"cannot list directory: {err.strerror or err}")
        return
    keyed = []
    for child in children:
        try:
            is_dir = child.is_dir(follow_symlinks=False)
        except OSError:
            is_dir = False
        keyed.append((child.name + "/" if is_dir else child.name, is_dir, child))
    keyed.sort(key=lambda item: item[0])
    for _, is_dir, child in keyed:
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


_END = object()


def list_s3(client, location: S3Prefix, sub_prefix: str = "") -> Iterator[RemoteObject]:
    """Objects under the location (and ``sub_prefix``, a relative folder ending in "/"),
    one page fetched ahead in a thread so listing overlaps with the work on each page.
    Folder placeholder keys (ending in "/") are skipped."""
    pages: queue.Queue = queue.Queue(maxsize=2)
    stop = threading.Event()
    prefix = location.list_prefix + sub_prefix

    def produce() -> None:
        try:
            paginator = client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=location.bucket, Prefix=prefix):
                item = page.get("Contents", [])
                while not stop.is_set():
                    try:
                        pages.put(item, timeout=0.2)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            pages.put(_END)
        except BaseException as err:  # handed to the consumer, which raises it
            pages.put(err)

    thread = threading.Thread(target=produce, name=f"list-s3://{location.bucket}", daemon=True)
    thread.start()
    try:
        while True:
            item = pages.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            for obj in item:
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
    finally:
        stop.set()


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
