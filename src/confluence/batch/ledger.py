"""The submission ledger: one CSV row per Batch job the controller submitted or adopted.

The first four columns are the legacy orchestrator's ``stage,algorithm,job_name,job_id``, so
its users' scripts keep working; the rest say how each job ended. The file is rewritten
whole (temporary name, then rename) on every change, so it is never seen half-written.
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
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.lock = threading.Lock()
        self.rows: list[dict] = []
        if self.path.exists():
            with open(self.path, newline="") as f:
                self.rows = [dict(row) for row in csv.DictReader(f)]

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(self.rows)
        os.replace(tmp, self.path)

    def add(self, **values) -> None:
        row = dict.fromkeys(COLUMNS, "")
        row.update(
            {k: str(v) for k, v in values.items()},
            status="SUBMITTED",
            attempts="0",
            submitted=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        with self.lock:
            self.rows.append(row)
            self._save()

    def update(self, job_id: str, **values) -> None:
        with self.lock:
            for row in self.rows:
                if row["job_id"] == job_id:
                    row.update({k: str(v) for k, v in values.items()})
            self._save()

    def finish(self, desc: dict) -> None:
        """Status, attempts and times from a DescribeJobs answer."""
        self.update(
            desc["jobId"],
            status=desc["status"],
            attempts=len(desc.get("attempts", [])),
            started=_iso(desc.get("startedAt")),
            stopped=_iso(desc.get("stoppedAt")),
        )
