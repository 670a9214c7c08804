"""Snakemake executor ``confluence-batch``: each chunk job is one AWS Batch array job.

Selected by ``profiles/aws-batch`` (``executor: confluence-batch``). The work happens in
``confluence.batch.controller``; this module binds it to Snakemake's executor interface.
Rules without a module (plan, synthesize, stage_in, summary) run on the controller
(``localrules`` in the Snakefile).
"""

import json
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from snakemake_interface_common.exceptions import WorkflowError
from snakemake_interface_executor_plugins.executors.base import SubmittedJobInfo
from snakemake_interface_executor_plugins.executors.remote import RemoteExecutor
from snakemake_interface_executor_plugins.settings import (
    CommonSettings,
    ExecutorSettingsBase,
)

from confluence import podaac

common_settings = CommonSettings(
    non_local_exec=True,
    # The controller sees the file systems (EFS mounted, or the emulator's folders) and
    # writes every sentinel itself, so Snakemake's own view of the outputs stays local.
    implies_no_shared_fs=False,
    job_deploy_sources=False,
    pass_default_storage_provider_args=False,
    pass_default_resources_args=False,
    pass_envvar_declarations_to_cmd=False,
    auto_deploy_default_storage_provider=False,
    init_seconds_before_status_checks=1,
)


@dataclass
class ExecutorSettings(ExecutorSettingsBase):
    ledger: str = field(
        default="logs/batch/submissions.csv",
        metadata={
            "help": "CSV of every Batch job submitted or adopted (the legacy orchestrator's "
            "stage,algorithm,job_name,job_id, then status, attempts, times)",
        },
    )
    skip_preflight: bool = field(
        default=False,
        metadata={
            "help": "do not check the account against the configuration (confluence "
            "preflight) before submitting",
        },
    )


