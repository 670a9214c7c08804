"""Benchmark: the Batch executor's calls, CPU and latency at 100+ chunks, on the emulator.

Runs `snakemake --profile profiles/aws-batch` against `confluence emulator` with trivial
jobs (every module image runs `true` and declares no outputs; the publication jobs run the
real `confluence finish-chunk`), through every module of the chain. Prints:
  - SubmitJob and DescribeJobs calls (from the emulator's request log);
  - the controller's CPU seconds and peak memory (the snakemake process itself, not the
    local rules it starts);
  - the added latency between a chunk job's last Batch job ending and its dependents'
    submission (median, 90th percentile, max);
  - the same domain under one Batch job per reach per module (the Step Functions
    deployment): SubmitJob = items, and at least one DescribeJobs per job.

Run: python bench/batch.py [--basins 96] [--chunk-size 10] [--poll 1] [--jobs N]
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from batch_emulator import BatchEmulator  # noqa: E402

from confluence.config import load  # noqa: E402
from confluence.workflow import Workflow  # noqa: E402

# Runs snakemake in this interpreter and reports its own CPU time and peak RSS at exit.
CONTROLLER = """
import atexit, json, resource, sys
target = sys.argv[1]
def report():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    with open(target, "w") as f:
        json.dump({"cpu": usage.ru_utime + usage.ru_stime, "maxrss_kib": usage.ru_maxrss}, f)
atexit.register(report)
profile = sys.argv[2]
sys.argv = ["snakemake", *sys.argv[3:]]
from snakemake.cli import main
if profile:
    import cProfile
    profiler = cProfile.Profile()
    atexit.register(lambda: profiler.dump_stats(profile))
    profiler.enable()
