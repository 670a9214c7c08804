"""Benchmark: the whole local run of the default domain, and the global dry run.

Prints wall time and peak memory (process tree) of
  1. `snakemake --profile profiles/local` on the default domain, in a fresh directory,
     with the orchestration overhead against the summed item run time as a peer figure;
  2. `snakemake -n --profile profiles/local --configfile config/global.yaml`, with its job
     count, against the default domain's dry run in the same session as the peer.
Targets (issue 2): local run within 2 minutes on 2 cores; global dry run within 15 s and
1.5 GiB.

Run: python bench/local_run.py [--skip-run]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import measure  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GIB = 1024**3


def snakemake(*args: str) -> list[str]:
    exe = Path(sys.executable).with_name("snakemake")
    return [
        str(exe),
        "-s",
        str(ROOT / "Snakefile"),
        "--profile",
        str(ROOT / "profiles/local"),
        "--configfile",
        str(ROOT / "config/config.yaml"),
        *args,
    ]


def job_count(output: str) -> int:
    match = re.search(r"^total\s+(\d+)", output, re.MULTILINE)
    return int(match.group(1)) if match else -1


def item_seconds(workdir: Path) -> float:
    total = 0.0
    for path in (workdir / "results").glob("*/*.json"):
        doc = json.loads(path.read_text())
        total += sum(item.get("seconds", 0.0) for item in doc.get("items", []))
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-run", action="store_true", help="only the dry runs")
    args = parser.parse_args()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    print(f"cores: {os.cpu_count()}")
    with tempfile.TemporaryDirectory(prefix="confluence-bench-") as tmp:
        work = Path(tmp)
        seconds, peak, done = measure.run(snakemake("-n", "--directory", str(work)), ROOT, env)
        default_jobs = job_count(done.stdout)
        print(f"default dry run: {seconds:.2f} s, {peak / GIB:.2f} GiB, {default_jobs} jobs")
        seconds_g, peak_g, done = measure.run(
            snakemake(
                "-n", "--directory", str(work), "--configfile", str(ROOT / "config/global.yaml")
            ),
            ROOT,
            env,
        )
        if done.returncode != 0:
            print(done.stdout[-3000:])
            return 1
        print(
            f"global dry run: {seconds_g:.2f} s, {peak_g / GIB:.2f} GiB, "
            f"{job_count(done.stdout)} jobs (target <= 15 s, <= 1.5 GiB); "
            f"{seconds_g / seconds:.1f}x the default dry run's time"
        )
        if args.skip_run:
            return 0
        seconds, peak, done = measure.run(snakemake("--directory", str(work)), ROOT, env)
        if done.returncode != 0:
            print(done.stdout[-5000:])
            print(f"local run FAILED after {seconds:.1f} s")
            return 1
        items = item_seconds(work)
        print(
            f"local run: {seconds:.1f} s wall, {peak / GIB:.2f} GiB peak (process tree); "
            f"target <= 120 s"
        )
        print(
            f"item time summed over all modules: {items:.1f} s; wall / (items / cores) = "
            f"{seconds / (items / (os.cpu_count() or 1)):.2f} (orchestration overhead)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
