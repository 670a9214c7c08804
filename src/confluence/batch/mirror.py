"""A controller's sentinels and state, mirrored to storage.state.

The Batch controller pushes each chunk job's state and sentinel there once it concludes;
the workflow pulls them back before planning. A controller started on another machine (with
the same file systems mounted) therefore sees the same finished chunks and resumes there.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import datetime
from pathlib import Path

FOLDERS = ("results", "state")


def push_state(destination: str, files: list[Path], log=sys.stderr) -> bool:
    from confluence.sync import sync

    present = [str(Path(f)) for f in files if Path(f).is_file()]
    if not present:
        return True
    result = sync(".", destination, files=present, progress=False)
    for path, reason in result.failed:
        print(f"state mirror: {path} not copied to {destination}: {reason}", file=log)
    return result.ok


def pull_state(source: str, workdir: Path = Path("."), log=sys.stderr) -> int:
    """Copy the mirrored sentinels and state into ``workdir``; returns the files copied.

    A pulled sentinel's modification time is set to when its chunk finished, so Snakemake's
    time stamps order the chain as it ran, not as it was downloaded.
    """
    from confluence.sync import sync

    rules = [("exclude", "*"), *(("include", f"{folder}/*") for folder in FOLDERS)]
    result = sync(source, str(workdir), rules=rules, progress=False)
    for path, reason in result.failed:
        print(f"state mirror: {path} not copied from {source}: {reason}", file=log)
    for entry in result.entries:
        path = Path(workdir) / entry["path"]
        if entry.get("action") != "copied" or not path.name.endswith(".json"):
            continue
        try:
            finished = json.loads(path.read_text()).get("finished")
            stamp = datetime.fromisoformat(finished).timestamp()
        except (OSError, ValueError, TypeError, AttributeError):
            continue
        os.utime(path, (stamp, stamp))
    return result.copied
