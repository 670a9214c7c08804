"""Running the real Snakemake on the real workflow in a scratch directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TINY = ROOT / "tests" / "data" / "tiny.yaml"


def snakemake(
    workdir: Path, *args: str, profile: str = "local", check: bool = True, configfiles=()
):
    """`snakemake --profile profiles/<profile>` with the tiny domain, in ``workdir``.

    ``configfiles`` are merged over the tiny domain's; the environment is this process's
    (so an S3 server's AWS_* variables reach the jobs).
    """
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    command = [
        str(BIN / "snakemake"),
        "-s",
        str(ROOT / "Snakefile"),
        "--profile",
        str(ROOT / "profiles" / profile),
        "--directory",
        str(workdir),
        "--configfile",
        str(ROOT / "config" / "config.yaml"),
        str(TINY),
        *map(str, configfiles),
        *args,
    ]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    if check and result.returncode != 0:
        raise AssertionError(
            f"snakemake {' '.join(args)} failed ({result.returncode}):\n"
            f"{result.stdout[-4000:]}\n{result.stderr[-8000:]}"
        )
    return result


def sentinel(workdir: Path, module: str, unit: str) -> dict:
    return json.loads((workdir / "results" / module / f"{unit}.json").read_text())


def planned_jobs(dry_run_output: str) -> dict[str, int]:
    """Rule -> job count from the job-stats table a dry run prints."""
    counts, in_table = {}, False
    for line in dry_run_output.splitlines():
        parts = line.split()
        if parts[:2] == ["job", "count"]:
            in_table = True
            continue
        if in_table:
            if len(parts) == 2 and parts[1].isdigit():
                if parts[0] != "total":
                    counts[parts[0]] = int(parts[1])
            elif parts and not set(parts[0]) <= {"-"}:
                break
    return counts