class Executor(RemoteExecutor):
    def __post_init__(self):
        from confluence.batch.controller import BatchController

        config = self.workflow.config
        settings = self.workflow.executor_settings
        self.ledger = Path(settings.ledger if settings else ExecutorSettings.ledger)
        self._shut_down = False
        publish = config["storage"].get("publish")
        if publish and not publish.startswith("s3://"):
            # A Batch job cannot publish to a folder of this machine. The usual cause: a
            # --configfile on the command line replaces the profile's configfile.
            raise WorkflowError(
                f"config key storage.publish is {publish!r}, but jobs on AWS Batch publish to "
                "S3: set it to s3://bucket/prefix (CONFLUENCE_PUBLISH), and when giving "
                "--configfile, name profiles/aws-batch/aws.yaml too"
            )
        # Before the checks: the status thread is already running and polls the controller.
        self.controller = BatchController(
            config, Path(config["paths"]["efs"]), self.ledger, warn=self.logger.warning
        )
        if not (settings and settings.skip_preflight):
            self._preflight(config)
        self.next_seconds_between_status_checks = config["aws"]["poll_seconds"]
        self._sigterm_set = False
        self._podaac(podaac.start_run)

    def _preflight(self, config):
        """Stop before the first submission when the account does not match the
        configuration: a run would otherwise fail late, after paying for its first jobs."""
        import io

        from confluence.batch.preflight import preflight

        result = preflight(config)
        text = io.StringIO()
        result.report(text)
        if result.drifts:
            raise WorkflowError(text.getvalue() + "(--confluence-batch-skip-preflight runs anyway)")
        self.logger.info(text.getvalue().strip())

    def _podaac(self, step):
        """PO.DAAC credential renewal around the run (aws.podaac.enabled): renewed and its
        schedule enabled at the start, the schedule disabled at the end."""
        try:
            message = step(self.workflow.config)
        except podaac.CredentialsError as err:
            raise WorkflowError(f"{err} (or set aws.podaac.enabled: false)") from err
        if message:
            self.logger.info(message)

    def run_jobs(self, jobs):
        """Submit the ready jobs side by side (each is a round trip or two), then report
        them one by one as Snakemake expects."""
        jobs = list(jobs)
        self._interrupt_on_sigterm()
        for job in jobs:
            self.run_job_pre(job)
        for job, start in zip(jobs, self.controller.pool.map(self._start, jobs), strict=True):
            info = SubmittedJobInfo(job)
            if isinstance(start, str):
                self.report_job_error(info, msg=start)
                continue
            info.external_jobid = start.batch_id
            info.aux = {"chunk": start}
            self.report_job_submission(info)

    def run_job(self, job):
        self.run_jobs([job])

    def _start(self, job):
        """The started chunk job, or why it could not be submitted."""
        params = getattr(job, "params", None)
        if job.is_group() or params is None or not hasattr(params, "module"):
            raise WorkflowError(
                f"rule {job.name} has no module to run on AWS Batch; list it in the "
                "Snakefile's localrules"
            )
        try:
            return self.controller.start(
                params.name,
                params.unit,
                json.loads(params.module),
                Path(job.output.sentinel),
                Path(params.state),
                [Path(p) for p in job.input.get("upstream", [])],
                Path(job.log[0]),
            )
        except Exception as err:  # one chunk's submission problem fails that job only
            return f"{job.name} {params.unit}: cannot submit: {err}. "

    async def check_active_jobs(self, active_jobs):
        if not active_jobs:
            return
        chunks = {id(info.aux["chunk"]): info for info in active_jobs}
        try:
            finished = self.controller.poll([info.aux["chunk"] for info in active_jobs])
        except Exception as err:  # keep polling; a transient outage must not lose the jobs
            self.logger.warning(f"AWS Batch status poll failed, trying again: {err}")
            finished = []
        done = set()
        for chunk, problem in finished:
            info = chunks[id(chunk)]
            done.add(id(chunk))
            if problem is None:
                self._write_benchmark(info.job, chunk)
                self.report_job_success(info)
            else:
                self.report_job_error(info, msg=problem)
        for info in active_jobs:
            if id(info.aux["chunk"]) not in done:
                info.external_jobid = info.aux["chunk"].batch_id
                yield info

    @staticmethod
    def _write_benchmark(job, chunk):
        """The rule's benchmark file: the chunk's wall time on Batch, from submission to its
        sentinel (Snakemake's record format; the per-process columns are NA)."""
        if not getattr(job, "benchmark", None):
            return
        from snakemake.benchmark import BenchmarkRecord, write_benchmark_records

        record = BenchmarkRecord(running_time=time.monotonic() - chunk.began)
        # No local process to sample: CPU and memory are NA, which is expected, not a warning.
        record.process_gone = True
        Path(job.benchmark).parent.mkdir(parents=True, exist_ok=True)
        write_benchmark_records([record], str(job.benchmark), False)

    def cancel_jobs(self, active_jobs):
        # Every job the controller has in flight, also those a status poll holds right now.
        stopped = self.controller.cancel()
        if stopped:
            self.logger.info(f"terminated {len(stopped)} AWS Batch jobs in flight")

    def _interrupt_on_sigterm(self):
        """Snakemake answers SIGTERM by waiting for running jobs, which on Batch may take
        hours and keeps paying for them; turn it into Ctrl-C, which cancels them."""
        if self._sigterm_set or threading.current_thread() is not threading.main_thread():
            return

        def interrupt(signum, frame):
            raise KeyboardInterrupt(f"signal {signum}")

        signal.signal(signal.SIGTERM, interrupt)
        self._sigterm_set = True

    def shutdown(self):
        super().shutdown()
        if self._shut_down:  # cancel() shuts down, then the scheduler again
            return
        self._shut_down = True
        try:
            self._podaac(podaac.end_run)
        except WorkflowError as err:  # the run is over; say so rather than mask its outcome
            self.logger.warning(f"{err}; disable it with: confluence credentials disable")
        self.controller.pool.shutdown()
        self.controller.ledger.flush()
        # The calls this run made (polls, DescribeJobs per purpose), beside the ledger.
        stats = self.ledger.with_name("controller-stats.json")
        stats.parent.mkdir(parents=True, exist_ok=True)
        stats.write_text(json.dumps(self.controller.stats, indent=1) + "\n")
