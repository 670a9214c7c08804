"""A one-line progress bar on stderr, for interactive runs only.

The engine reports events as ``progress(event, path, size)``:

- ``"copy"``: a transfer of ``size`` bytes is about to start (or, in a dry run, is planned);
- ``"bytes"``: ``size`` more bytes moved (negative when a retry starts a part over);
- ``"copied"``, ``"skipped"``, ``"deleted"``, ``"failed"``: a file is done, with its size.

Any callable taking those three arguments can stand in for :class:`ProgressBar`.
"""

from __future__ import annotations

import sys
import threading
import time

_REDRAW_SECONDS = 0.1


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


class ProgressBar:
    """Files done of files seen, bytes moved of bytes planned, and the rate, redrawn in place
    at most ten times a second. Totals grow as the listing streams in."""

    def __init__(self, stream=None, label: str = "sync") -> None:
        self.stream = stream or sys.stderr
        self.label = label
        self.files_done = 0
        self.files_planned = 0
        self.skipped = 0
        self.failed = 0
        self.bytes_done = 0
        self.bytes_planned = 0
        self._started = time.monotonic()
        self._drawn_at = 0.0
        self._width = 0
        self._lock = threading.Lock()

    @classmethod
    def if_interactive(cls, stream=None) -> ProgressBar | None:
        stream = stream or sys.stderr
        return cls(stream) if stream.isatty() else None

    def __call__(self, event: str, path: str, size: int) -> None:
        with self._lock:
            if event == "copy":
                self.files_planned += 1
                self.bytes_planned += size
            elif event == "bytes":
                self.bytes_done += size
            elif event == "copied":
                self.files_done += 1
            elif event == "skipped":
                self.skipped += 1
            elif event == "failed":
                self.failed += 1
            now = time.monotonic()
            if now - self._drawn_at >= _REDRAW_SECONDS:
                self._drawn_at = now
                self._draw(now)

    def _draw(self, now: float) -> None:
        elapsed = max(now - self._started, 1e-6)
        rate = self.bytes_done / elapsed
        fraction = self.bytes_done / self.bytes_planned if self.bytes_planned else 0.0
        filled = int(20 * min(max(fraction, 0.0), 1.0))
        line = (
            f"{self.label} [{'#' * filled}{'.' * (20 - filled)}] "
            f"{self.files_done}/{self.files_planned} files, "
            f"{human_bytes(self.bytes_done)}/{human_bytes(self.bytes_planned)}, "
            f"{human_bytes(rate)}/s, {self.skipped} unchanged"
            + (f", {self.failed} failed" if self.failed else "")
        )
        pad = max(self._width - len(line), 0)
        self._width = len(line)
        self.stream.write("\r" + line + " " * pad)
        self.stream.flush()

    def close(self) -> None:
        """Erase the bar so the summary line that follows starts clean."""
        with self._lock:
            if self._width:
                self.stream.write("\r" + " " * self._width + "\r")
                self.stream.flush()
                self._width = 0
