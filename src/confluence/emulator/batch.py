"""moto's AWS Batch, with every job run as a local process instead of a Docker container.

moto's Docker-mode Batch starts one ``moto.batch.models.Job`` thread per job (and per array
child) and calls its ``run()``. :func:`install` replaces that method (in this process, before
the server starts) with :meth:`Runner.run`, so the whole moto API stays as it is while jobs
really execute:

- statuses SUBMITTED, PENDING (waiting for ``dependsOn``), RUNNABLE (waiting for one of
  ``max_running`` slots, like a full compute environment), STARTING, RUNNING, SUCCEEDED or
  FAILED; a retried job goes back to RUNNABLE;
- the image maps to a local command (:class:`ImageMap`); the job's command (override, else
  job definition, with ``Ref::`` parameters) is appended to it;
- EFS volumes map to ``<efs>/<file system name>/<folder>``, the folder being the access
  point's root directory (or the volume's ``rootDirectory`` without one), linked into a
  per-attempt mount root that the process finds in ``CONFLUENCE_MOUNT_ROOT`` (see
  confluence.mounts);
- retries follow the retry strategy (submit override, else job definition) with
  ``evaluateOnExit``; a timeout (``attemptDurationSeconds`` x ``time_scale``) or TerminateJob
  sends SIGTERM to the process group and SIGKILL after AWS's 30 s (x ``time_scale``);
- stdout and stderr go to CloudWatch Logs, one stream per attempt, as on AWS.

It also fills gaps of moto 5.2.5 that a Batch client would trip over: array children report
``arrayProperties.index``, an array parent becomes PENDING/SUCCEEDED/FAILED from its children,
``container.exitCode`` survives DescribeJobs, TerminateJob/CancelJob on a parent reach its
children, and ``SEQUENTIAL``/``N_TO_N`` dependencies work.

This relies on moto internals: pyproject pins moto, and :func:`check_moto_internals` (called
by :func:`install` and by the tests) fails loudly if they changed.
"""

from __future__ import annotations

import fnmatch
import inspect
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from confluence import contract
from confluence.batch import names
from confluence.emulator import cloudformation
from confluence.infra.template import FILESYSTEM_TAG
from confluence.mounts import build_mount_root

logger = logging.getLogger(__name__)

SUBMITTED, PENDING, RUNNABLE = "SUBMITTED", "PENDING", "RUNNABLE"
STARTING, RUNNING, SUCCEEDED, FAILED = "STARTING", "RUNNING", "SUCCEEDED", "FAILED"
DONE = (SUCCEEDED, FAILED)

# Status reasons as AWS Batch words them.
REASON_EXITED = "Essential container in task exited"
REASON_TIMEOUT = "Job attempt duration exceeded timeout"
REASON_DEPENDENCY = "Dependent Job failed"
REASON_ARRAY_CHILD = "Array Child Job failed"
#: Seconds between SIGTERM and SIGKILL when ECS stops a task (before time_scale).
STOP_GRACE_SECONDS = 30.0
#: CloudWatch Logs refuses events above 256 KiB.
MAX_EVENT_BYTES = 256 * 1024
POLL_SECONDS = 0.05


def fake_credentials(endpoint_url: str, region: str) -> dict[str, str]:
    """Variables that send boto3 and the aws CLI to the emulator with credentials that open
    nothing real."""
    return {
        "AWS_ENDPOINT_URL": endpoint_url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": region,
        "AWS_REGION": region,
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
        "AWS_EC2_METADATA_DISABLED": "true",
    }


def _normalise_image(image: str) -> str:
    """``repo`` and ``repo:latest`` name the same image."""
    last = image.rsplit("/", 1)[-1]
    return image if (":" in last or "@" in last) else image + ":latest"


def _definition_name(reference: str) -> str:
    """``name``, ``name:3`` or a job definition ARN -> ``name``."""
    return reference.rsplit("job-definition/", 1)[-1].split(":")[0]


