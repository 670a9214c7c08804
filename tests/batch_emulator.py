"""Start ``confluence emulator`` as a subprocess for a test and talk to it.

    config = write_config(tmp_path)                        # tiny config: EFS in tmp_path
    with BatchEmulator([config], args=["--image", "shell=/bin/sh -c"]) as emulator:
        batch = emulator.client("batch")                   # boto3, pointed at the emulator
        job = batch.submit_job(...)
        wait_for_job(batch, job["jobId"])
        emulator.requests()                                # the request log
        emulator.inject_fault("DescribeJobs", count=2)     # next 2 DescribeJobs answer 429

The emulator runs with ``--exit-with-stdin``: it also exits when this process dies (its stdin
pipe closes), so no emulator outlives a test run. ``emulator.environment()`` holds the
variables it printed (endpoint, fake credentials, region, no config files); pass them to a
subprocess (e.g. Snakemake with the executor plugin) to send it to the emulator.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import boto3
import yaml
from botocore.config import Config

ROOT = Path(__file__).resolve().parents[1]
TERMINAL = ("SUCCEEDED", "FAILED")


def write_config(directory: Path, *, prefix: str = "test-", overrides: dict | None = None) -> Path:
    """A config file merged over config/config.yaml: EFS under ``directory``, names with
    ``prefix``, a publish bucket on S3; ``overrides`` are merged on top (one level deep)."""
    directory = Path(directory)
    config = {
        "paths": {"efs": str(directory / "efs")},
        "aws": {"prefix": prefix, "region": "us-west-2"},
        "storage": {"publish": f"s3://{prefix}publish/sos"},
    }
    for key, value in (overrides or {}).items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    path = directory / "emulator.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config))
    return path


class BatchEmulator:
    """``python -m confluence.cli emulator --exit-with-stdin`` on a free port."""

    def __init__(
        self,
        configfiles,
        *,
        efs: Path | None = None,
        workdir: Path | None = None,
        args=(),
        cwd: Path = ROOT,
        startup_timeout: float = 60,
    ) -> None:
        self.command = [sys.executable, "-m", "confluence.cli", "emulator", "--exit-with-stdin"]
        for path in configfiles:
            self.command += ["--configfile", str(path)]
        if efs is not None:
            self.command += ["--efs", str(efs)]
        if workdir is not None:
            self.command += ["--workdir", str(workdir)]
        self.command += [str(a) for a in args]
        self.cwd = cwd
        self.startup_timeout = startup_timeout
        self.url = ""
        self.process: subprocess.Popen | None = None
        self.output: list[str] = []
        self._env: dict[str, str] = {}
        self._stderr = tempfile.NamedTemporaryFile(prefix="emulator-", suffix=".log", delete=False)

    # --- life cycle -------------------------------------------------------------------------

    def start(self) -> str:
        """Start the emulator; returns its endpoint URL once it serves the account."""
        self.process = subprocess.Popen(
            self.command,
            cwd=self.cwd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
        )
        lines: queue.Queue = queue.Queue()

        def read() -> None:
            # Drained for the emulator's whole life, so it never blocks on a full pipe.
            for line in self.process.stdout:
                self.output.append(line)
                lines.put(line)
            lines.put(None)

        threading.Thread(target=read, daemon=True).start()
        deadline = time.monotonic() + self.startup_timeout
        while not self._env:
            try:
                line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                line = None
            if line is None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the emulator did not start:\n{self.stderr()[-4000:]}")
            if line.startswith("AWS_ENDPOINT_URL="):
                self.url = line.strip().split("=", 1)[1]
            elif line.strip().startswith("export ") and self.url:
                pairs = line.strip().removeprefix("export ").split()
                self._env = dict(pair.split("=", 1) for pair in pairs)
        return self.url

    def stop(self, timeout: float = 15) -> int | None:
        """Close its stdin (it stops every job and exits); kill it if it does not."""
        if self.process is None:
            return None
        if self.process.stdin and not self.process.stdin.closed:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        return self.process.returncode

    def stderr(self) -> str:
        return Path(self._stderr.name).read_text(errors="replace")

    def __enter__(self) -> BatchEmulator:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
        os.unlink(self._stderr.name)

    # --- clients ----------------------------------------------------------------------------

    @property
    def region(self) -> str:
        return self._env["AWS_REGION"]

    def environment(self) -> dict[str, str]:
        """AWS_ENDPOINT_URL, fake credentials, region, no config files."""
        return dict(self._env)

    def client(self, service: str, *, max_attempts: int = 3):
        """A boto3 client on the emulator (standard retry mode, ``max_attempts`` in all)."""
        return boto3.session.Session().client(
            service,
            endpoint_url=self.url,
            region_name=self.region,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            aws_session_token="testing",
            config=Config(retries={"mode": "standard", "total_max_attempts": max_attempts}),
        )

    # --- emulator-only endpoints ------------------------------------------------------------

    def _call(self, method: str, route: str, body=None):
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            f"{self.url}/confluence-emulator/{route}", data=data, method=method
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            return json.loads(answer.read())

    def requests(self) -> list[dict]:
        """Every request served so far: {"time", "service", "action", "status"}."""
        return self._call("GET", "requests")

    def clear_requests(self) -> None:
        self._call("DELETE", "requests")

    def inject_fault(
        self,
        action: str,
        *,
        count: int = 1,
        status: int = 429,
        code: str = "TooManyRequestsException",
        service: str | None = None,
    ) -> dict:
        """Answer the next ``count`` requests of ``action`` with this error."""
        fault = {"action": action, "count": count, "status": status, "code": code}
        if service:
            fault["service"] = service
        return self._call("POST", "faults", fault)

    def clear_faults(self) -> None:
        self._call("DELETE", "faults")

    def jobs(self) -> dict[str, dict]:
        """Job ID -> {"statuses": [[status, epoch ms], ...], "pids": [...]}."""
        return self._call("GET", "jobs")


def wait_for_job(batch, job_id: str, timeout: float = 30, seen: list | None = None) -> dict:
    """Poll DescribeJobs until the job ends; ``seen`` collects the statuses observed."""
    deadline = time.monotonic() + timeout
    while True:
        job = batch.describe_jobs(jobs=[job_id])["jobs"][0]
        if seen is not None and (not seen or seen[-1] != job["status"]):
            seen.append(job["status"])
        if job["status"] in TERMINAL:
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} still {job['status']} after {timeout} s")
        time.sleep(0.05)
