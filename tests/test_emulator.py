"""``confluence emulator``: moto's AWS with Batch jobs that really run as local processes.

One emulator (a subprocess, see batch_emulator.py) serves the module; jobs use the account the
emulator prepared from a tiny config, a test-only image mapped with ``--image`` to /bin/sh -c,
and ``--time-scale 0.02`` so that AWS's 60 s minimum timeout fires in 1.2 s.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from batch_emulator import BatchEmulator, wait_for_job, write_config
from botocore.exceptions import ClientError

from confluence import config as config_module
from confluence.batch import names, preflight
from confluence.emulator import account, batch
from confluence.infra import template as infra

SHELL_IMAGE = "test-shell:latest"
TIME_SCALE = 0.02
RESOURCES = [{"type": "VCPU", "value": "0.25"}, {"type": "MEMORY", "value": "512"}]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("emulator")
    path = write_config(base)
    config = config_module.load([str(path)])
    workdir = base / "work"
    emulator = BatchEmulator(
        [path],
        workdir=workdir,
        args=[
            "--image",
            f"{SHELL_IMAGE}=/bin/sh -c",
            "--time-scale",
            TIME_SCALE,
            "--max-running",
            4,
            "--request-log",
            base / "requests.jsonl",
        ],
    )
    with emulator:
        batch_client = emulator.client("batch")
        batch_client.register_job_definition(
            jobDefinitionName="test-shell",
            type="container",
            platformCapabilities=["FARGATE"],
            containerProperties={"image": SHELL_IMAGE, "resourceRequirements": RESOURCES},
            retryStrategy={"attempts": 1},
        )
        yield {
            "emulator": emulator,
            "config": config,
            "batch": batch_client,
            "queue": names.queue(config, "momma"),
            "efs": base / "efs",
            "workdir": workdir,
            "base": base,
        }


def submit(setup, command: str, name: str = "test-job", **kwargs) -> str:
    kwargs.setdefault("jobDefinition", "test-shell")
    overrides = {"command": [command], **kwargs.pop("containerOverrides", {})}
    answer = setup["batch"].submit_job(
        jobName=name, jobQueue=setup["queue"], containerOverrides=overrides, **kwargs
    )
    return answer["jobId"]


def log_messages(setup, stream: str) -> list[str]:
    logs = setup["emulator"].client("logs")
    group = setup["config"]["aws"]["log_group"]
    events = logs.get_log_events(logGroupName=group, logStreamName=stream)["events"]
    return [e["message"] for e in events]


def file_system_ids(efs) -> dict[str, str]:
    """Configuration name -> EFS ID (the template tags each file system with its name)."""
    return {
        tag["Value"]: fs["FileSystemId"]
        for fs in efs.describe_file_systems()["FileSystems"]
        for tag in fs["Tags"]
        if tag["Key"] == "confluence:filesystem"
    }


def efs_volumes_by_root_directory(
    mounts: list[dict], file_systems: dict[str, str]
) -> tuple[list, list]:
    """Batch ``volumes`` and ``mountPoints`` (API spelling) for confluence mounts
    ({filesystem, subpath, path}) without access points: each folder is the volume's
    ``rootDirectory``. For job definitions registered beside the template's (tests)."""
    volumes, points, seen = [], [], {}
    for mount in mounts:
        filesystem, subpath = mount["filesystem"], mount.get("subpath", "")
        key = (filesystem, subpath)
        if key not in seen:
            taken = {k[0] for k in seen}
            seen[key] = filesystem if filesystem not in taken else f"{filesystem}-{len(seen)}"
            volumes.append(
                {
                    "name": seen[key],
                    "efsVolumeConfiguration": {
                        "fileSystemId": file_systems[filesystem],
                        "rootDirectory": "/" + subpath.strip("/"),
                        "transitEncryption": "ENABLED",
                    },
                }
            )
        points.append(
            {"sourceVolume": seen[key], "containerPath": mount["path"], "readOnly": False}
        )
    return volumes, points