main()
"""


def overlay(directory: Path, args) -> list[Path]:
    base = load()
    modules = {name: {"outputs": []} for name in base["modules"]}
    half = args.basins // 2
    config = {
        "run": {"name": "bench", "chunk_size": args.chunk_size, "max_set_size": 3},
        "paths": {"efs": str(directory / "efs")},
        "domain": {
            "seed": 11,
            "observations": False,
            "faulty_reaches": 0,
            "continents": {
                "eu": {"basins": half, "reaches_per_basin": [4, args.chunk_size + 4]},
                "na": {"basins": args.basins - half, "reaches_per_basin": [4, args.chunk_size + 4]},
            },
        },
        "modules": modules,
        "aws": {"prefix": "bench-", "region": "us-west-2", "poll_seconds": args.poll},
        "storage": {"publish": None, "state": None},
    }
    path = directory / "bench.yaml"
    path.write_text(yaml.safe_dump(config))
    return [ROOT / "config" / "config.yaml", path]


def latencies(workdir: Path, config: dict, batch) -> list[float]:
    """Seconds from the end of each chunk job's last upstream Batch job to its own first
    submission, for every chunk job that has upstream chunk jobs."""
    with open(workdir / "logs" / "batch" / "submissions.csv") as f:
        rows = list(csv.DictReader(f))
    described = {}
    ids = [r["job_id"] for r in rows]
    for start in range(0, len(ids), 100):
        for job in batch.describe_jobs(jobs=ids[start : start + 100])["jobs"]:
            described[job["jobId"]] = job
    first_submit, last_stop = {}, {}
    for row in rows:
        key = (row["algorithm"].split(":")[0], row["unit"])
        job = described[row["job_id"]]
        first_submit[key] = min(first_submit.get(key, math.inf), job["createdAt"] / 1000)
        last_stop[key] = max(last_stop.get(key, 0), (job.get("stoppedAt") or 0) / 1000)
    wf = Workflow(config)
    found = []
    for (module, unit), submitted in first_submit.items():
        upstream = []
        for sentinel in wf.upstream(module, unit):
            _, up_module, up_file = sentinel.split("/")
            upstream.append((up_module, up_file.removesuffix(".json")))
        ends = [last_stop[u] for u in upstream if u in last_stop]
        if ends and len(ends) == len(upstream):
            found.append(submitted - max(ends))
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--basins", type=int, default=96, help="basins over two continents")
    parser.add_argument("--chunk-size", type=int, default=10, help="reaches per chunk at most")
    parser.add_argument("--poll", type=float, default=1.0, help="aws.poll_seconds")
    parser.add_argument("--max-running", type=int, default=16, help="emulator job slots")
    parser.add_argument(
        "--jobs",
        type=int,
        help="Snakemake's --jobs (default: the profile's 500); a dependent waits for a free "
        "slot, which the latency then includes",
    )
    parser.add_argument("--profile", help="write the controller's cProfile statistics here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="confluence-bench-batch-") as tmp:
        tmp = Path(tmp)
        configs = overlay(tmp, args)
        config = load(configs, base=False)
        wf = Workflow(config)
        chunks = len(wf.plan.chunks)
        reaches = sum(len(chunk.reach_ids) for chunk in wf.plan.chunks)
        print(
            f"domain: {reaches} reaches, {chunks} chunks; modules: {', '.join(config['modules'])}"
        )
        images = []
        for module in config["modules"].values():
            images += ["--image", f"{module['image']}=true"]
        with BatchEmulator(
            configs, efs=tmp / "efs", args=[*images, "--max-running", str(args.max_running)]
        ) as emulator:
            emulator.clear_requests()
            workdir = tmp / "run"
            workdir.mkdir()
            usage = tmp / "controller.json"
            bin_dir = Path(sys.executable).parent
            env = {
                **os.environ,
                **emulator.environment(),
                "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
            }
            command = [
                sys.executable, "-c", CONTROLLER, str(usage), args.profile or "",
                "-s", str(ROOT / "Snakefile"), "--profile", str(ROOT / "profiles" / "aws-batch"),
                "--directory", str(workdir), "--configfile", *map(str, configs),
            ]  # fmt: skip
            if args.jobs:
                command += ["--jobs", str(args.jobs)]
            began = time.perf_counter()
            result = subprocess.run(command, env=env, capture_output=True, text=True)
            wall = time.perf_counter() - began
            if result.returncode != 0:
                print(result.stdout[-3000:], result.stderr[-5000:], file=sys.stderr)
                print(f"bench/batch.py: the run failed (exit {result.returncode})")
                return 1
            requests = emulator.requests()
            submits = sum(1 for r in requests if r["action"] == "SubmitJob")
            describes = sum(1 for r in requests if r["action"] == "DescribeJobs")
            controller = json.loads(usage.read_text())
            stats = json.loads((workdir / "logs/batch/controller-stats.json").read_text())
            with open(workdir / "logs" / "batch" / "submissions.csv") as f:
                rows = list(csv.DictReader(f))
            chunk_jobs = sum(1 for r in rows if r["kind"] == "publish")
            items = sum(max(1, int(r["array_size"])) for r in rows if r["kind"] == "items")
            waits = latencies(workdir, config, emulator.client("batch"))

    print(f"run: {wall:.1f} s wall, {chunk_jobs} chunk jobs, {items} items")
    print(
        f"calls: SubmitJob {submits} ({submits / chunk_jobs:.2f} per chunk job), DescribeJobs "
        f"{describes} over {stats['polls']} polls (most active jobs at once: "
        f"{stats['max_active']}; status {stats['status_calls']}, children "
        f"{stats.get('child_calls', 0)}, adoption {stats.get('adopt_calls', 0)})"
    )
    print(
        f"controller: {controller['cpu']:.1f} CPU s, peak {controller['maxrss_kib'] / 1024:.0f} "
        "MiB (the snakemake process, without its local rules)"
    )
    if waits:
        waits.sort()
        p90 = waits[min(len(waits) - 1, int(0.9 * len(waits)))]
        print(
            f"latency upstream end -> dependent submitted: median {statistics.median(waits):.2f} "
            f"s, p90 {p90:.2f} s, max {waits[-1]:.2f} s over {len(waits)} chunk jobs "
            f"(poll interval {args.poll} s)"
        )
    print(
        f"one job per reach per module (Step Functions pattern): SubmitJob {items}, "
        f"DescribeJobs at least {items} (one per job, if every job were seen once); "
        f"ratio theirs/ours: SubmitJob {items / submits:.1f}x, DescribeJobs >= "
        f"{items / max(describes, 1):.1f}x"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
