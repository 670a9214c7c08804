"""`snakemake --profile profiles/aws-batch` end to end against the local AWS Batch emulator.

One emulator serves the module. Two images are wrapped by small shell scripts so the tests
can steer real jobs: the momma image fails one chosen item while a marker file exists, and
the input image waits while a hold file exists (to catch jobs in flight).
"""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from batch_emulator import BatchEmulator
from workflow_helpers import BIN, ROOT, planned_jobs

from confluence.config import load
from confluence.workflow import Workflow

# Two continents, one basin each, split into chunks of at most 4 reaches; two FLPE
# algorithms. Small, so every item is a real process and the whole file stays near 3 min.
DOMAIN = {
    "run": {"chunk_size": 4, "max_set_size": 3},
    "domain": {
        "seed": 7,
        "days": 365,
        "continents": {
            "eu": {"basins": 1, "reaches_per_basin": [5, 7]},
            "na": {"basins": 1, "reaches_per_basin": [5, 7]},
        },
        "faulty_reaches": 0,
    },
    "flpe": {"algorithms": ["momma", "sad"]},
}
MODULE_RULES = {
    "input",
    "priors",
    "prediagnostics",
    "flpe",
    "postdiagnostics_flpe",
    "moi",
    "postdiagnostics_moi",
    "offline",
    "validation",
    "output",
}
ACTIVE = ("SUBMITTED", "PENDING", "RUNNABLE", "STARTING", "RUNNING")

