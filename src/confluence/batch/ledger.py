"""The submission ledger: one CSV row per Batch job the controller submitted or adopted.

The first four columns are the legacy orchestrator's ``stage,algorithm,job_name,job_id``, so
its users' scripts keep working; the rest say how each job ended. New rows are
appended at once; changed rows are written in one atomic rewrite per status poll.
"""

from __future__ import annotations

import csv
import os
import threading
from datetime import UTC, datetime
from pathlib import Path

COLUMNS = [
    "stage",
    "algorithm",
    "job_name",
    "job_id",
    "status",
    "attempts",
    "submitted",
    "started",
    "stopped",
    "unit",
    "kind",
    "array_size",
]


def _iso(millis) -> str:
    if not millis:
        return ""
    return datetime.fromtimestamp(millis / 1000, UTC).isoformat(timespec="seconds")


class Ledger:
    """Rows in memory; a new row is appended to the file at once (a killed controller loses
    no submission), and changed rows are written by :meth:`flush` (once per status poll)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.lock = threading.Lock()
        self.rows: list[dict] = []
        self._by_id: dict[str, dict] = {}
        self._dirty = False
        if self.path.exists():
            with open(self.path, newline="") as f:
                for row in csv.DictReader(f):
                    self._keep(dict(row))

    def _keep(self, row: dict) -> None:
        known = self._by_id.get(row["job_id"])
        if known is not None:
            known.update(row)  # a later line about the same job (appended) wins
            return
        self.rows.append(row)
        self._by_id[row["job_id"]] = row

    def has(self, job_id: str) -> bool:
        return job_id in self._by_id

    def unfinished(self) -> set[str]:
        """Jobs submitted and never seen ending."""
        with self.lock:
            return {r["job_id"] for r in self.rows if r["status"] not in ("SUCCEEDED", "FAILED")}

    def add(self, **values) -> None:
        row = dict.fromkeys(COLUMNS, "")
        row.update(
            {k: str(v) for k, v in values.items()},
            status="SUBMITTED",
            attempts="0",
            submitted=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        with self.lock:
            self._keep(row)
            new = not self.path.exists()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", newline="") as f:
                writer = csv.DictWriter(f, COLUMNS, extrasaction="ignore")
                if new:
                    writer.writeheader()
                writer.writerow(row)

    def update(self, job_id: str, **values) -> None:
        with self.lock:
            row = self._by_id.get(job_id)
            if row is not None:
                row.update({k: str(v) for k, v in values.items()})
                self._dirty = True

    def finish(self, desc: dict) -> None:
        """Status, attempts and times from a DescribeJobs answer."""
        # An array parent has no attempts of its own (its children do): left blank.
        array = "size" in desc.get("arrayProperties", {})
        self.update(
            desc["jobId"],
            status=desc["status"],
            attempts="" if array else len(desc.get("attempts", [])),
            started=_iso(desc.get("startedAt")),
            stopped=_iso(desc.get("stoppedAt")),
        )

    def flush(self) -> None:
        """Rewrite the file whole (temporary name, then rename) if a row changed."""
        with self.lock:
            if not self._dirty:
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{self.path.name}.tmp")
            with open(tmp, "w", newline="") as f:
                writer = csv.DictWriter(f, COLUMNS, extrasaction="ignore")
                writer.writeheader()
                writer.writerows(self.rows)
            os.replace(tmp, self.path)
            self._dirty = False
