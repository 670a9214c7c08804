"""Local files that appear under their name only when complete.

Where the kernel and file system allow, the data goes into an unnamed file (``O_TMPFILE``)
that is linked into the directory only once complete and verified: a process killed
mid-write leaves nothing at all. Linking an unnamed file takes either its ``/proc/self/fd``
path or ``linkat(AT_EMPTY_PATH)`` (Linux 6.10+, or root); which works depends on the system
(mount namespaces can refuse the first), so it is probed once per file system. Elsewhere
(NFS/EFS, macOS) the data goes to a hidden temporary name in the same directory, ending in
:data:`PARTIAL_SUFFIX`, which listings skip and the next sync removes once stale. Either way
the final step is ``os.replace``, atomic within a directory.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import secrets
import threading
from collections.abc import Callable

PARTIAL_SUFFIX = ".confluence-partial"
_AT_FDCWD = -100
_AT_EMPTY_PATH = 0x1000

Linker = Callable[[int, str], None]
_linkers: dict[int, Linker | None] = {}
_linkers_lock = threading.Lock()


def _link_via_proc(fd: int, target: str) -> None:
    os.link(f"/proc/self/fd/{fd}", target, follow_symlinks=True)


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _link_empty_path(fd: int, target: str) -> None:
    if _libc().linkat(fd, b"", _AT_FDCWD, os.fsencode(target), _AT_EMPTY_PATH) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), target)


def _open_unnamed(directory: str) -> int | None:
    if not hasattr(os, "O_TMPFILE"):
        return None
    try:
        return os.open(directory, os.O_TMPFILE | os.O_RDWR, 0o666)
    except OSError as err:
        if err.errno in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOENT):
            return None
        raise


def _linker_for(directory: str) -> Linker | None:
    """How to name an unnamed file on this directory's file system, or None if it cannot."""
    device = os.stat(directory).st_dev
    with _linkers_lock:
        if device in _linkers:
            return _linkers[device]
        chosen = None
        fd = _open_unnamed(directory)
        if fd is not None:
            try:
                for linker in (_link_via_proc, _link_empty_path):
                    probe = os.path.join(
                        directory, f".probe.{secrets.token_hex(6)}{PARTIAL_SUFFIX}"
                    )
                    try:
                        linker(fd, probe)
                    except (OSError, AttributeError):
                        continue
                    os.unlink(probe)
                    chosen = linker
                    break
            finally:
                os.close(fd)
        _linkers[device] = chosen
        return chosen


class AtomicFile:
    """Write through :attr:`file` (or :attr:`fd`), then :meth:`commit` or :meth:`abort`."""

    def __init__(self, final_path: str) -> None:
        self.final = final_path
        self.directory = os.path.dirname(final_path)
        if not os.path.isdir(self.directory):
            os.makedirs(self.directory, exist_ok=True)
        self.named: str | None = None
        self._linker = _linker_for(self.directory)
        fd = _open_unnamed(self.directory) if self._linker else None
        if fd is None:
            self._linker = None
            self.named = self._temporary_name()
            fd = os.open(self.named, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o666)
        self.fd = fd
        self.file = open(fd, "wb", closefd=False)  # noqa: SIM115 (closed by commit/abort)
        self._done = False

    def _temporary_name(self) -> str:
        name = os.path.basename(self.final)[:180]
        return os.path.join(self.directory, f".{name}.{secrets.token_hex(4)}{PARTIAL_SUFFIX}")

    def commit(self, mtime_ns: int | None) -> os.stat_result:
        """Flush, set the mtime, give the file its final name; returns its stat."""
        self.file.flush()
        if mtime_ns is not None:
            os.utime(self.fd, ns=(mtime_ns, mtime_ns))
        if self.named is None:
            # An existing file cannot be replaced by a link, so link to a temporary name,
            # complete already, and rename that over the final one.
            self.named = self._temporary_name()
            self._linker(self.fd, self.named)
        os.replace(self.named, self.final)
        self.named = None
        st = os.fstat(self.fd)
        self._close()
        return st

    def abort(self) -> None:
        if self._done:
            return
        self._close()
        if self.named is not None:
            try:
                os.unlink(self.named)
            except FileNotFoundError:
                pass

    def _close(self) -> None:
        self._done = True
        try:
            self.file.close()
        finally:
            os.close(self.fd)
