"""Run chunk jobs on AWS Batch: one array job per chunk, then a publication job.

A chunk job goes through two Batch jobs:

1. ``items``: an array job (a plain job with ``-i 0`` for one item) on the module's queue
   with the module's registered job definition; each child runs one work-list item.
2. ``publish``: a job on the project's own image with every file system mounted, running
   ``confluence finish-chunk``: it checks each item's outputs, records sizes and checksums,
   publishes what succeeded to ``storage.publish`` and writes the chunk's document to EFS.

The controller (this module, driven by the Snakemake executor plugin) reads that document,
writes the state and, when the chunk counts as done, the sentinel. It never runs science.
Status comes from DescribeJobs with up to 100 IDs per call; botocore's standard retry mode
answers throttling (HTTP 429, TooManyRequestsException) with backoff and jitter on every call.
Job names are deterministic, so a restarted controller adopts a job still in flight instead
of submitting it again.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from confluence import manifest, runner
from confluence.batch import names
from confluence.batch.ledger import Ledger
from confluence.batch.mirror import push_state
from confluence.workflow import publish_destination, state_mirror

ACTIVE = ("SUBMITTED", "PENDING", "RUNNABLE", "STARTING", "RUNNING")
TERMINAL = ("SUCCEEDED", "FAILED")
DESCRIBE_LIMIT = 100  # DescribeJobs takes at most 100 job IDs
PARALLEL_CALLS = 8
LOG_TAIL_LINES = 30


def aws_clients(region: str, max_attempts: int = 10):
    """Batch and CloudWatch Logs clients. The standard retry mode backs off with jitter on
    throttling (HTTP 429, TooManyRequestsException) and 5xx answers, for every call."""
    import boto3
    from botocore.config import Config

    config = Config(retries={"mode": "standard", "max_attempts": max_attempts})
    session = boto3.session.Session(region_name=region)
    return session.client("batch", config=config), session.client("logs", config=config)


def code_version_tag() -> str:
    version = manifest.code_version()
    commit = version.get("commit")
    return f"{version['package']}+{commit[:14]}" if commit else version["package"]


def _iso(millis: int | None) -> str | None:
    if not millis:
        return None
    return datetime.fromtimestamp(millis / 1000, UTC).isoformat(timespec="milliseconds")


@dataclass
class ChunkJob:
    """One Snakemake job (a module over a chunk) and the Batch job it is waiting on."""

    module: str
    unit: str
    plan: runner.ChunkPlan
    sentinel: Path
    state: Path
    log: Path
    queue: str
    phase: str = "items"  # items, then publish
    batch_id: str | None = None
    job_name: str = ""
    adopted: bool = False
    #: array index -> item index, for the items this attempt runs
    index_map: list[int] = field(default_factory=list)
    results: dict[int, dict] = field(default_factory=dict)
    item_job_ids: list[str] = field(default_factory=list)
    runnable_since: float | None = None
    runnable_warned: bool = False
    concluded_ids: set[str] = field(default_factory=set)
    began: float = field(default_factory=time.monotonic)

    def write_log(self, text: str) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "a") as f:
            f.write(text if text.endswith("\n") else text + "\n")


class BatchController:
    """Submits, polls and finishes chunk jobs; shared by every job of one Snakemake run."""

    def __init__(
        self,
        config: dict,
        efs: Path,
        ledger: Path,
        clients=None,
        warn: Callable[[str], None] = print,
    ) -> None:
        self.config = config
        self.aws = config["aws"]
        self.efs = Path(efs)
        self.run = config["run"]["name"]
        self.batch, self.logs = clients or aws_clients(self.aws["region"])
        self.ledger = Ledger(Path(ledger))
        self.warn = warn
        #: Every chunk job started and not yet finished, for cancel().
        self.inflight: dict[int, ChunkJob] = {}
        self._lock = threading.Lock()
        self.cancelled = False
        self._listed: dict[str, dict[str, list[dict]]] = {}
        # Submissions and finishing run side by side: each is a round trip or two, and a
        # poll may end hundreds of jobs at once (SubmitJob allows about 50 calls a second).
        self.pool = ThreadPoolExecutor(PARALLEL_CALLS, thread_name_prefix="confluence-batch")
        #: Calls this controller made, for the run's summary and the tests.
        self.stats = {"polls": 0, "status_calls": 0, "child_calls": 0, "max_active": 0}

    # -- submission -----------------------------------------------------------------------

    def start(
        self,
        module: str,
        unit: str,
        module_config: dict,
        sentinel: Path,
        state: Path,
        upstream: Iterable[Path],
        log: Path,
    ) -> ChunkJob:
        """Plan the chunk and submit (or adopt) its items job, or its publication job when
        every item already succeeded in an earlier attempt."""
        plan = runner.plan_chunk(
            module,
            unit,
            module_config,
            self.efs,
            Path(state),
            [Path(p) for p in upstream],
            self.config["run"]["run_type"],
        )
        job = ChunkJob(
            module,
            unit,
            plan,
            Path(sentinel),
            Path(state),
            Path(log),
            names.queue(self.config, module),
        )
        previous = manifest.load(Path(state)) or {}
        # Jobs whose results an earlier attempt already recorded: never adopted again.
        job.concluded_ids = set(previous.get("job_ids", []))
        Path(log).parent.mkdir(parents=True, exist_ok=True)
        Path(log).write_text("")
        todo = plan.todo
        job.write_log(
            f"{module} {unit}: {len(plan.items)} items, {len(plan.reusable)} kept from the "
            f"previous attempt, {len(todo)} to run on AWS Batch queue {job.queue}"
        )
        with self._lock:
            self.inflight[id(job)] = job
        if todo:
            self._submit_items(job, todo)
        else:
            self._submit_publish(job)
        return job

    def _tags(self, job: ChunkJob, kind: str) -> dict[str, str]:
        tags = {
            "confluence:run": self.run,
            "confluence:stage": job.plan.module.get("stage", job.module),
            "confluence:module": job.module,
            "confluence:chunk": job.unit,
            "confluence:job": kind,
            "confluence:code-version": code_version_tag(),
            "confluence:fingerprint": job.plan.digest[:16],
        }
        tags.update(self.aws.get("tags", {}))
        return tags

    def _left_behind(self, queue: str) -> dict[str, list[dict]]:
        """Job name -> summaries of this run's jobs on the queue when this controller first
        submitted to it: what an earlier controller may have left. One paged listing per
        queue instead of one per submission."""
        with self._lock:
            if queue not in self._listed:
                found: dict[str, list[dict]] = {}
                pages = self.batch.get_paginator("list_jobs").paginate(
                    jobQueue=queue, filters=[{"name": "JOB_NAME", "values": [f"{self.run}_*"]}]
                )
                for page in pages:
                    for summary in page["jobSummaryList"]:
                        if ":" not in summary["jobId"]:  # not an array child
                            found.setdefault(summary["jobName"], []).append(summary)
                self.stats["list_calls"] = self.stats.get("list_calls", 0) + 1
                self._listed[queue] = found
            return self._listed[queue]

    def _adopt(self, job: ChunkJob, name: str, kind: str) -> dict | None:
        """A job of this name and inputs that a killed controller left behind: still in
        flight, or (items jobs) ended but not yet recorded; None if there is none."""
        listed = self._left_behind(job.queue).get(name, [])
        # An ended job counts only if this workdir's ledger saw it submitted and never saw
        # it end: otherwise it may belong to a run whose outputs are gone.
        unrecorded = self.ledger.unfinished()
        candidates = [
            s["jobId"]
            for s in listed
            if s["jobId"] not in job.concluded_ids
            and (s.get("status") in ACTIVE or (kind == "items" and s["jobId"] in unrecorded))
        ]
        if not candidates:
            return None
        described = self._describe(candidates, "adopt_calls")
        for desc in sorted(described.values(), key=lambda d: d.get("createdAt", 0), reverse=True):
            if desc.get("tags", {}).get("confluence:fingerprint") == job.plan.digest[:16]:
                return desc
        return None

    def _record(self, job: ChunkJob, kind: str, size: int) -> None:
        if self.ledger.has(job.batch_id):
            return
        self.ledger.add(
            stage=job.plan.module.get("stage", job.module),
            algorithm=job.module if kind == "items" else f"{job.module}:publish",
            job_name=job.job_name,
            job_id=job.batch_id,
            unit=job.unit,
            kind=kind,
            array_size=size,
        )

    def _submit(self, job: ChunkJob, kind: str, request: dict) -> None:
        job.job_name = names.job_name(self.run, job.module, job.unit, kind)
        size = request.get("arrayProperties", {}).get("size", 0)
        adopted = self._adopt(job, job.job_name, kind)
        if adopted and adopted.get("arrayProperties", {}).get("size", 0) == size:
            job.batch_id, job.adopted = adopted["jobId"], True
            self._record(job, kind, size)
            self.ledger.update(job.batch_id, status=f"ADOPTED ({adopted['status']})")
            job.write_log(
                f"adopted {kind} job {job.job_name} ({job.batch_id}, {adopted['status']}) "
                "left by an earlier controller; not submitting it again"
            )
            return
        if self.cancelled:
            raise RuntimeError("the controller was interrupted; nothing more is submitted")
        answer = self.batch.submit_job(
            jobName=job.job_name,
            jobQueue=job.queue,
            tags=self._tags(job, kind),
            propagateTags=True,
            **request,
        )
        job.batch_id = answer["jobId"]
        self._record(job, kind, size)
        job.write_log(
            f"submitted {kind} job {job.job_name} ({job.batch_id})"
            + (f", array of {size}" if size else "")
        )

    def _submit_items(self, job: ChunkJob, todo: list[runner.Item]) -> None:
        plan = job.plan
        args = plan.args
        if len(todo) < len(plan.items):
            args = self._retry_worklist(job, todo)
        job.index_map = [item.index for item in todo]
        request: dict = {"jobDefinition": names.job_definition(self.config, job.module)}
        command = list(args)
        if len(todo) == 1:
            # A plain job has no array index; -i tells the module which item to run.
            command = ["-i", "0", *command]
        else:
            request["arrayProperties"] = {"size": len(todo)}
        overrides: dict = {"command": command}
        if self.aws.get("override_resources"):
            overrides["resourceRequirements"] = [
                {"type": "VCPU", "value": str(plan.module["vcpu"])},
                {"type": "MEMORY", "value": str(plan.module["memory_mib"])},
            ]
        request["containerOverrides"] = overrides
        self._submit(job, "items", request)
        job.item_job_ids.append(job.batch_id)

    def _retry_worklist(self, job: ChunkJob, todo: list[runner.Item]) -> list[str]:
        """A work list of just the items to run again, beside the chunk's own, and the
        module's arguments pointing at it."""
        plan = job.plan
        source = self.efs / "input" / plan.worklist_rel
        entries = json.loads(source.read_text())
        rel = f"worklists/{job.unit}/retry/{job.module}/{plan.module['worklist']}"
        target = self.efs / "input" / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_text(json.dumps([entries[item.index] for item in todo]))
        os.replace(tmp, target)
        values = {"worklist": rel, "run_type": plan.run_type, "unit": job.unit}
        return [arg.format(**values) for arg in plan.module["arguments"]]

    def _spec_rel(self, job: ChunkJob, name: str) -> str:
        return f"batch/{self.run}/{job.module}/{job.unit}/{name}"

    def _submit_publish(self, job: ChunkJob) -> None:
        spec_rel = self._spec_rel(job, "spec.json")
        result_rel = self._spec_rel(job, "result.json")
        spec = {
            "plan": job.plan.to_json(),
            "results": {str(k): v for k, v in job.results.items()},
            "publish": publish_destination(self.config),
            "job_ids": sorted(job.concluded_ids) + job.item_job_ids,
            "result": result_rel,
        }
        path = self.efs / "input" / spec_rel
        path.parent.mkdir(parents=True, exist_ok=True)
        (self.efs / "input" / result_rel).unlink(missing_ok=True)
        manifest.write(path, spec)
        job.phase = "publish"
        job.batch_id = None
        job.runnable_since, job.runnable_warned = None, False
        self._submit(
            job,
            "publish",
            {
                "jobDefinition": names.publish_job_definition(self.config),
                "containerOverrides": {
                    "command": ["finish-chunk", f"{names.MOUNT_ROOT}/input/{spec_rel}"]
                },
            },
        )

    # -- status -----------------------------------------------------------------------------

    def _describe(self, ids: list[str], purpose: str = "other_calls") -> dict[str, dict]:
        found = {}
        for start in range(0, len(ids), DESCRIBE_LIMIT):
            answer = self.batch.describe_jobs(jobs=ids[start : start + DESCRIBE_LIMIT])
            found.update({d["jobId"]: d for d in answer["jobs"]})
            with self._lock:
                self.stats[purpose] = self.stats.get(purpose, 0) + 1
        return found

    def poll(self, jobs: list[ChunkJob]) -> list[tuple[ChunkJob, str | None]]:
        """Advance every job; the finished ones, each with None (done) or why it failed."""
        active = [j.batch_id for j in jobs if j.batch_id]
        self.stats["polls"] += 1
        self.stats["max_active"] = max(self.stats["max_active"], len(active))
        described = self._describe(active, "status_calls")
        finished, ended = [], []
        now = time.monotonic()
        for job in jobs:
            desc = described.get(job.batch_id)
            if desc is None:
                finished.append((job, f"AWS Batch does not know job {job.batch_id}"))
            elif desc["status"] in TERMINAL:
                ended.append((job, desc))
            else:
                self._watch_runnable(job, desc["status"], now)
        for job, outcome in self.pool.map(lambda pair: self._advance(*pair), ended):
            if outcome is not None:
                finished.append((job, outcome[0]))
        self.ledger.flush()
        return finished

    def _advance(self, job: ChunkJob, desc: dict) -> tuple[ChunkJob, tuple | None]:
        """An ended Batch job: submit the chunk's publication, or conclude the chunk
        (returns (job, (problem,)) then)."""
        self.ledger.finish(desc)
        if job.phase == "items":
            self._items_done(job, desc)
            self._submit_publish(job)
            return job, None
        problem = self._publish_done(job, desc)
        with self._lock:
            self.inflight.pop(id(job), None)
        return job, (problem,)

    def _watch_runnable(self, job: ChunkJob, status: str, now: float) -> None:
        if status != "RUNNABLE":
            job.runnable_since = None
            return
        if job.runnable_since is None:
            job.runnable_since = now
        waited = now - job.runnable_since
        if not job.runnable_warned and waited > self.aws["runnable_warning_seconds"]:
            job.runnable_warned = True
            message = (
                f"{job.job_name} ({job.batch_id}) has waited {waited:.0f} s in RUNNABLE on "
                f"queue {job.queue}: check that a compute environment of the queue can place "
                "it (vCPU and memory of the job definition, subnets, image pull, account "
                "vCPU limits); `aws batch describe-compute-environments` shows their state"
            )
            job.write_log(message)
            self.warn(message)

    def _children(self, desc: dict) -> list[dict]:
        """Each item's job. The children of an array are described only when some failed:
        the parent's status summary already says that all of them succeeded."""
        array = desc.get("arrayProperties", {})
        size = array.get("size")
        if not size:
            return [desc]
        ids = [f"{desc['jobId']}:{i}" for i in range(size)]
        if array.get("statusSummary", {}).get("SUCCEEDED") == size:
            same = {"status": "SUCCEEDED", "container": {"exitCode": 0}}
            times = {k: desc[k] for k in ("startedAt", "stoppedAt") if desc.get(k)}
            return [{"jobId": i, **same, **times} for i in ids]
        found = self._describe(ids, "child_calls")
        return [found.get(i, {"jobId": i, "status": "FAILED"}) for i in ids]

    def _items_done(self, job: ChunkJob, desc: dict) -> None:
        """Record each child's exit code and, for failed ones, the tail of its log."""
        failed = []
        for position, child in enumerate(self._children(desc)):
            item = job.plan.items[job.index_map[position]]
            container = child.get("container", {})
            code = container.get("exitCode")
            if child.get("status") == "SUCCEEDED" and code is None:
                code = 0
            text = ""
            if child.get("status") != "SUCCEEDED":
                reason = child.get("statusReason") or container.get("reason") or ""
                text = self._log_tail(container.get("logStreamName"))
                text = "\n".join(x for x in (text, reason) if x)
                failed.append((item, child, text))
            job.results[item.index] = {
                "exit_code": 1 if code is None else code,
                "log": text,
                "start": _iso(child.get("startedAt")) or job.plan.started,
                "end": _iso(child.get("stoppedAt")) or manifest.now(),
                "seconds": round(
                    ((child.get("stoppedAt") or 0) - (child.get("startedAt") or 0)) / 1000, 3
                )
                if child.get("startedAt") and child.get("stoppedAt")
                else 0.0,
                "job_id": child.get("jobId"),
            }
        job.write_log(
            f"items job {job.batch_id} {desc['status']}: "
            f"{len(job.index_map) - len(failed)} of {len(job.index_map)} items succeeded"
        )
        for item, child, text in failed:
            tail = text.rstrip().replace("\n", "\n    ") or "(no log)"
            job.write_log(
                f"item {item.index} ({item.id}) failed, job {child.get('jobId')}, "
                f"exit code {child.get('container', {}).get('exitCode')}:\n    {tail}"
            )

    def _log_tail(self, stream: str | None) -> str:
        if not stream:
            return ""
        try:
            events = self.logs.get_log_events(
                logGroupName=self.aws["log_group"],
                logStreamName=stream,
                limit=LOG_TAIL_LINES,
                startFromHead=False,
            )["events"]
        except Exception as err:  # a missing log must not hide the failure itself
            return f"(log stream {stream} unreadable: {err})"
        return "\n".join(e["message"].rstrip("\n") for e in events)

    def _publish_done(self, job: ChunkJob, desc: dict) -> str | None:
        container = desc.get("container", {})
        if desc["status"] != "SUCCEEDED":
            tail = self._log_tail(container.get("logStreamName"))
            job.write_log(
                f"publication job {job.batch_id} failed (exit code "
                f"{container.get('exitCode')}, {desc.get('statusReason', '')}):\n{tail}"
            )
        result = manifest.load(self.efs / "input" / self._spec_rel(job, "result.json"))
        if result is None:
            return (
                f"publication job {job.batch_id} wrote no result for {job.module} {job.unit}; "
                f"see {job.log}"
            )
        result["executor"] = "aws-batch"
        with open(job.log, "a") as log:
            runner.report(result, log)
            done = runner.conclude(result, job.sentinel, job.state, log)
            if state_mirror(self.config):
                push_state(state_mirror(self.config), [job.state, job.sentinel], log)
        return None if done else f"{job.module} {job.unit} is not done; see {job.log}. "

    # -- interruption --------------------------------------------------------------------------

    def cancel(self, reason: str = "Snakemake controller interrupted") -> list[str]:
        """Terminate every job in flight (queued ones are cancelled, running ones stopped,
        array children with their parent); returns their IDs."""
        self.cancelled = True
        # Submissions under way finish first, so none slips out after the terminations.
        self.pool.shutdown(wait=True, cancel_futures=True)
        stopped = []
        for job in list(self.inflight.values()):
            if job.batch_id:
                self.batch.terminate_job(jobId=job.batch_id, reason=reason)
                self.ledger.update(job.batch_id, status="TERMINATED")
                stopped.append(job.batch_id)
            self.inflight.pop(id(job), None)
        self.ledger.flush()
        return stopped