class ImageMap:
    """Image -> the local argv a container of that image runs (its entrypoint).

    Module images run ``python -m confluence.cli module <name>``; the project image runs
    its Dockerfile's entrypoint, ``python -m confluence.infra.entrypoint`` (``confluence``,
    or ``confluence module $CONFLUENCE_MODULE`` in a module's job); :meth:`add` maps any
    other image (an operator's own, or a test's shell). The job's command is appended to
    the argv.
    """

    def __init__(self) -> None:
        self._images: dict[str, list[str]] = {}
        # Two modules may share an image; their job definitions tell them apart.
        self._by_job_definition: dict[tuple[str, str], list[str]] = {}

    @classmethod
    def from_config(cls, config: dict) -> ImageMap:
        images = cls()
        cli = [sys.executable, "-m", "confluence.cli"]
        project = _normalise_image(names.project_image(config))
        images.add(project, [sys.executable, "-m", "confluence.infra.entrypoint"])
        for name, module in config["modules"].items():
            image = _normalise_image(names.image(config, module["image"]))
            if image == project:
                continue  # a real container of the project image runs its entrypoint
            argv = [*cli, "module", name]
            images._images.setdefault(image, argv)
            definition = _definition_name(names.job_definition(config, name))
            images._by_job_definition[(image, definition)] = argv
        return images

    def add(self, image: str, argv: list[str] | str) -> None:
        """Map ``image`` to ``argv`` (a list, or a string split like a shell does); an empty
        argv runs the job's command itself, like an image without an entrypoint."""
        if isinstance(argv, str):
            argv = shlex.split(argv)
        image = _normalise_image(image)
        self._images[image] = list(argv)
        # An explicit mapping wins over the module guess for every job definition.
        self._by_job_definition = {
            k: v for k, v in self._by_job_definition.items() if k[0] != image
        }

    def argv(self, image: str, job_definition: str) -> list[str] | None:
        image = _normalise_image(image)
        found = self._by_job_definition.get((image, job_definition))
        return list(found) if found is not None else self._images.get(image)

    def as_dict(self) -> dict[str, list[str]]:
        return {k: list(v) for k, v in self._images.items()}


@dataclass
class Settings:
    """How the emulator runs jobs; ``endpoint_url`` is set once the server listens."""

    efs: Path
    workdir: Path
    images: ImageMap
    log_group: str = "/aws/batch/job"
    max_running: int = field(default_factory=lambda: os.cpu_count() or 1)
    #: Emulator-only: timeouts and the SIGTERM->SIGKILL grace are multiplied by this, so a
    #: test can see AWS's 60 s minimum timeout fire in about a second.
    time_scale: float = 1.0
    endpoint_url: str = ""


@dataclass
class _Outcome:
    """How one attempt ended."""

    exit_code: int | None = None
    status_reason: str = REASON_EXITED
    container_reason: str | None = None
    #: "timeout" and "terminated" are final whatever the retry strategy says (as on AWS).
    stopped_by: str | None = None

    @property
    def success(self) -> bool:
        return self.exit_code == 0 and self.stopped_by is None


def _now_ms() -> int:
    return int(time.time() * 1000)


def _job_id_of(reference: str) -> str:
    """A job ID from an ID or a job ARN."""
    return reference.rsplit("job/", 1)[-1] if reference.startswith("arn:") else reference


def _array_index(job) -> int | None:
    index = (job.array_properties or {}).get("index")
    return int(index) if index is not None else None


def _parent_of(job):
    if _array_index(job) is None:
        return None
    return job.all_jobs.get(job.job_id.rsplit(":", 1)[0])


def _matches(pattern: str | None, value) -> bool:
    """An evaluateOnExit glob; a missing value counts as "" (so "*" matches anything)."""
    if pattern is None:
        return True
    return fnmatch.fnmatchcase("" if value is None else str(value), pattern)


def should_retry(strategy: dict | None, outcome: _Outcome) -> bool:
    """AWS's rule: the first evaluateOnExit condition that matches decides; none matching
    means retry."""
    for condition in (strategy or {}).get("evaluateOnExit") or []:
        if (
            _matches(condition.get("onStatusReason"), outcome.status_reason)
            and _matches(condition.get("onReason"), outcome.container_reason)
            and _matches(condition.get("onExitCode"), outcome.exit_code)
        ):
            # moto lower-cases the action when it registers a job definition.
            return str(condition.get("action", "")).upper() == "RETRY"
    return True


