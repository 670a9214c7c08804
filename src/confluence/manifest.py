"""Sentinels: the JSON manifest of one module over one chunk (or continent).

A sentinel is written only when the items ran, their outputs were checked, and the share of
failed items is within the module's tolerance. The same document, kept as the "state" file,
survives a failed job so that a rerun repeats only the items that did not succeed.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from datetime import UTC, datetime
from functools import cache
from pathlib import Path

from confluence import __version__
from confluence.contract import FAILED, OK, SKIPPED

SCHEMA_VERSION = 1


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def sha256_file(path: Path, block: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def file_record(path: Path, relative_to: Path) -> dict:
    return {
        "path": str(Path(path).relative_to(relative_to)),
        "size": Path(path).stat().st_size,
        "sha256": sha256_file(path),
    }


def record_still_valid(record: dict, root: Path) -> bool:
    """True if the file a manifest recorded is still there with the same size and content."""
    path = root / record["path"]
    try:
        if path.stat().st_size != record["size"]:
            return False
    except FileNotFoundError:
        return False
    return sha256_file(path) == record["sha256"]


@cache
def code_version() -> dict:
    """The package version and, when installed from a git checkout, its commit (``-dirty``
    when the checkout has uncommitted edits)."""
    version = {"package": __version__}
    try:
        described = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=12"],
            capture_output=True,
            text=True,
            timeout=10,
            cwd=Path(__file__).parent,
        )
        if described.returncode == 0:
            version["git"] = described.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    return version


def counts(items: list[dict]) -> dict:
    tally = {OK: 0, FAILED: 0, SKIPPED: 0}
    for item in items:
        tally[item["status"]] = tally.get(item["status"], 0) + 1
    tally["total"] = len(items)
    return tally


def failed_percent(items: list[dict]) -> float:
    """Share of items that failed here. Items skipped because an upstream item failed were
    already counted upstream and do not count again."""
    return 100.0 * counts(items)[FAILED] / len(items) if items else 0.0


def failed_reaches(manifest: dict) -> set[int]:
    """Reach IDs of every item that did not succeed in a manifest."""
    return {
        int(reach)
        for item in manifest.get("items", [])
        if item["status"] != OK
        for reach in item.get("reach_ids", [])
    }


def fingerprint(*parts) -> str:
    """A digest of everything that decides an item's result (config, work list, upstream
    outputs), so that state from an older run with other inputs is never reused."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def upstream_digest(manifest: dict) -> list:
    """The part of an upstream sentinel that matters downstream: what it produced, not when."""
    return [
        [item["id"], item["status"], [(o["path"], o["sha256"]) for o in item.get("outputs", [])]]
        for item in manifest.get("items", [])
    ]


def load(path: Path) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except json.JSONDecodeError:
        # A state file cut off by a crash is no state at all: run everything again.
        return None


def write(path: Path, manifest: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)