def alive(pid: int) -> bool:
    """Running (a zombie waiting for a reaper counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


# --- moto internals -------------------------------------------------------------------------


def test_moto_internals_the_patch_relies_on_are_there():
    assert batch.check_moto_internals() == []


def test_evaluate_on_exit_follows_aws_rules():
    spot = batch._Outcome(exit_code=None, status_reason="Host EC2 (instance i-1) terminated.")
    app = batch._Outcome(exit_code=1)
    conditions = {"evaluateOnExit": infra.EVALUATE_ON_EXIT}
    assert batch.should_retry(conditions, spot)
    assert not batch.should_retry(conditions, app)
    # No condition matching means retry; the first match decides.
    assert batch.should_retry({"evaluateOnExit": [{"onExitCode": "2", "action": "EXIT"}]}, app)
    first = [{"onExitCode": "1*", "action": "retry"}, {"onReason": "*", "action": "EXIT"}]
    assert batch.should_retry({"evaluateOnExit": first}, app)


# --- account set-up -------------------------------------------------------------------------


def test_account_has_the_configured_queues_and_job_definitions(setup):
    config, client = setup["config"], setup["batch"]
    queues = {q["jobQueueName"]: q for q in client.describe_job_queues()["jobQueues"]}
    assert set(names.queues(config)) <= set(queues)
    assert all(name.startswith("test-") for name in queues)
    assert all(q["state"] == "ENABLED" for q in queues.values())

    environments = {
        e["computeEnvironmentName"]: e
        for e in client.describe_compute_environments()["computeEnvironments"]
    }
    for queue in names.queues(config):
        environment = environments[infra.compute_environment_name(queue)]
        assert environment["computeResources"]["type"] == "FARGATE"
        order = queues[queue]["computeEnvironmentOrder"]
        assert order[0]["computeEnvironment"] == environment["computeEnvironmentArn"]

    definitions = {
        d["jobDefinitionName"]: d
        for d in client.describe_job_definitions(status="ACTIVE")["jobDefinitions"]
    }
    for module in config["modules"]:
        assert names.job_definition(config, module) in definitions
    assert names.publish_job_definition(config) in definitions

    efs = setup["emulator"].client("efs")
    file_systems = file_system_ids(efs)
    assert set(config["filesystems"]) <= set(file_systems)
    geobam = definitions[names.job_definition(config, "geobam")]
    properties = geobam["containerProperties"]
    assert geobam["platformCapabilities"] == ["FARGATE"]
    assert properties["image"] == names.image(config, config["modules"]["geobam"]["image"])
    assert {r["type"]: r["value"] for r in properties["resourceRequirements"]} == {
        "VCPU": "4",
        "MEMORY": "8192",
    }
    volumes = {v["name"]: v["efsVolumeConfiguration"] for v in properties["volumes"]}
    # The folder is the root of an access point, mounted with IAM authorization.
    point = volumes["flpe"]["authorizationConfig"]["accessPointId"]
    assert volumes["flpe"] == {
        "fileSystemId": file_systems["flpe"],
        "transitEncryption": "ENABLED",
        "authorizationConfig": {"accessPointId": point, "iam": "ENABLED"},
    }
    described = efs.describe_access_points(AccessPointId=point)["AccessPoints"][0]
    assert described["RootDirectory"]["Path"] == "/geobam"
    assert {"sourceVolume": "flpe", "containerPath": "/mnt/data/output", "readOnly": False} in (
        properties["mountPoints"]
    )
    assert geobam["timeout"] == {"attemptDurationSeconds": 7200}
    assert geobam["retryStrategy"]["attempts"] == 1
    assert geobam["propagateTags"] is True
    publish = definitions[names.publish_job_definition(config)]
    assert publish["containerProperties"]["image"] == names.project_image(config)
    assert len(publish["containerProperties"]["mountPoints"]) == len(config["filesystems"])

    s3 = setup["emulator"].client("s3")
    assert "test-publish" in {b["Name"] for b in s3.list_buckets()["Buckets"]}

    # Idempotent: a second run finds everything and registers no new revision.
    again = account.prepare_account(config, setup["emulator"].url)
    assert again["job_definitions"][names.PUBLISH] == publish["jobDefinitionArn"]
    assert again["file_systems"] == {n: file_systems[n] for n in config["filesystems"]}
    after = client.describe_job_definitions(status="ACTIVE")["jobDefinitions"]
    assert len(after) == len(definitions)


# --- running jobs ---------------------------------------------------------------------------


def test_a_job_runs_and_logs_to_cloudwatch(setup):
    # The job calls the emulator itself: endpoint and credentials reach it.
    ask = (
        "import boto3, os; job = os.environ['AWS_BATCH_JOB_ID']; "
        "print('self:', boto3.client('batch').describe_jobs(jobs=[job])['jobs'][0]['status'])"
    )
    command = (
        'echo "hello $AWS_BATCH_JOB_ATTEMPT $AWS_BATCH_JQ_NAME"; echo oops >&2; sleep 0.3; '
        f'{sys.executable} -c "{ask}"'
    )
    job_id = submit(setup, command)
    seen: list[str] = []
    job = wait_for_job(setup["batch"], job_id, seen=seen)
    assert job["status"] == "SUCCEEDED", job
    assert job["container"]["exitCode"] == 0
    assert "RUNNING" in seen
    history = setup["emulator"].jobs()[job_id]["statuses"]
    assert [s for s, _ in history] == [
        "SUBMITTED",
        "PENDING",
        "RUNNABLE",
        "STARTING",
        "RUNNING",
        "SUCCEEDED",
    ]
    stream = job["container"]["logStreamName"]
    assert stream.startswith("test-shell/default/")
    assert job["attempts"][0]["container"]["logStreamName"] == stream
    assert log_messages(setup, stream) == [f"hello 1 {setup['queue']}", "oops", "self: RUNNING"]


def test_a_failing_job_records_its_exit_code(setup):
    job = wait_for_job(setup["batch"], submit(setup, "echo failing; exit 3"))
    assert job["status"] == "FAILED"
    assert job["container"]["exitCode"] == 3
    assert job["statusReason"] == "Essential container in task exited"
    assert [a["container"]["exitCode"] for a in job["attempts"]] == [3]


def test_an_unknown_image_fails_with_a_clear_reason(setup):
    client = setup["batch"]
    client.register_job_definition(
        jobDefinitionName="test-unknown-image",
        type="container",
        containerProperties={"image": "nowhere/else:1", "resourceRequirements": RESOURCES},
        retryStrategy={"attempts": 1},
    )
    job = wait_for_job(client, submit(setup, "true", jobDefinition="test-unknown-image"))
    assert job["status"] == "FAILED"
    assert job["statusReason"].startswith("CannotPullContainerError: image nowhere/else:1")


def test_array_job_with_a_failing_child(setup):
    client = setup["batch"]
    command = 'echo "child $AWS_BATCH_JOB_ARRAY_INDEX"; test "$AWS_BATCH_JOB_ARRAY_INDEX" != 1'
    parent_id = submit(setup, command, arrayProperties={"size": 3})
    children = [f"{parent_id}:{i}" for i in range(3)]
    for child in children:
        wait_for_job(client, child)
    parent = wait_for_job(client, parent_id)
    assert parent["status"] == "FAILED"
    assert parent["arrayProperties"]["size"] == 3
    summary = parent["arrayProperties"]["statusSummary"]
    assert (summary["SUCCEEDED"], summary["FAILED"]) == (2, 1)
    described = client.describe_jobs(jobs=children)["jobs"]
    by_index = {j["arrayProperties"]["index"]: j for j in described}
    assert sorted(by_index) == [0, 1, 2]
    assert [by_index[i]["container"]["exitCode"] for i in range(3)] == [0, 1, 0]
    assert [by_index[i]["status"] for i in range(3)] == ["SUCCEEDED", "FAILED", "SUCCEEDED"]
    stream = by_index[2]["container"]["logStreamName"]
    assert log_messages(setup, stream) == ["child 2"]
    listed = client.list_jobs(arrayJobId=parent_id)["jobSummaryList"]
    assert sorted(j["arrayProperties"]["index"] for j in listed) == [0, 1, 2]


def test_max_running_limits_concurrent_processes(setup):
    parent = submit(setup, "sleep 0.3", arrayProperties={"size": 6})
    assert wait_for_job(setup["batch"], parent)["status"] == "SUCCEEDED"
    history = setup["emulator"].jobs()
    spans = []
    for index in range(6):
        statuses = dict(history[f"{parent}:{index}"]["statuses"])
        spans.append((statuses["RUNNING"], statuses["SUCCEEDED"]))
    most = max(sum(start <= t < end for start, end in spans) for t, _ in spans)
    assert most <= 4  # --max-running 4
    # Two children waited in RUNNABLE until others had ended.
    first_end = min(end for _, end in spans)
    assert sum(start >= first_end for start, _ in spans) >= 2


def test_efs_volumes_map_to_local_directories(setup):
    client, efs = setup["batch"], setup["efs"]
    file_systems = file_system_ids(setup["emulator"].client("efs"))
    mounts = [
        {"filesystem": "input", "subpath": "", "path": "/mnt/data/input"},
        {"filesystem": "flpe", "subpath": "emulated", "path": "/mnt/data/output"},
    ]
    volumes, points = efs_volumes_by_root_directory(mounts, file_systems)
    client.register_job_definition(
        jobDefinitionName="test-efs",
        type="container",
        containerProperties={
            "image": SHELL_IMAGE,
            "resourceRequirements": RESOURCES,
            "volumes": volumes,
            "mountPoints": points,
        },
        retryStrategy={"attempts": 1},
    )
    (efs / "input").mkdir(parents=True, exist_ok=True)
    (efs / "input" / "hello.txt").write_text("from the input file system\n")
    command = (
        'cp "$CONFLUENCE_MOUNT_ROOT/input/hello.txt" "$CONFLUENCE_MOUNT_ROOT/output/copied.txt"'
    )
    job = wait_for_job(client, submit(setup, command, jobDefinition="test-efs"))
    assert job["status"] == "SUCCEEDED", job
    assert (efs / "flpe" / "emulated" / "copied.txt").read_text() == "from the input file system\n"
    # The per-attempt mount root and scratch are gone.
    assert not (setup["workdir"] / job["jobId"]).exists()


def test_module_image_runs_the_module_with_its_mounts(setup):
    """The prediagnostics job definition from the config runs `confluence module
    prediagnostics`, reading its work list through the input mount."""
    config, efs = setup["config"], setup["efs"]
    worklist = [{"reach_id": 74100100011, "swot": "missing_SWOT.nc", "sos": "x.nc"}]
    (efs / "input" / "emulated").mkdir(parents=True, exist_ok=True)
    (efs / "input" / "emulated" / "reaches.json").write_text(json.dumps(worklist))
    job_id = setup["batch"].submit_job(
        jobName="test-module",
        jobQueue=names.queue(config, "prediagnostics"),
        jobDefinition=names.job_definition(config, "prediagnostics"),
        containerOverrides={"command": ["-i", "0", "emulated/reaches.json"]},
    )["jobId"]
    job = wait_for_job(setup["batch"], job_id, timeout=60)
    messages = "\n".join(log_messages(setup, job["container"]["logStreamName"]))
    # The reach's SWOT file does not exist: the module says so and exits non-zero.
    assert job["status"] == "FAILED", messages
    assert job["container"]["exitCode"] in (1, 3), messages
    assert "74100100011" in messages and "missing_SWOT.nc" in messages


def test_retry_strategy_with_evaluate_on_exit(setup):
    client = setup["batch"]
    client.register_job_definition(
        jobDefinitionName="test-retry",
        type="container",
        containerProperties={"image": SHELL_IMAGE, "resourceRequirements": RESOURCES},
        retryStrategy={
            "attempts": 3,
            "evaluateOnExit": [
                {"onExitCode": "7", "action": "RETRY"},
                {"onReason": "*", "action": "EXIT"},
            ],
        },
    )
    flaky = 'test "$AWS_BATCH_JOB_ATTEMPT" -ge 2 || exit 7'
    job = wait_for_job(client, submit(setup, flaky, jobDefinition="test-retry"))
    assert job["status"] == "SUCCEEDED"
    assert [a["container"]["exitCode"] for a in job["attempts"]] == [7, 0]
    streams = {a["container"]["logStreamName"] for a in job["attempts"]}
    assert len(streams) == 2
    statuses = [s for s, _ in setup["emulator"].jobs()[job["jobId"]]["statuses"]]
    assert statuses[-4:] == ["RUNNABLE", "STARTING", "RUNNING", "SUCCEEDED"]

    job = wait_for_job(client, submit(setup, "exit 5", jobDefinition="test-retry"))
    assert job["status"] == "FAILED"
    assert len(job["attempts"]) == 1  # exit 5 matches the EXIT condition

    # A submit-time strategy without conditions retries any failure.
    job = wait_for_job(client, submit(setup, "exit 9", retryStrategy={"attempts": 2}))
    assert [a["container"]["exitCode"] for a in job["attempts"]] == [9, 9]


def test_timeout_stops_the_attempt_and_is_not_retried(setup):
    started = time.monotonic()
    job_id = submit(
        setup,
        "sleep 30",
        timeout={"attemptDurationSeconds": 60},
        retryStrategy={"attempts": 3},
    )
    job = wait_for_job(setup["batch"], job_id)
    assert time.monotonic() - started < 60 * TIME_SCALE + 5
    assert job["status"] == "FAILED"
    assert job["statusReason"] == "Job attempt duration exceeded timeout"
    assert job["container"]["exitCode"] == 128 + signal.SIGTERM
    assert len(job["attempts"]) == 1


def test_terminate_kills_the_process_group(setup):
    client = setup["batch"]
    job_id = submit(setup, 'sleep 60 & echo "child=$!"; wait')
    deadline = time.monotonic() + 20
    child = None
    while child is None and time.monotonic() < deadline:
        job = client.describe_jobs(jobs=[job_id])["jobs"][0]
        stream = job.get("container", {}).get("logStreamName")
        if job["status"] == "RUNNING" and stream:
            lines = [m for m in log_messages(setup, stream) if m.startswith("child=")]
            child = int(lines[0].split("=")[1]) if lines else None
        time.sleep(0.05)
    assert child is not None
    (shell,) = setup["emulator"].jobs()[job_id]["pids"]
    assert alive(shell) and alive(child)
    client.terminate_job(jobId=job_id, reason="stopped by the test")
    job = wait_for_job(client, job_id)
    assert job["status"] == "FAILED"
    assert job["statusReason"] == "stopped by the test"
    deadline = time.monotonic() + 5
    while (alive(shell) or alive(child)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(shell) and not alive(child)


def test_cancel_of_a_waiting_job_and_depends_on(setup):
    client = setup["batch"]
    first = submit(setup, "sleep 0.5")
    second = submit(setup, "true", dependsOn=[{"jobId": first}])
    failing = submit(setup, "exit 1")
    blocked = submit(setup, "true", dependsOn=[{"jobId": failing}])
    waiting = submit(setup, "true", dependsOn=[{"jobId": first}])
    client.cancel_job(jobId=waiting, reason="not needed")
    for job_id in (first, second, failing, blocked, waiting):
        wait_for_job(client, job_id)
    history = setup["emulator"].jobs()
    first_done = dict(history[first]["statuses"])["SUCCEEDED"]
    assert dict(history[second]["statuses"])["RUNNING"] >= first_done
    described = {j["jobId"]: j for j in client.describe_jobs(jobs=[blocked, waiting])["jobs"]}
    assert described[blocked]["status"] == "FAILED"
    assert described[blocked]["statusReason"] == "Dependent Job failed"
    assert described[waiting]["statusReason"] == "not needed"
    assert history[blocked]["pids"] == [] and history[waiting]["pids"] == []

    # SEQUENTIAL: each child starts after its predecessor succeeded.
    parent = submit(
        setup, "sleep 0.2", arrayProperties={"size": 2}, dependsOn=[{"type": "SEQUENTIAL"}]
    )
    assert wait_for_job(client, parent)["status"] == "SUCCEEDED"
    history = setup["emulator"].jobs()
    zero_done = dict(history[f"{parent}:0"]["statuses"])["SUCCEEDED"]
    assert dict(history[f"{parent}:1"]["statuses"])["RUNNING"] >= zero_done


# --- request log and faults -----------------------------------------------------------------


def test_request_log_counts_requests(setup):
    emulator, client = setup["emulator"], setup["batch"]
    emulator.clear_requests()
    job_id = submit(setup, "true")
    client.describe_jobs(jobs=[job_id])
    client.describe_jobs(jobs=[job_id])
    client.list_jobs(jobQueue=setup["queue"], jobStatus="RUNNING")
    s3 = emulator.client("s3")
    s3.put_object(Bucket="test-publish", Key="sos/a.txt", Body=b"a")
    s3.get_object(Bucket="test-publish", Key="sos/a.txt")
    s3.list_objects_v2(Bucket="test-publish")
    emulator.client("efs").describe_file_systems()
    emulator.client("iam").list_roles()
    actions = [(r["service"], r["action"]) for r in emulator.requests()]
    assert actions == [
        ("batch", "SubmitJob"),
        ("batch", "DescribeJobs"),
        ("batch", "DescribeJobs"),
        ("batch", "ListJobs"),
        ("s3", "PutObject"),
        ("s3", "GetObject"),
        ("s3", "ListObjectsV2"),
        ("efs", "DescribeFileSystems"),
        ("iam", "ListRoles"),
    ]
    lines = (setup["base"] / "requests.jsonl").read_text().splitlines()
    logged = [json.loads(line) for line in lines]
    assert {"time", "service", "action", "status"} <= set(logged[-1])
    assert logged[-1]["action"] == "ListRoles"


def test_injected_throttling_reaches_boto3(setup):
    emulator = setup["emulator"]
    job_id = submit(setup, "true")
    emulator.clear_requests()
    emulator.inject_fault("DescribeJobs", count=2)
    once = emulator.client("batch", max_attempts=1)
    with pytest.raises(ClientError) as caught:
        once.describe_jobs(jobs=[job_id])
    assert caught.value.response["Error"]["Code"] == "TooManyRequestsException"
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 429
    # Standard retries treat it as throttling and get through.
    retrying = emulator.client("batch", max_attempts=3)
    assert retrying.describe_jobs(jobs=[job_id])["jobs"][0]["jobId"] == job_id
    statuses = [r["status"] for r in emulator.requests() if r["action"] == "DescribeJobs"]
    assert statuses == [429, 429, 200]

    emulator.inject_fault("PutObject", count=1, status=503, code="SlowDown")
    with pytest.raises(ClientError) as caught:
        emulator.client("s3", max_attempts=1).put_object(Bucket="test-publish", Key="k", Body=b"")
    assert caught.value.response["Error"]["Code"] == "SlowDown"
    emulator.inject_fault("SubmitJob", count=5)
    emulator.clear_faults()
    submit(setup, "true")


# --- stopping -------------------------------------------------------------------------------


def test_sigterm_stops_running_jobs_and_exits_0(tmp_path):
    path = write_config(tmp_path, prefix="stop-")
    emulator = BatchEmulator([path], args=["--image", f"{SHELL_IMAGE}=/bin/sh -c"])
    with emulator:
        client = emulator.client("batch")
        client.register_job_definition(
            jobDefinitionName="stop-shell",
            type="container",
            containerProperties={"image": SHELL_IMAGE, "resourceRequirements": RESOURCES},
            retryStrategy={"attempts": 1},
        )
        job_id = client.submit_job(
            jobName="long",
            jobQueue="stop-flpe",
            jobDefinition="stop-shell",
            containerOverrides={"command": ["sleep 60"]},
        )["jobId"]
        deadline = time.monotonic() + 20
        while not emulator.jobs().get(job_id, {}).get("pids") and time.monotonic() < deadline:
            time.sleep(0.05)
        (pid,) = emulator.jobs()[job_id]["pids"]
        assert alive(pid)
        os.kill(emulator.process.pid, signal.SIGTERM)
        assert emulator.process.wait(timeout=15) == 0
        assert not alive(pid)


def test_cli_rejects_a_bad_image_mapping(tmp_path):
    path = write_config(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "confluence.cli", "emulator", "--configfile", str(path)]
        + ["--image", "no-equals-sign"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "IMAGE=COMMAND" in result.stderr


def test_preflight_names_each_drift_between_configuration_and_account(setup):
    """Drift of every kind the check covers; the configuration moves, the account stays."""
    emulator = setup["emulator"]
    aws = {name: emulator.client(name) for name in ("batch", "efs", "s3", "iam")}
    clean = preflight.preflight(setup["config"], aws)
    assert clean.checks > 20 and clean.drifts == [] and clean.notes == []

    config = copy.deepcopy(setup["config"])
    geobam, momma = config["modules"]["geobam"], config["modules"]["momma"]
    geobam["image"] = "elsewhere/geobam:2"
    geobam["timeout_seconds"] += 60
    momma["mounts"][0]["path"] = "/mnt/data/moved"
    config["storage"]["state"] = "s3://no-such-confluence-bucket/state"
    config["filesystems"].append("scratch")
    found = preflight.preflight(config, aws)
    text = "\n".join(map(str, found.drifts))

    geobam_definition = names.job_definition(config, "geobam")
    momma_definition = names.job_definition(config, "momma")
    assert f"DRIFT job definition {geobam_definition}:" in text
    assert "configured elsewhere/geobam:2" in text
    assert f"configured {geobam['timeout_seconds']}" in text
    assert f"DRIFT job definition {momma_definition}:" in text
    assert "lacks the mount of" in text and "at /mnt/data/moved" in text
    assert "DRIFT bucket no-such-confluence-bucket (storage.state): not reachable" in text
    assert "DRIFT file system scratch: no EFS file system" in text
    publish = names.publish_job_definition(config)
    assert f"DRIFT job definition {publish}: lacks the mount of scratch/" in text
    assert text.count("DRIFT") == 7, text

    # A release deployed under another tag (ModuleImageTag) is noted, not drift.
    config = copy.deepcopy(setup["config"])
    repository = config["modules"]["geobam"]["image"].rsplit(":", 1)[0]
    config["modules"]["geobam"]["image"] = f"{repository}:v2.1"
    tagged = preflight.preflight(config, aws)
    assert tagged.drifts == []
    assert len(tagged.notes) == 1 and f"configured {repository}:v2.1" in tagged.notes[0]