class Runner:
    """Runs moto's Batch jobs as local processes (one instance per emulator process)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.RLock()
        # Free run slots; waiters queue on the condition (FIFO in CPython), so jobs start
        # in submission order and thousands of array children do not poll.
        self._free = max(1, settings.max_running)
        self._slot_free = threading.Condition(threading.Lock())
        self._processes: dict[str, subprocess.Popen] = {}
        self._history: dict[str, dict] = {}
        self._closing = False

    # --- status bookkeeping ---------------------------------------------------------------

    def _record(self, job, status: str) -> None:
        with self._lock:
            entry = self._history.setdefault(job.job_id, {"statuses": [], "pids": []})
            if not entry["statuses"] or entry["statuses"][-1][0] != status:
                entry["statuses"].append([status, _now_ms()])

    def set_status(self, job, status: str) -> None:
        # The setter skips moto's tick-driven progression, so a concurrent DescribeJobs can
        # never move a job on by itself.
        job.status = status
        self._record(job, status)
        parent = _parent_of(job)
        if parent is not None:
            self._child_changed(parent, job, status)

    def _child_changed(self, parent, child, status: str) -> None:
        """An array parent is SUBMITTED until a child moves, then PENDING, then SUCCEEDED if
        every child succeeded, else FAILED (AWS's rules). Counted as children change, so a
        parent of 10,000 children costs nothing per change."""
        with self._lock:
            counts = parent.__dict__.setdefault("_emulator_children", {"done": 0, "failed": 0})
            if status in DONE:
                counts["done"] += 1
                counts["failed"] += status == FAILED
            if status == RUNNING and parent.job_started_at.year <= 1970:
                parent.job_started_at = child.job_started_at
            if parent.job_stopped:
                return
            if counts["done"] >= int(parent.array_properties.get("size", 0)):
                if counts["failed"] and parent.job_stopped_reason is None:
                    parent.job_stopped_reason = REASON_ARRAY_CHILD
                parent._mark_stopped(success=not counts["failed"])
                self._record(parent, parent._status)
            elif parent._status == SUBMITTED:
                parent.status = PENDING
                self._record(parent, PENDING)

    def history(self) -> dict[str, dict]:
        """Job ID -> {"statuses": [[status, epoch ms], ...], "pids": [...]}, every job."""
        with self._lock:
            return {
                k: {"statuses": [list(s) for s in v["statuses"]], "pids": list(v["pids"])}
                for k, v in self._history.items()
            }

    # --- the patched Job.run --------------------------------------------------------------

    def run(self, job) -> None:
        """Replacement of ``moto.batch.models.Job.run`` (runs in the job's own thread)."""
        try:
            self._run(job)
        except Exception as err:  # a bug here must not leave the job RUNNING forever
            logger.exception("emulator: job %s failed inside the emulator", job.job_id)
            self._finish(job, _Outcome(status_reason=f"emulator error: {err}"))

    def _run(self, job) -> None:
        self._record(job, SUBMITTED)
        job._log_group = self.settings.log_group
        self.set_status(job, PENDING)
        if not self._wait_for_dependencies(job):
            return
        self.set_status(job, RUNNABLE)
        strategy = getattr(job, "_emulator_retry_strategy", None) or (
            job.job_definition.retry_strategy or {}
        )
        attempts = min(max(int(strategy.get("attempts") or 1), 1), 10)
        number = 0
        while True:
            if not self._acquire_slot(job):
                self._finish(job, _Outcome(status_reason=job.job_stopped_reason or "Canceled"))
                return
            try:
                number += 1
                outcome = self._attempt(job, number)
            finally:
                self._release_slot()
            final = outcome.success or outcome.stopped_by is not None or number >= attempts
            if final or not should_retry(strategy, outcome):
                self._finish(job, outcome)
                return
            self.set_status(job, RUNNABLE)

    def _finish(self, job, outcome: _Outcome) -> None:
        if job.job_stopped:
            return
        job.exit_code = outcome.exit_code
        job._emulator_container_reason = outcome.container_reason
        if job.job_stopped_reason is None:
            job.job_stopped_reason = outcome.status_reason
        job._mark_stopped(success=outcome.success)
        self._record(job, job._status)
        parent = _parent_of(job)
        if parent is not None:
            self._child_changed(parent, job, job._status)

    def _wait_for_dependencies(self, job) -> bool:
        """Wait in PENDING until every dependency succeeded; False (job FAILED) if one
        failed or the job was canceled."""
        index = _array_index(job)
        parent_id = job.job_id.rsplit(":", 1)[0]
        targets = []
        for dependency in job.depends_on or []:
            kind, target = dependency.get("type"), dependency.get("jobId")
            if kind == "SEQUENTIAL" or not target:
                # Array children run one after the other, each after its predecessor.
                if index:
                    targets.append(f"{parent_id}:{index - 1}")
            elif kind == "N_TO_N" and index is not None:
                targets.append(f"{_job_id_of(target)}:{index}")
            else:
                targets.append(_job_id_of(target))
        delay = POLL_SECONDS
        while targets:
            if job.stop:
                self._finish(job, _Outcome(status_reason=job.job_stopped_reason or "Canceled"))
                return False
            waiting = []
            for target in targets:
                dependency = job.all_jobs.get(target)
                status = dependency._status if dependency is not None else FAILED
                if status == FAILED:
                    self._finish(job, _Outcome(status_reason=REASON_DEPENDENCY))
                    return False
                if status != SUCCEEDED:
                    waiting.append(target)
            targets = waiting
            if targets:
                # Quick for short chains, cheap for thousands of waiting children.
                time.sleep(delay)
                delay = min(delay * 1.5, 1.0)
        return True

    def _acquire_slot(self, job) -> bool:
        """Wait in RUNNABLE for a free slot and an enabled queue; False if canceled."""
        with self._slot_free:
            while not job.stop:
                queue = job.job_queue
                open_queue = queue.state == "ENABLED" and any(
                    env.state == "ENABLED" for env in queue.environments
                )
                if open_queue and self._free > 0:
                    self._free -= 1
                    return True
                # Woken by a freed slot or a stop; the timeout catches queue updates.
                self._slot_free.wait(timeout=1.0)
        return False

    def _release_slot(self) -> None:
        with self._slot_free:
            self._free += 1
            self._slot_free.notify()

    def wake(self) -> None:
        """Let waiting jobs notice a stop (TerminateJob, CancelJob)."""
        with self._slot_free:
            self._slot_free.notify_all()

    # --- one attempt ----------------------------------------------------------------------

    def _attempt(self, job, number: int) -> _Outcome:
        self.set_status(job, STARTING)
        task_id = uuid.uuid4().hex
        stream = f"{job.job_definition.name}/default/{task_id}"
        region, account = job.job_definition._region, job.job_definition.backend.account_id
        attempt = {
            "container": {
                "taskArn": f"arn:aws:ecs:{region}:{account}:task/emulator/{task_id}",
                "networkInterfaces": [],
            },
            "startedAt": _now_ms(),
        }
        job.latest_attempt = attempt
        job.attempts.append(attempt)
        job_dir = self.settings.workdir / job.job_id.replace(":", "_") / f"attempt-{number}"
        try:
            outcome = self._execute(job, number, stream, job_dir)
        finally:
            shutil.rmtree(job_dir, ignore_errors=True)
            try:
                job_dir.parent.rmdir()
            except OSError:
                pass
        attempt["stoppedAt"] = _now_ms()
        attempt["statusReason"] = outcome.status_reason
        if outcome.exit_code is not None:
            attempt["container"]["exitCode"] = outcome.exit_code
        if outcome.container_reason:
            attempt["container"]["reason"] = outcome.container_reason
        return outcome

    def _execute(self, job, number: int, stream: str, job_dir: Path) -> _Outcome:
        definition = job.job_definition
        properties = definition.container_properties
        if properties is None:
            reason = "ClientException: the emulator runs container jobs only (not multinode/EKS)"
            return _Outcome(status_reason=reason, container_reason=reason)
        image = properties.get("image", "")
        entry = self.settings.images.argv(image, definition.name)
        if entry is None:
            reason = (
                f"CannotPullContainerError: image {image} has no local command in the emulator "
                "(map it with confluence emulator --image IMAGE=COMMAND)"
            )
            return _Outcome(status_reason=reason, container_reason=reason)
        command = job._get_container_property("command", [])
        argv = entry + job._add_parameters_to_command(command or [])
        try:
            mount_root = build_mount_root(self._mounts(job), self.settings.efs, job_dir)
        except (ValueError, KeyError, OSError) as err:
            reason = f"ResourceInitializationError: cannot mount the job's volumes: {err}"
            return _Outcome(status_reason=reason, container_reason=reason)
        scratch = job_dir / "scratch"
        scratch.mkdir(parents=True, exist_ok=True)
        environment = self._environment(job, number, mount_root)

        logs = job._log_backend
        logs.ensure_log_group(self.settings.log_group)
        logs.ensure_log_stream(self.settings.log_group, stream)
        # Only an attempt whose container starts has a log stream (as on AWS).
        job.log_stream_name = stream
        job.latest_attempt["container"]["logStreamName"] = stream
        with self._lock:
            if self._closing:
                reason = "CannotStartContainerError: the emulator is shutting down"
                return _Outcome(status_reason=reason, container_reason=reason)
            try:
                process = subprocess.Popen(
                    argv,
                    cwd=scratch,
                    env=environment,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    # Its own process group, so a stop reaches everything the job started.
                    start_new_session=True,
                )
            except OSError as err:
                reason = f"CannotStartContainerError: {argv[:1]}: {err}"
                return _Outcome(status_reason=reason, container_reason=reason)
            self._processes[job.job_id] = process
            self._history.setdefault(job.job_id, {"statuses": [], "pids": []})["pids"].append(
                process.pid
            )
        try:
            job.job_started_at = datetime.now()
            job.latest_attempt["startedAt"] = _now_ms()
            self.set_status(job, RUNNING)
            return self._watch(job, process, stream)
        finally:
            with self._lock:
                self._processes.pop(job.job_id, None)

    def _watch(self, job, process: subprocess.Popen, stream: str) -> _Outcome:
        """Wait for the process, shipping its output to CloudWatch; stop it on terminate or
        timeout."""
        pending: list[dict] = []
        pending_lock = threading.Lock()

        def read() -> None:
            last = 0
            for raw in iter(process.stdout.readline, b""):
                # Events of one PutLogEvents call must be in time order.
                last = max(last, _now_ms())
                message = raw[:MAX_EVENT_BYTES].decode("utf-8", "replace").rstrip("\r\n")
                with pending_lock:
                    pending.append({"timestamp": last, "message": message})
            process.stdout.close()

        def ship() -> None:
            with pending_lock:
                events = pending[:]
                pending.clear()
            if events:
                job._log_backend.put_log_events(self.settings.log_group, stream, events)

        reader = threading.Thread(target=read, name=f"logs-{job.job_id}", daemon=True)
        reader.start()
        duration = job._get_attempt_duration()
        deadline = time.monotonic() + duration * self.settings.time_scale if duration else None
        stopped_by = None
        while process.poll() is None:
            if stopped_by is None and job.stop:
                stopped_by = "terminated"
                self._stop_process(process, STOP_GRACE_SECONDS * self.settings.time_scale)
            elif stopped_by is None and deadline is not None and time.monotonic() > deadline:
                stopped_by = "timeout"
                self._stop_process(process, STOP_GRACE_SECONDS * self.settings.time_scale)
            else:
                time.sleep(POLL_SECONDS)
            ship()
        # The container ends with its main process: nothing it started outlives it.
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        reader.join(timeout=5)
        ship()
        code = process.returncode
        # A container killed by a signal reports 128 + signal, as Docker does.
        exit_code = 128 - code if code < 0 else code
        if stopped_by == "timeout":
            return _Outcome(exit_code, REASON_TIMEOUT, stopped_by=stopped_by)
        if stopped_by == "terminated":
            return _Outcome(
                exit_code, job.job_stopped_reason or "Terminated", stopped_by=stopped_by
            )
        return _Outcome(exit_code)

    @staticmethod
    def _stop_process(process: subprocess.Popen, grace: float) -> None:
        """SIGTERM to the process group, SIGKILL after ``grace`` seconds (as ECS does)."""
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                return
            try:
                process.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
            # The leader is gone; make sure nothing it started lives on.
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            return

    def _mounts(self, job) -> list[dict]:
        """The job definition's EFS volumes and mount points as confluence.mounts dicts."""
        properties = job.job_definition.container_properties
        volumes = {v["name"]: v for v in properties.get("volumes") or []}
        backend = self._efs_backend(job)
        mounts = []
        for point in properties.get("mountPoints") or []:
            volume = volumes.get(point.get("sourceVolume"))
            if volume is None:
                raise ValueError(f"mount point {point} names no volume of the job definition")
            efs = volume.get("efsVolumeConfiguration")
            if not efs:
                raise ValueError(f"volume {volume['name']} is not an EFS volume")
            mounts.append(
                {
                    "filesystem": self._file_system_name(backend, efs["fileSystemId"]),
                    "subpath": self._volume_folder(backend, volume["name"], efs),
                    "path": point["containerPath"],
                }
            )
        return mounts

    @staticmethod
    def _efs_backend(job):
        from moto.efs.models import efs_backends

        definition = job.job_definition
        return efs_backends[definition.backend.account_id][definition._region]

    @staticmethod
    def _volume_folder(backend, volume: str, efs: dict) -> str:
        """The folder of the file system a volume exposes, with AWS's rules for access
        points: the access point's root directory; rootDirectory "/" and transit encryption."""
        root = (efs.get("rootDirectory") or "/").strip("/")
        point_id = (efs.get("authorizationConfig") or {}).get("accessPointId")
        if not point_id:
            return root
        if root:
            raise ValueError(
                f"volume {volume}: rootDirectory must be / with access point {point_id}"
            )
        if efs.get("transitEncryption") != "ENABLED":
            raise ValueError(f"volume {volume}: access point {point_id} needs transit encryption")
        point = backend.access_points.get(point_id)
        if point is None:
            raise ValueError(f"volume {volume}: EFS access point {point_id} does not exist")
        if point.file_system_id != efs["fileSystemId"]:
            raise ValueError(
                f"volume {volume}: access point {point_id} belongs to {point.file_system_id}, "
                f"not {efs['fileSystemId']}"
            )
        return (point.root_directory.get("Path") or "/").strip("/")

    @staticmethod
    def _file_system_name(backend, file_system_id: str) -> str:
        """The configuration's name of a file system: the template's confluence:filesystem
        tag, else its Name tag (which may carry aws.prefix), else its creation token."""
        file_system = backend.file_systems_by_id.get(file_system_id)
        if file_system is None:
            raise ValueError(f"EFS file system {file_system_id} does not exist")
        tags = backend.tagging_service.get_tag_dict_for_resource(file_system_id)
        return tags.get(FILESYSTEM_TAG) or tags.get("Name") or file_system.creation_token

    def _environment(self, job, number: int, mount_root: Path) -> dict[str, str]:
        region = job.job_definition._region
        # The emulator's own PATH, HOME, ...; never its AWS settings (a real profile).
        environment = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        environment.update(fake_credentials(self.settings.endpoint_url, region))
        properties = job.job_definition.container_properties
        for source in (properties.get("environment"), job.container_overrides.get("environment")):
            for variable in source or []:
                if not variable["name"].startswith("AWS_BATCH"):
                    environment[variable["name"]] = variable.get("value", "")
        environment.update(
            {
                "AWS_BATCH_JOB_ID": job.job_id,
                "AWS_BATCH_JOB_ATTEMPT": str(number),
                "AWS_BATCH_JQ_NAME": job.job_queue.name,
                contract.MOUNT_ROOT_ENV: str(mount_root),
            }
        )
        if job.job_queue.environments:
            environment["AWS_BATCH_CE_NAME"] = job.job_queue.environments[0].name
        index = _array_index(job)
        if index is not None:
            environment[contract.ARRAY_INDEX_ENV] = str(index)
        return environment

    # --- shutting down --------------------------------------------------------------------

    def kill_all(self, grace: float = 1.0) -> None:
        """Stop every running job's process group and start no new process."""
        with self._lock:
            self._closing = True
            processes = list(self._processes.values())
        for process in processes:
            try:
                os.killpg(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        for process in processes:
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


# --- patching moto ------------------------------------------------------------------------

_runner: Runner | None = None
_originals: dict[str, object] = {}
_submit = threading.local()


def _job_init(self, *args, **kwargs) -> None:
    _originals["Job.__init__"](self, *args, **kwargs)
    # SubmitJob's retryStrategy override, which moto does not pass on (see _submitjob).
    extras = getattr(_submit, "extras", None) or {}
    self._emulator_retry_strategy = extras.get("retryStrategy")
    self._emulator_container_reason = None
    if _runner is not None:
        # Array parents never run: this is where their history starts too.
        _runner._record(self, SUBMITTED)


def _submitjob(self) -> str:
    strategy = self._get_param("retryStrategy")
    if strategy and "evaluateOnExit" in strategy:
        for condition in strategy["evaluateOnExit"]:
            condition["action"] = str(condition.get("action", "")).lower()
    _submit.extras = {"retryStrategy": strategy}
    try:
        return _originals["BatchResponse.submitjob"](self)
    finally:
        _submit.extras = None


def _job_run(self) -> None:
    _runner.run(self)


def _describe_short(self) -> dict:
    result = _originals["Job.describe_short"](self)
    index = _array_index(self)
    if index is not None:
        result["arrayProperties"] = {"index": index}
    elif self._child_jobs:
        result["arrayProperties"] = {"size": len(self._child_jobs)}
    if self.job_started_at.year <= 1970:
        result.pop("startedAt", None)
    reason = getattr(self, "_emulator_container_reason", None)
    if reason and self.job_stopped:
        result.setdefault("container", {})["reason"] = reason
    return result


def _describe(self) -> dict:
    result = _originals["Job.describe"](self)
    # moto appends AWS_BATCH_JOB_ID to the override's own list on every describe.
    overrides = self.container_overrides.get("environment")
    if overrides:
        overrides[:] = [v for v in overrides if v.get("name") != "AWS_BATCH_JOB_ID"]
    container = result.get("container")
    if container is not None and not self._child_jobs:
        if self.exit_code is not None:
            container["exitCode"] = self.exit_code
        reason = getattr(self, "_emulator_container_reason", None)
        if reason:
            container["reason"] = reason
    return result


def _stop_children(self, job_id: str, reason: str, before_start_only: bool) -> None:
    job = self.get_job_by_id(job_id)
    for child in (job._child_jobs or []) if job is not None else []:
        if not before_start_only or child._status in (SUBMITTED, PENDING, RUNNABLE):
            child.terminate(reason)


def _terminate_job(self, job_id: str, reason: str) -> None:
    _originals["BatchBackend.terminate_job"](self, job_id, reason)
    if job_id and reason:
        _stop_children(self, job_id, reason, before_start_only=False)
    if _runner is not None:
        _runner.wake()


def _cancel_job(self, job_id: str, reason: str) -> None:
    _originals["BatchBackend.cancel_job"](self, job_id, reason)
    if job_id and reason:
        # AWS cancels a parent's children that have not started; running ones carry on.
        _stop_children(self, job_id, reason, before_start_only=True)
    if _runner is not None:
        _runner.wake()


def _describe_jobs(self, jobs: list[str] | None) -> list[dict]:
    """moto's DescribeJobs walks every job ever submitted, while SubmitJob requests on other
    threads add to them (RuntimeError: dictionary changed size); look the IDs up instead."""
    if not jobs:
        return [job.describe() for job in list(self._jobs.values())]
    by_arn = None
    found = []
    for wanted in dict.fromkeys(jobs):
        job = self._jobs.get(wanted)
        if job is None and wanted.startswith("arn:"):
            if by_arn is None:
                by_arn = {j.arn: j for j in list(self._jobs.values())}
            job = by_arn.get(wanted)
        if job is not None:
            found.append(job.describe())
    return found


_PATCHES = {
    "Job.__init__": _job_init,
    "Job.run": _job_run,
    "Job.describe_short": _describe_short,
    "Job.describe": _describe,
    "BatchBackend.terminate_job": _terminate_job,
    "BatchBackend.cancel_job": _cancel_job,
    "BatchBackend.describe_jobs": _describe_jobs,
    "BatchResponse.submitjob": _submitjob,
}


def _targets() -> dict[str, type]:
    from moto.batch.models import BatchBackend, Job
    from moto.batch.responses import BatchResponse

    return {"Job": Job, "BatchBackend": BatchBackend, "BatchResponse": BatchResponse}


#: Methods the patch calls or replaces, with the parameters it relies on.
_EXPECTED_METHODS = {
    "Job.run": ["self"],
    "Job.describe": ["self"],
    "Job.describe_short": ["self"],
    "Job.terminate": ["self", "reason"],
    "Job._mark_stopped": ["self", "success"],
    "Job._get_attempt_duration": ["self"],
    "Job._add_parameters_to_command": ["self", "command"],
    "Job._get_container_property": ["self", "p", "default"],
    "BatchBackend.terminate_job": ["self", "job_id", "reason"],
    "BatchBackend.cancel_job": ["self", "job_id", "reason"],
    "BatchBackend.get_job_by_id": ["self", "identifier"],
    "BatchBackend.describe_jobs": ["self", "jobs"],
    "BatchResponse.submitjob": ["self"],
    "BatchResponse._get_param": ["self", "param_name", "if_none"],
}
#: Instance attributes set in Job.__init__ that the patch reads or writes.
_EXPECTED_JOB_ATTRIBUTES = [
    "job_id",
    "job_definition",
    "job_queue",
    "container_overrides",
    "depends_on",
    "all_jobs",
    "array_properties",
    "_child_jobs",
    "stop",
    "exit_code",
    "job_started_at",
    "job_stopped",
    "job_stopped_reason",
    "attempts",
    "latest_attempt",
    "log_stream_name",
    "_log_backend",
    "_log_group",
    "timeout",
]


def check_moto_internals() -> list[str]:
    """What of moto's internals this module relies on is missing or changed ([] = fine)."""
    import moto
    from moto.batch.utils import JobStatus
    from moto.efs.models import EFSBackend
    from moto.logs.models import LogsBackend
    from moto.moto_api._internal.managed_state_model import ManagedState
    from moto.moto_server.threaded_moto_server import ThreadedMotoServer

    problems = []
    if moto.__version__ != "5.2.5":
        problems.append(f"moto {moto.__version__} is installed; the emulator was written for 5.2.5")
    targets = _targets()
    expected = dict(_EXPECTED_METHODS)
    expected["LogsBackend.ensure_log_group"] = ["self", "log_group_name"]
    expected["LogsBackend.ensure_log_stream"] = ["self", "log_group_name", "log_stream_name"]
    expected["LogsBackend.put_log_events"] = [
        "self",
        "log_group_name",
        "log_stream_name",
        "log_events",
    ]
    targets.update({"LogsBackend": LogsBackend})
    for dotted, parameters in expected.items():
        owner, name = dotted.split(".")
        method = _originals.get(dotted) or getattr(targets[owner], name, None)
        if method is None:
            problems.append(f"{dotted} is missing")
            continue
        found = list(inspect.signature(method).parameters)
        if found[: len(parameters)] != parameters:
            problems.append(f"{dotted} takes {found}, expected {parameters} first")
    init = _originals.get("Job.__init__") or targets["Job"].__init__
    source = inspect.getsource(init)
    for attribute in _EXPECTED_JOB_ATTRIBUTES:
        if f"self.{attribute} " not in source and f"self.{attribute}:" not in source:
            problems.append(f"Job.__init__ no longer sets self.{attribute}")
    if "self._jobs" not in inspect.getsource(targets["BatchBackend"].__init__):
        problems.append("BatchBackend.__init__ no longer sets self._jobs")
    if "self._status" not in inspect.getsource(ManagedState.__init__):
        problems.append("ManagedState.__init__ no longer sets self._status")
    if not isinstance(getattr(ManagedState, "status", None), property):
        problems.append("ManagedState.status is no longer a property")
    elif ManagedState.status.fset is None:
        problems.append("ManagedState.status has no setter")
    if {s.value for s in JobStatus} != {SUBMITTED, PENDING, RUNNABLE, STARTING, RUNNING, *DONE}:
        problems.append(f"moto's job statuses changed: {sorted(s.value for s in JobStatus)}")
    # confluence.emulator.server wraps the WSGI app of the server this method makes.
    if "self._server = make_server" not in inspect.getsource(ThreadedMotoServer._server_entry):
        problems.append("ThreadedMotoServer._server_entry no longer sets self._server")
    efs_source = inspect.getsource(EFSBackend.__init__)
    for attribute in ("file_systems_by_id", "access_points", "tagging_service"):
        if f"self.{attribute}" not in efs_source:
            problems.append(f"EFSBackend.__init__ no longer sets self.{attribute}")
    # The stack's resources need confluence.emulator.cloudformation's patches.
    problems += cloudformation.check()
    return problems


def install(settings: Settings) -> Runner:
    """Patch moto (once per process) so Batch jobs run as local processes; returns the
    runner. Call before the server handles its first request."""
    global _runner
    problems = check_moto_internals()
    if problems:
        raise RuntimeError("the Batch emulator cannot patch this moto: " + "; ".join(problems))
    targets = _targets()
    for dotted, replacement in _PATCHES.items():
        owner, name = dotted.split(".")
        if dotted not in _originals:
            _originals[dotted] = getattr(targets[owner], name)
        setattr(targets[owner], name, replacement)
    cloudformation.install()
    _runner = Runner(settings)
    return _runner


def uninstall() -> None:
    """Put moto's own methods back (for in-process use in tests)."""
    global _runner
    targets = _targets()
    for dotted, original in _originals.items():
        owner, name = dotted.split(".")
        setattr(targets[owner], name, original)
    _originals.clear()
    cloudformation.uninstall()
    _runner = None
