"""The local digest cache: a no-op resync reads no file, it looks the digests up here.

Rows are keyed on the absolute path and valid only while the file keeps the size, mtime,
ctime and inode it had when it was hashed. mtime alone is not enough: tools restore it
(``touch -d``, ``rsync -t``, ``tar x``), so a same-size edit with its mtime put back would
look unchanged; ctime cannot be set from user space and changes on every write or utime.

A row is written only when later edits are sure to change that identity: the file's
timestamps must be older than when hashing started by more than the file system's
timestamp granularity (git's "racily clean" problem: an edit within the same clock tick
keeps the timestamps). Files the engine wrote itself, with an explicit mtime in the past,
are safe as soon as they are in place.

The database is sqlite in WAL mode, shared by concurrent sync processes; a lost or corrupt
cache only costs hashing again.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

DEFAULT_PATH = "~/.cache/confluence/sync.sqlite"
ENV_VAR = "CONFLUENCE_SYNC_CACHE"
_FLUSH_EVERY = 500
_DIRECTORIES_KEPT = 16
# Linux stamps files from a clock that advances once per jiffy (at most 10 ms); file systems
# with whole-second timestamps (or 2 s, FAT) need the larger margin.
_FINE_MARGIN_NS = 20_000_000
_COARSE_MARGIN_NS = 2_000_000_000


@dataclass(frozen=True, slots=True)
class Identity:
    """What must not change for a cached digest to stay valid."""

    size: int
    mtime_ns: int
    ctime_ns: int
    ino: int

    @classmethod
    def of(cls, st: os.stat_result) -> Identity:
        return cls(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def settled(identity: Identity, started_ns: int) -> bool:
    """Whether any edit made after ``started_ns`` must change the file's timestamps."""
    coarse = identity.mtime_ns % 1_000_000_000 == 0 and identity.ctime_ns % 1_000_000_000 == 0
    margin = _COARSE_MARGIN_NS if coarse else _FINE_MARGIN_NS
    return max(identity.mtime_ns, identity.ctime_ns) < started_ns - margin


def written_settled(identity: Identity, now_ns: int) -> bool:
    """For a file the engine wrote and then gave an explicit mtime (in the past): whether
    any later edit must change that mtime, i.e. the mtime lies further back than the file
    system's timestamp granularity (judged from the ctime the file system just set)."""
    coarse = identity.ctime_ns % 1_000_000_000 == 0
    return identity.mtime_ns < now_ns - (_COARSE_MARGIN_NS if coarse else _FINE_MARGIN_NS)


def default_path() -> str:
    return os.path.expanduser(os.environ.get(ENV_VAR) or DEFAULT_PATH)


class DigestCache:
    """Thread-safe digest cache; :meth:`close` writes what is pending.

    Rows are read a directory at a time (a sync visits files directory by directory), which
    costs one query per directory instead of one per file.
    """

    def __init__(self, path: str | None = None) -> None:
        self.path = path or default_path()
        self._lock = threading.Lock()
        self._pending: dict[str, tuple] = {}
        self._directories: OrderedDict[str, dict[str, tuple]] = OrderedDict()
        self._db: sqlite3.Connection | None = None
        try:
            self._db = self._open(self.path)
        except (sqlite3.Error, OSError) as err:
            print(
                f"confluence sync: digest cache {self.path} unusable ({err}); "
                f"files will be hashed again. Set {ENV_VAR} to a writable file to fix.",
                file=sys.stderr,
            )

    @staticmethod
    def _open(path: str) -> sqlite3.Connection:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        db = sqlite3.connect(path, timeout=30, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute(
            "CREATE TABLE IF NOT EXISTS files (directory TEXT, name TEXT, size INTEGER,"
            " mtime_ns INTEGER, ctime_ns INTEGER, ino INTEGER, digests TEXT,"
            " PRIMARY KEY (directory, name)) WITHOUT ROWID"
        )
        return db

    def _directory_rows(self, directory: str) -> dict[str, tuple]:
        rows = self._directories.get(directory)
        if rows is not None:
            self._directories.move_to_end(directory)
            return rows
        rows = {}
        if self._db is not None:
            try:
                query = self._db.execute(
                    "SELECT name, size, mtime_ns, ctime_ns, ino, digests FROM files"
                    " WHERE directory = ?",
                    (directory,),
                )
                rows = {row[0]: row[1:] for row in query}
            except sqlite3.Error:
                rows = {}
        self._directories[directory] = rows
        if len(self._directories) > _DIRECTORIES_KEPT:
            self._directories.popitem(last=False)
        return rows

    def get(self, path: str, identity: Identity) -> dict[str, str]:
        """The cached digests of ``path`` if its identity is unchanged, else {}."""
        directory, name = os.path.split(path)
        with self._lock:
            row = self._pending.get(path)
            if row is None:
                row = self._directory_rows(directory).get(name)
            else:
                row = row[2:]
        if row is None or row[0:4] != _fields(identity):
            return {}
        return _decode(row[4])

    def put(
        self, path: str, identity: Identity, digests: dict[str, str], started_ns: int | None
    ) -> bool:
        """Record digests of ``path`` as it was at ``identity``; merges with digests already
        cached for the same identity. ``started_ns``: when reading started (None: the engine
        wrote the file and set its mtime explicitly). Returns whether it was recorded."""
        if started_ns is not None and not settled(identity, started_ns):
            return False
        merged = {**self.get(path, identity), **digests}
        directory, name = os.path.split(path)
        values = (*_fields(identity), json.dumps(merged, sort_keys=True))
        with self._lock:
            self._pending[path] = (directory, name, *values)
            if directory in self._directories:
                self._directories[directory][name] = values
            if len(self._pending) >= _FLUSH_EVERY:
                self._flush_locked()
        return True

    def flush(self) -> None:
        with self._lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        rows, self._pending = list(self._pending.values()), {}
        if self._db is None or not rows:
            return
        for attempt in range(3):
            try:
                with self._db:
                    self._db.execute("BEGIN IMMEDIATE")
                    self._db.executemany(
                        "INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?, ?)", rows
                    )
                return
            except sqlite3.OperationalError:
                # Another process holds the write lock past the busy timeout.
                time.sleep(0.5 * (attempt + 1))
            except sqlite3.Error:
                return

    def close(self) -> None:
        self.flush()
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


def _fields(identity: Identity) -> tuple[int, int, int, int]:
    return identity.size, identity.mtime_ns, identity.ctime_ns, identity.ino


_MD5_ONLY = '{"md5": "'


def _decode(text: str) -> dict[str, str]:
    # Most rows hold one MD5: read it without the JSON parser, which a no-op resync of many
    # small files would otherwise call once per file.
    if len(text) == 43 and text.startswith(_MD5_ONLY) and text.endswith('"}'):
        return {"md5": text[9:41]}
    try:
        return json.loads(text)
    except ValueError:
        return {}
