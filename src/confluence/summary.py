"""The run's summary for `snakemake --report`: a per-module table and the validation figures."""

from __future__ import annotations

import csv
import os
import shutil
from collections import defaultdict
from pathlib import Path

from confluence import manifest
from confluence.contract import FAILED, OK, SKIPPED

COLUMNS = (
    "module",
    "stage",
    "units",
    "items",
    OK,
    FAILED,
    SKIPPED,
    "failed_percent",
    "tolerated_failure_percent",
    "failed_items",
)


def module_table(sentinels: list[Path]) -> list[dict]:
    """One row per module, summed over its chunks (or continents), in pipeline order."""
    rows: dict[str, dict] = {}
    failed_ids: dict[str, list[str]] = defaultdict(list)
    for path in sentinels:
        doc = manifest.load(Path(path))
        if doc is None:
            raise FileNotFoundError(f"sentinel {path} is missing or unreadable")
        row = rows.setdefault(
            doc["module"],
            {
                "module": doc["module"],
                "stage": doc.get("stage"),
                "units": 0,
                "items": 0,
                OK: 0,
                FAILED: 0,
                SKIPPED: 0,
                "tolerated_failure_percent": doc.get("tolerated_failure_percent", 0),
            },
        )
        row["units"] += 1
        row["items"] += doc["counts"]["total"]
        for status in (OK, FAILED, SKIPPED):
            row[status] += doc["counts"].get(status, 0)
        failed_ids[doc["module"]] += [i["id"] for i in doc["items"] if i["status"] == FAILED]
    for name, row in rows.items():
        row["failed_percent"] = round(100.0 * row[FAILED] / row["items"], 2) if row["items"] else 0
        row["failed_items"] = " ".join(failed_ids[name])
    return list(rows.values())


def write_table(rows: list[dict], path: Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def collect_figures(sentinels: list[Path], efs: Path, directory: Path) -> int:
    """Link (or copy) every figure the validation sentinels list into one folder."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    count = 0
    for path in sentinels:
        doc = manifest.load(Path(path))
        if doc["module"] != "validation":
            continue
        for item in doc["items"]:
            for output in item["outputs"]:
                if output["path"].endswith(".png"):
                    source = Path(efs) / output["path"]
                    target = directory / source.name
                    try:
                        os.link(source, target)
                    except OSError:
                        shutil.copy2(source, target)
                    count += 1
    return count


def cli(args) -> int:
    rows = module_table(args.sentinels)
    write_table(rows, Path(args.table))
    figures = collect_figures(args.sentinels, Path(args.efs), Path(args.figures))
    for row in rows:
        print(
            f"{row['module']:<22} {row['units']:>4} units {row['items']:>6} items "
            f"{row[OK]:>6} ok {row[FAILED]:>4} failed {row[SKIPPED]:>4} skipped"
        )
    print(f"{figures} validation figures collected in {args.figures}")
    return 0