FAILING_MOMMA = """\
# Fails the item named in $CONFLUENCE_TEST_FAIL ("<unit> <array index>") while it exists.
if [ -f "$CONFLUENCE_TEST_FAIL" ]; then
  read unit index < "$CONFLUENCE_TEST_FAIL"
  case "$*" in
    *"worklists/$unit/reaches.json"*)
      if [ "${AWS_BATCH_JOB_ARRAY_INDEX:-}" = "$index" ]; then
        echo "injected failure of item $index of $unit" >&2
        exit 7
      fi;;
  esac
fi
exec "$PYTHON" -m confluence.cli module momma "$@"
"""
HELD_INPUT = """\
# Waits while $CONFLUENCE_TEST_HOLD exists, so a test can catch input jobs in flight.
while [ -f "$CONFLUENCE_TEST_HOLD" ]; do sleep 0.2; done
exec "$PYTHON" -m confluence.cli module input "$@"
"""


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The domain, the account overlay, the wrapper scripts and a running emulator."""
    base = tmp_path_factory.mktemp("batch")
    efs = base / "efs"
    domain = write_yaml(base / "domain.yaml", DOMAIN)
    account = write_yaml(
        base / "account.yaml",
        {
            "paths": {"efs": str(efs)},
            "aws": {"prefix": "test-", "region": "us-west-2", "poll_seconds": 0.3},
            "storage": {"publish": "s3://test-publish/sos", "state": "s3://test-publish/state"},
        },
    )
    scripts = {}
    for name, text in (("momma", FAILING_MOMMA), ("input", HELD_INPUT)):
        scripts[name] = base / f"{name}.sh"
        scripts[name].write_text(text)
    controls = {"fail": base / "fail-item", "hold": base / "hold-input"}
    saved = dict(os.environ)
    os.environ.update(
        PYTHON=sys.executable,
        CONFLUENCE_TEST_FAIL=str(controls["fail"]),
        CONFLUENCE_TEST_HOLD=str(controls["hold"]),
    )
    configs = [ROOT / "config" / "config.yaml", domain, account]
    emulator = BatchEmulator(
        configs,
        efs=efs,
        args=[
            "--image",
            f"confluence-momma:latest=/bin/sh {scripts['momma']}",
            "--image",
            f"confluence-input:latest=/bin/sh {scripts['input']}",
        ],
    )
    try:
        emulator.start()
        yield {"base": base, "configs": configs, "emulator": emulator, **controls}
    finally:
        emulator.stop()
        os.environ.clear()
        os.environ.update(saved)


def snakemake_command(site, workdir: Path, *args, profile="aws-batch", run_name=None):
    configs = list(site["configs"])
    if run_name:
        configs.append(write_yaml(workdir / "run-name.yaml", {"run": {"name": run_name}}))
    return [
        str(BIN / "snakemake"),
        "-s",
        str(ROOT / "Snakefile"),
        "--profile",
        str(ROOT / "profiles" / profile),
        "--directory",
        str(workdir),
        "--configfile",
        *map(str, configs),
        *args,
    ]


def environment(site) -> dict:
    return {
        **os.environ,
        **site["emulator"].environment(),
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
    }


def run(site, workdir: Path, *args, check=True, **kwargs):
    workdir.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        snakemake_command(site, workdir, *args, **kwargs),
        capture_output=True,
        text=True,
        env=environment(site),
        timeout=900,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"snakemake failed ({result.returncode}):\n{result.stdout[-3000:]}\n"
            f"{result.stderr[-6000:]}"
        )
    return result


def science(workdir: Path) -> dict[str, dict[str, str]]:
    """Sentinel -> {output path: sha256} of every module sentinel of a run."""
    found = {}
    for path in sorted((workdir / "results").glob("*/*.json")):
        if path.parent.name == "summary":
            continue
        doc = json.loads(path.read_text())
        found[str(path.relative_to(workdir))] = {
            o["path"]: o["sha256"] for item in doc["items"] for o in item["outputs"]
        }
    return found


def ledger(workdir: Path) -> list[dict]:
    with open(workdir / "logs" / "batch" / "submissions.csv") as f:
        return list(csv.DictReader(f))


def stats(workdir: Path) -> dict:
    return json.loads((workdir / "logs" / "batch" / "controller-stats.json").read_text())


def count(requests, action, status=None) -> int:
    return sum(
        1
        for r in requests
        if r["action"] == action and (status is None or r.get("status") == status)
    )


def check_describe_batching(site_requests, run_stats):
    """Every DescribeJobs call is accounted for, and a poll needs at most ceil(active/100)."""
    assert count(site_requests, "DescribeJobs") == (
        run_stats["status_calls"]
        + run_stats.get("child_calls", 0)
        + run_stats.get("adopt_calls", 0)
    )
    assert run_stats["status_calls"] <= run_stats["polls"] * math.ceil(
        max(run_stats["max_active"], 1) / 100
    )


def test_dry_run_submits_nothing(site, tmp_path):
    emulator = site["emulator"]
    emulator.clear_requests()
    result = run(site, tmp_path / "dry", "-n")
    jobs = planned_jobs(result.stdout)
    assert jobs["flpe"] > 0 and jobs["output"] == 2
    assert count(emulator.requests(), "SubmitJob") == 0


def test_batch_run_fails_one_item_reruns_only_it_and_matches_the_local_run(site, tmp_path):
    emulator = site["emulator"]
    batch_dir, local_dir = tmp_path / "batch", tmp_path / "local"
    planned = planned_jobs(run(site, batch_dir, "-n").stdout)
    chunk_jobs = sum(n for rule, n in planned.items() if rule in MODULE_RULES)

    # First run: item 1 of the first eu chunk fails in momma; the rest goes on.
    first_chunk = Workflow(load(site["configs"], base=False)).chunk_ids("eu")[0]
    site["fail"].write_text(f"{first_chunk} 1\n")
    emulator.clear_requests()
    first = run(site, batch_dir, check=False)
    site["fail"].unlink()
    requests_first = emulator.requests()
    assert first.returncode != 0
    failed_log = (batch_dir / "logs" / "momma" / f"{first_chunk}.log").read_text()
    assert "injected failure of item 1" in failed_log
    state = json.loads((batch_dir / "state" / "momma" / f"{first_chunk}.json").read_text())
    failed = [r for r in state["items"] if r["status"] == "failed"]
    assert [r["index"] for r in failed] == [1]
    assert failed[0]["id"] in failed_log
    assert not (batch_dir / "results" / "momma" / f"{first_chunk}.json").exists()
    # What succeeded was published even though the chunk failed.
    assert state["published"]["ok"] and state["published"]["files"]
    check_describe_batching(requests_first, stats(batch_dir))
    submitted_first = count(requests_first, "SubmitJob")
    assert submitted_first == len(ledger(batch_dir))

    # Second run, with throttling injected: only the failed item is submitted again.
    emulator.clear_requests()
    emulator.inject_fault("DescribeJobs", count=3)
    emulator.inject_fault("SubmitJob", count=2)
    rows_before = len(ledger(batch_dir))
    run(site, batch_dir)
    requests_second = emulator.requests()
    assert count(requests_second, "DescribeJobs", 429) == 3
    assert count(requests_second, "SubmitJob", 429) == 2
    new_rows = ledger(batch_dir)[rows_before:]
    retry = [r for r in new_rows if r["algorithm"] == "momma" and r["kind"] == "items"]
    assert len(retry) == 1 and retry[0]["unit"] == first_chunk and retry[0]["array_size"] == "0"
    described = emulator.client("batch").describe_jobs(jobs=[retry[0]["job_id"]])["jobs"][0]
    command = described["container"]["command"]
    assert command[:2] == ["-i", "0"]
    assert f"worklists/{first_chunk}/retry/momma/reaches.json" in command
    # One SubmitJob per chunk job and one for its publication, over both runs (the momma
    # chunk ran twice); throttled attempts are the 429 answers, not extra submissions.
    successful = count(requests_first, "SubmitJob", 200) + count(requests_second, "SubmitJob", 200)
    assert successful == 2 * (chunk_jobs + 1)
    check_describe_batching(
        [r for r in requests_second if r.get("status") == 200], stats(batch_dir)
    )
    sentinel = json.loads((batch_dir / "results" / "momma" / f"{first_chunk}.json").read_text())
    assert sentinel["executor"] == "aws-batch" and sentinel["all_ok"]

    # A controller elsewhere (a fresh working directory, same file systems and mirror)
    # finds every chunk done: only the local summary is left to make.
    elsewhere = planned_jobs(run(site, tmp_path / "elsewhere", "-n").stdout)
    assert set(elsewhere) <= {"summary", "all"}, elsewhere

    # The same science as the local profile, file by file.
    local_efs = write_yaml(tmp_path / "local-efs.yaml", {"paths": {"efs": "data/efs"}})
    subprocess.run(
        [
            str(BIN / "snakemake"),
            "-s",
            str(ROOT / "Snakefile"),
            "--profile",
            str(ROOT / "profiles" / "local"),
            "--directory",
            str(local_dir),
            "--configfile",
            str(ROOT / "config" / "config.yaml"),
            str(site["configs"][1]),
            str(local_efs),
        ],
        check=True,
        capture_output=True,
        env={**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"},
        timeout=900,
    )
    assert science(batch_dir) == science(local_dir)


def _wait_for(predicate, timeout=60, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _running_jobs(batch, prefix: str) -> list[dict]:
    found = []
    for queue in batch.describe_job_queues()["jobQueues"]:
        for status in ACTIVE:
            for job in batch.list_jobs(jobQueue=queue["jobQueueName"], jobStatus=status)[
                "jobSummaryList"
            ]:
                if job["jobName"].startswith(prefix):
                    found.append(job)
    return found


def _start(site, workdir: Path, run_name: str) -> subprocess.Popen:
    workdir.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        snakemake_command(site, workdir, run_name=run_name),
        stdout=subprocess.DEVNULL,
        stderr=open(workdir / "snakemake.err", "w"),
        env=environment(site),
        start_new_session=True,
    )


@pytest.mark.parametrize("signal_number", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_controller_leaves_nothing_running(site, tmp_path, signal_number):
    batch = site["emulator"].client("batch")
    name = f"stop{signal_number.value}"
    site["hold"].write_text("")
    try:
        controller = _start(site, tmp_path, name)
        _wait_for(
            lambda: [j for j in _running_jobs(batch, name) if j["status"] == "RUNNING"],
            what="an input job to run",
        )
        os.kill(controller.pid, signal_number)
        assert controller.wait(timeout=60) != 0
    finally:
        site["hold"].unlink(missing_ok=True)
    assert _running_jobs(batch, name) == []
    rows = ledger(tmp_path)
    assert rows and all(r["status"] in ("TERMINATED", "SUCCEEDED", "FAILED") for r in rows)


def test_a_killed_controller_restarts_and_adopts_its_jobs(site, tmp_path):
    emulator = site["emulator"]
    batch = emulator.client("batch")
    name = "killed"
    site["hold"].write_text("")
    emulator.clear_requests()
    try:
        controller = _start(site, tmp_path, name)
        in_flight = _wait_for(
            lambda: [j for j in _running_jobs(batch, name) if j["status"] == "RUNNING"],
            what="an input job to run",
        )
        os.killpg(controller.pid, signal.SIGKILL)
        controller.wait(timeout=30)
        assert _running_jobs(batch, name), "the jobs should outlive their controller"
        # Snakemake's lock outlives a SIGKILL; --unlock is the documented way back in.
        run(site, tmp_path, "--unlock", run_name=name)
        restarted = _start(site, tmp_path, name)
        _wait_for(
            lambda: any(r["status"].startswith("ADOPTED") for r in ledger(tmp_path)),
            what="the restarted controller to adopt a job",
        )
    finally:
        site["hold"].unlink(missing_ok=True)
    assert restarted.wait(timeout=600) == 0, (tmp_path / "snakemake.err").read_text()[-3000:]
    names = [r["job_name"] for r in ledger(tmp_path)]
    assert len(names) == len(set(names)), "a job was submitted twice"
    assert count(emulator.requests(), "SubmitJob", 200) == len(names)
    # The jobs in flight at the kill (array children listed as parent:index) were adopted.
    parents = {j["jobId"].split(":")[0] for j in in_flight}
    assert parents <= {r["job_id"] for r in ledger(tmp_path)}


def test_a_job_stuck_in_runnable_is_reported_with_its_queue(site, tmp_path):
    from confluence.batch.controller import BatchController, ChunkJob

    emulator = site["emulator"]
    batch, logs = emulator.client("batch"), emulator.client("logs")
    config = load(site["configs"], base=False)
    config["aws"]["runnable_warning_seconds"] = 1
    batch.update_job_queue(jobQueue="test-output", state="DISABLED")
    warnings = []
    controller = BatchController(
        config, tmp_path / "efs", tmp_path / "ledger.csv", (batch, logs), warnings.append
    )
    submitted = batch.submit_job(
        jobName="stuck", jobQueue="test-output", jobDefinition="test-output"
    )
    job = ChunkJob(
        "output", "eu", None, tmp_path / "s", tmp_path / "st", tmp_path / "log", "test-output"
    )
    job.batch_id, job.job_name = submitted["jobId"], "stuck"
    try:
        _wait_for(
            lambda: batch.describe_jobs(jobs=[job.batch_id])["jobs"][0]["status"] == "RUNNABLE",
            what="the job to wait in RUNNABLE",
        )
        assert controller.poll([job]) == []
        time.sleep(1.2)
        assert controller.poll([job]) == []
    finally:
        batch.terminate_job(jobId=job.batch_id, reason="test over")
        batch.update_job_queue(jobQueue="test-output", state="ENABLED")
    assert len(warnings) == 1
    assert "RUNNABLE on queue test-output" in warnings[0] and "compute environment" in warnings[0]
    assert warnings[0] in job.log.read_text()


def test_preflight_reports_drift_and_the_run_stops_before_submitting(site, tmp_path):
    emulator = site["emulator"]
    batch = emulator.client("batch")
    env = environment(site)
    preflight = [sys.executable, "-m", "confluence.cli", "preflight"]
    for path in site["configs"][1:]:
        preflight += ["--configfile", str(path)]
    clean = subprocess.run(preflight, env=env, capture_output=True, text=True, timeout=120)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "no drift" in clean.stdout

    # Drift: a newer sad revision with other memory, and a disabled queue.
    current = batch.describe_job_definitions(jobDefinitionName="test-sad", status="ACTIVE")
    latest = max(current["jobDefinitions"], key=lambda d: d["revision"])
    container = dict(latest["containerProperties"])
    container["resourceRequirements"] = [
        {"type": "VCPU", "value": "1"},
        {"type": "MEMORY", "value": "4096"},
    ]
    drifted = batch.register_job_definition(
        jobDefinitionName="test-sad",
        type="container",
        containerProperties=container,
        platformCapabilities=latest.get("platformCapabilities", ["FARGATE"]),
        retryStrategy=latest.get("retryStrategy", {"attempts": 1}),
        timeout=latest.get("timeout", {"attemptDurationSeconds": 7200}),
    )
    batch.update_job_queue(jobQueue="test-moi", state="DISABLED")
    try:
        found = subprocess.run(preflight, env=env, capture_output=True, text=True, timeout=120)
        assert found.returncode == 1
        assert "DRIFT job definition test-sad:" in found.stdout
        assert "memory 4096.0 MiB, configured 2048" in found.stdout
        assert "DRIFT job queue test-moi: state DISABLED" in found.stdout
        assert "aws batch update-job-queue --job-queue test-moi --state ENABLED" in found.stdout

        emulator.clear_requests()
        stopped = run(site, tmp_path / "run", check=False, run_name="drift")
        assert stopped.returncode != 0
        assert "DRIFT job queue test-moi" in stopped.stdout + stopped.stderr
        assert count(emulator.requests(), "SubmitJob") == 0
    finally:
        batch.update_job_queue(jobQueue="test-moi", state="ENABLED")
        batch.deregister_job_definition(jobDefinition=drifted["jobDefinitionArn"])


def test_a_local_publish_folder_stops_the_run_with_the_config_key(site, tmp_path):
    """What a --configfile that replaced the profile's account overlay leads to."""
    emulator = site["emulator"]
    emulator.clear_requests()
    local = write_yaml(tmp_path / "local.yaml", {"storage": {"publish": "data/s3/sos"}})
    configs = [*map(str, site["configs"]), str(local)]
    stopped = run(site, tmp_path / "run", "--configfile", *configs, check=False)
    assert stopped.returncode != 0
    assert "config key storage.publish is 'data/s3/sos'" in stopped.stdout + stopped.stderr
    assert count(emulator.requests(), "SubmitJob") == 0
